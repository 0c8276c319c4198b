"""The static checks of tests/pipeline/nf_static.py: the pipeline passes them, and each catches the
mistake it exists for in a deliberately broken copy (the language server passes all of these)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from nf_static import ConfigSpec, check_calls, check_config, config_settings, declarations  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
JAR = REPO / ".venv" / "share" / "nf-lang" / "language-server-all.jar"
WORKFLOW_FILES = sorted([*REPO.glob("*.nf"), *REPO.glob("workflows/*.nf")])
CONFIG_FILES = sorted(
    [*REPO.glob("nextflow.config"), *REPO.glob("conf/*.config"), REPO / "tests" / "nf-test" / "nextflow.config"]
)


@pytest.fixture(scope="module")
def jar():
    if not JAR.is_file():
        pytest.fail(f"{JAR} missing: run `make nf-lang` (tests/pipeline/get_nf_language_server.sh)")
    return JAR


@pytest.fixture
def copy(tmp_path):
    """A copy of the pipeline's .nf and .config files to break."""
    for name in ("main.nf", "nextflow.config", "workflows", "modules", "conf"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_declarations_are_read():
    embed = declarations(REPO / "modules" / "local" / "embed" / "main.nf")["EMBED"]
    assert embed.inputs == 3 and embed.emits == {"embeddings", "labels", "regions", "star", "versions"}
    workflow = declarations(REPO / "workflows" / "subtomo_embed.nf")["SUBTOMO_EMBED"]
    assert workflow.inputs == 0 and workflow.emits == {"embeddings", "versions"}


def test_every_call_matches_its_declaration():
    assert check_calls(WORKFLOW_FILES) == []


def test_a_call_with_a_missing_input_is_caught(copy):
    _edit(
        copy / "workflows" / "subtomo_embed.nf",
        "EMBED(EXTRACT_PATCHES.out.patches, checkpoint, stepFlags('embed'))",
        "EMBED(EXTRACT_PATCHES.out.patches, stepFlags('embed'))",
    )
    problems = check_calls([copy / "main.nf", copy / "workflows" / "subtomo_embed.nf"])
    assert len(problems) == 1 and "EMBED called with 2 argument(s), but its process declares 3 input(s)" in problems[0]


def test_an_input_added_to_a_process_but_not_to_its_call_is_caught(copy):
    _edit(
        copy / "modules" / "local" / "merge_embeddings" / "main.nf",
        "    val settings\n",
        "    val settings\n    path extra\n",
    )
    problems = check_calls([copy / "workflows" / "subtomo_embed.nf"])
    assert len(problems) == 1 and "MERGE_EMBEDDINGS called with 2 argument(s)" in problems[0]


def test_an_unknown_emit_is_caught(copy):
    _edit(copy / "workflows" / "subtomo_embed.nf", "MERGE_EMBEDDINGS.out.versions,", "MERGE_EMBEDDINGS.out.version,")
    _edit(copy / "main.nf", "SUBTOMO_EMBED.out.versions", "SUBTOMO_EMBED.out.versionz")
    problems = check_calls([copy / "main.nf", copy / "workflows" / "subtomo_embed.nf"])
    assert len(problems) == 2
    assert any("SUBTOMO_EMBED.out.versionz" in p for p in problems)
    assert any("MERGE_EMBEDDINGS.out.version:" in p and "'versions'" in p for p in problems)


def test_an_unknown_emit_through_a_variable_is_caught(copy):
    # ch_embedded = EMBED.out or PREDICT_CENTERS.out: both must emit what is read from it
    _edit(copy / "modules" / "local" / "predict_centers" / "main.nf", "emit: star,", "emit: stars,")
    problems = check_calls([copy / "workflows" / "subtomo_embed.nf"])
    assert problems and all("ch_embedded.star" in p and "PREDICT_CENTERS.out" in p for p in problems)


def test_directives_and_scopes_come_from_the_language_servers_jar(jar):
    spec = ConfigSpec(jar)
    assert {
        "cpus",
        "memory",
        "time",
        "accelerator",
        "resourceLimits",
        "containerOptions",
        "beforeScript",
        "publishDir",
        "errorStrategy",
        "ext",
        "label",
    } <= spec.directives
    assert "memroy" not in spec.directives
    assert {"apptainer", "docker", "executor", "aws", "google"} <= set(spec.tree["children"])


def test_every_config_setting_is_known(jar):
    settings = [s for f in CONFIG_FILES for s in config_settings(f)]
    assert len(settings) > 100
    assert check_config(CONFIG_FILES, jar) == []


@pytest.mark.parametrize(
    "old, new, expected",
    [
        (
            "        memory = { 16.GB * task.attempt }",
            "        memroy = { 16.GB * task.attempt }",
            "'memroy' is not a process directive",
        ),
        ("    maxRetries     = 2", "    maxRetry       = 2", "'maxRetry' is not a process directive"),
    ],
)
def test_a_misspelled_directive_is_caught(copy, jar, old, new, expected):
    _edit(copy / "conf" / "base.config", old, new)
    problems = check_config([copy / "conf" / "base.config"], jar)
    assert len(problems) == 1 and expected in problems[0]


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("docker.runOptions       =", "docker.runOption        =", "'runOption' is not a setting of docker"),
        ("apptainer.pullTimeout   =", "apptainer.pulltimeout   =", "'pulltimeout' is not a setting of apptainer"),
        ("        queueSize       = 100", "        queueSise       = 100", "'queueSise' is not a setting of executor"),
        ("timeline {", "timelines {", "'timelines' is not a setting of the top level"),
        (
            "            withLabel: '^process_gpu$' {\n                accelerator",
            "            withLabel: '^process_gpu$' {\n                acelerator",
            "'acelerator' is not a process directive",
        ),
    ],
)
def test_a_misspelled_config_setting_is_caught(copy, jar, old, new, expected):
    _edit(copy / "nextflow.config", old, new)
    problems = check_config([copy / "nextflow.config"], jar)
    assert problems and all(expected in p for p in problems), problems


def test_a_statement_the_scanner_cannot_read_fails_loudly(tmp_path):
    bad = tmp_path / "bad.config"
    bad.write_text("process {\n    cpus 4\n}\n")
    with pytest.raises(ValueError, match="bad.config:2"):
        config_settings(bad)
