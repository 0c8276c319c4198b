"""The real Nextflow runtime (`make nextflow`: .venv/bin/nextflow, 24.10.0) for the tests of
tests/pipeline/: an offline copy of the pipeline (tests/nextflow/offline_copy.sh: the shipped files
less the nf-schema lines, the plugin registry is not reachable here), the environment Nextflow runs
in offline, and ``nextflow config`` / ``nextflow run`` on it. Every call starts a JVM (seconds):
callers batch their questions into as few calls as they can."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from tools import require, require_executable  # noqa: E402

NEXTFLOW = Path(os.environ.get("SUBTOMO_NEXTFLOW", REPO / ".venv" / "bin" / "nextflow"))


def require_nextflow() -> Path:
    """The runtime, or skip (fail in CI, SUBTOMO_REQUIRE_TOOLS=1) when it is missing."""
    require(NEXTFLOW.is_file(), f"the Nextflow runtime {NEXTFLOW} is missing (make nextflow)")
    require_executable("java")
    return NEXTFLOW


def offline_copy(dest: Path, source: Path = REPO) -> Path:
    """The pipeline of ``source`` (a checkout) without the nf-schema lines, in ``dest``."""
    script = REPO / "tests" / "nextflow" / "offline_copy.sh"
    subprocess.run(["bash", str(script), str(dest), str(source)], check=True)
    return dest


def environment(home: Path) -> dict:
    return {
        **os.environ,
        "NXF_HOME": str(home),
        "NXF_OFFLINE": "true",
        "NXF_ANSI_LOG": "false",
        "NXF_DISABLE_CHECK_LATEST": "true",
    }


def nextflow(*args: str, cwd: Path, home: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``nextflow <args>`` in ``cwd``; stdout and stderr kept as text."""
    return subprocess.run(
        [str(NEXTFLOW), *args], cwd=cwd, env=environment(home), capture_output=True, text=True, timeout=timeout
    )


def resolved_config(pipeline: Path, profiles: str, home: Path) -> dict:
    """``nextflow config -profile <profiles> -o json``: the settings as Nextflow resolves them
    (closures as their source text); ``profiles`` '' for none."""
    args = ["config", *(["-profile", profiles] if profiles else []), "-o", "json", "."]
    proc = nextflow(*args, cwd=pipeline, home=home, timeout=120)
    assert proc.returncode == 0, f"nextflow config -profile {profiles!r}:\n{proc.stderr[-2000:]}{proc.stdout[-2000:]}"
    return json.loads(proc.stdout)


def process_modules() -> dict[str, Path]:
    """Each process the workflow runs, by the name it is included under (an alias too: CLUSTER as
    CLUSTER_KMEANS), and its module's main.nf."""
    text = (REPO / "workflows" / "subtomo_embed.nf").read_text()
    included = re.findall(r"include \{\s*(\w+)(?:\s+as\s+(\w+))?\s*\}\s*from\s*'\.\./modules/local/(\w+)/main'", text)
    return {alias or name: REPO / "modules" / "local" / folder / "main.nf" for name, alias, folder in included}
