"""The version is pyproject.toml's; every other place that states it must agree (release.yml refuses a tag
that differs from pyproject.toml, so a copy left behind would ship under the wrong number)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# pyproject.toml's [project] version (read without tomllib, which Python 3.10 lacks)
VERSION = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)


def test_the_package_reports_pyprojects_version():
    import subtomo_embed

    assert subtomo_embed.__version__ == VERSION


def test_the_pipeline_manifest_and_its_image_tags_state_pyprojects_version():
    config = (REPO / "nextflow.config").read_text()
    assert re.search(r"^\s*version\s*=\s*'([^']+)'", config, re.M).group(1) == VERSION
    for param in ("container_cpu", "container_gpu"):
        reference = re.search(rf"^\s*{param}\s*=\s*'([^']+)'", config, re.M).group(1)
        # before the first release a versioned tag; after it name@sha256:<digest> (release.yml pins it)
        assert reference.split(":")[-1].startswith(f"{VERSION}-") or "@sha256:" in reference, reference


def test_the_images_are_labelled_with_pyprojects_version():
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (REPO / "containers" / name).read_text()
        assert re.search(r'org\.opencontainers\.image\.version="([^"]+)"', text).group(1) == VERSION, name
    definition = (REPO / "containers" / "subtomo-embed.def").read_text()
    assert re.search(r"org\.opencontainers\.image\.version (\S+)", definition).group(1) == VERSION
    assert f"From: subtomo-embed:{VERSION}-" in definition
