"""Every relative link in the README and docs/*.md, and every docs/... file the code and configs name,
exists (a moved or renamed page otherwise leaves readers at a dead end)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")
DOCS_PATH = re.compile(r"\bdocs/[A-Za-z0-9_./-]+\.(?:md|png)")


def markdown_files() -> list[Path]:
    return [REPO / "README.md", REPO / "CHANGELOG.md", REPO / "CITATIONS.md", *sorted((REPO / "docs").glob("*.md"))]


def test_every_relative_link_in_the_docs_exists():
    dead = []
    for page in markdown_files():
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL, or an anchor on the same page
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                dead.append(f"{page.relative_to(REPO)}: {target}")
    assert dead == []


def test_every_docs_file_named_in_the_code_exists():
    sources = [
        *(REPO / "src").rglob("*.py"),
        *(REPO / "workflows").glob("*.nf"),
        *(REPO / "modules").rglob("*.nf"),
        *(REPO / "conf").glob("*.config"),
        REPO / "nextflow.config",
        REPO / "main.nf",
        REPO / "Makefile",
    ]
    named = {(source, name) for source in sources for name in DOCS_PATH.findall(source.read_text())}
    assert named, "no docs/ path found: the pattern is wrong"
    missing = sorted(f"{source.relative_to(REPO)}: {name}" for source, name in named if not (REPO / name).exists())
    assert missing == []
