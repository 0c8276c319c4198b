"""One source for every setting: nextflow_schema.json's key groups, the pipeline's params defaults, the keys
each pipeline step is passed and docs/config.md's key tables are generated from the package's Config
(core/config_contract.py) and kept current; a key added to Config reaches all of them, the CLI and a real
Nextflow run with nothing else edited."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from subtomo_embed.core import config_contract
from subtomo_embed.core.config import Config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "pipeline"))

import nf_runtime  # noqa: E402
from test_pipeline import param_at  # noqa: E402


def test_the_generated_files_are_current():
    stale = config_contract.stale(REPO)
    assert not stale, f"stale: {', '.join(map(str, stale))}; run {config_contract.REGENERATE}"


def test_check_names_the_stale_file_and_the_command(tmp_path):
    for path in config_contract.generated(REPO):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path, tmp_path / path)
    docs = tmp_path / "docs" / "config.md"
    docs.write_text(docs.read_text().replace("k for KMeans.", "k for KMeans, edited by hand."))
    proc = subprocess.run(
        [sys.executable, "-m", "subtomo_embed.core.config_contract", "--check", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"docs/config.md is stale: run {config_contract.REGENERATE}"


def test_schema_defaults_are_the_config_defaults_and_the_schema_takes_every_example():
    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    defaults = Config().model_dump(by_alias=True)
    for key in config_contract.config_keys():
        node = schema["$defs"][key.group]
        for part in key.dotted.split("."):
            node = node["properties"][part]
        value = param_at(defaults, key.dotted, None)  # None: inside a section whose default is null
        assert node.get("default") == (None if key.when_given else value), key.dotted
        assert node["description"], key.dotted
    for name in ("subtomo_embeddings.yaml", "demo.yaml"):
        jsonschema.validate(yaml.safe_load((REPO / "configs" / name).read_text()), schema)
    # a bound written in Config is the schema's: num_clusters >= 1 (the schema said 2 before it was generated)
    kmeans = schema["$defs"]["analysis"]["properties"]["clustering_kmeans"]["properties"]["num_clusters"]
    assert kmeans["minimum"] == 1


def test_every_step_key_is_a_config_key_and_the_train_step_gets_the_contrast_keys():
    leaves = {k.dotted for k in config_contract.config_keys()}
    for step, keys in config_contract.step_keys().items():
        for key in keys:
            assert key in leaves or any(leaf.startswith(key + ".") for leaf in leaves), (step, key)
    train = config_contract.step_keys()["train"]
    assert {"hyper_parameters.contrast_weight", "hyper_parameters.contrast_temperature"} <= set(train)


def test_nextflow_resolves_the_generated_params_to_the_config_defaults(tmp_path):
    nf_runtime.require_nextflow()
    pipeline = nf_runtime.offline_copy(tmp_path / "pipeline")
    params = nf_runtime.resolved_config(pipeline, "", tmp_path / "home")["params"]
    defaults = Config().model_dump(by_alias=True)
    for key in config_contract.config_keys():
        if key.when_given:  # no default in the pipeline: passed only when given
            *sections, last = key.dotted.split(".")
            node = defaults
            for part in sections:
                node = node[part]
            del node[last]
    for top, value in defaults.items():
        assert params[top] == value, top


# ------------------------------------------------------------------------------------------
# a key added to Config, and nothing else


NEW_KEY = """
    neighbours_drawn: int = config_key(
        7, help="A key added by tests/test_config_contract.py.", steps=FIGURES[:1], ge=1, le=MAX_COUNT
    )
"""


@pytest.fixture(scope="module")
def copy_with_a_new_key(tmp_path_factory) -> Path:
    """The checkout's tracked files, with one key added to Config's ``scale`` section, regenerated."""
    root = tmp_path_factory.mktemp("new_key") / "checkout"
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    for name in tracked.decode().split("\0"):
        if name and (REPO / name).is_file() and not name.startswith(("tests/", "benchmarks/", "models/")):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    sections = root / "src" / "subtomo_embed" / "core" / "config_sections.py"
    text = sections.read_text()
    anchor = "    projection_sample: int = config_key("
    assert anchor in text
    sections.write_text(text.replace(anchor, NEW_KEY.lstrip("\n") + anchor))
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    write = [sys.executable, "-m", "subtomo_embed.core.config_contract", "--write", "--root", str(root)]
    subprocess.run(write, env=env, check=True, capture_output=True)
    return root


def test_a_new_key_reaches_the_schema_the_params_the_steps_and_the_docs(copy_with_a_new_key):
    root = copy_with_a_new_key
    schema = json.loads((root / "nextflow_schema.json").read_text())
    new = schema["$defs"]["analysis"]["properties"]["scale"]["properties"]["neighbours_drawn"]
    assert new["default"] == 7 and new["minimum"] == 1 and new["type"] == "integer"
    assert "neighbours_drawn: 7" in (root / "conf" / "config_params.config").read_text()
    settings = (root / "workflows" / "settings.nf").read_text()
    kmeans = settings[settings.index("kmeans: [") : settings.index("spectral: [")]
    assert "'scale.neighbours_drawn'," in kmeans and "neighbours_drawn" not in settings[settings.index("spectral: [") :]
    docs = (root / "docs" / "config.md").read_text()
    assert "| `scale.neighbours_drawn` | int ≥ 1 | 7 | A key added by tests/test_config_contract.py. | kmeans |" in docs
    check = [sys.executable, "-m", "subtomo_embed.core.config_contract", "--check", "--root", str(root)]
    assert subprocess.run(check, env={**os.environ, "PYTHONPATH": str(root / "src")}).returncode == 0


def test_a_new_key_is_taken_by_the_cli_with_its_bounds(copy_with_a_new_key):
    env = {**os.environ, "PYTHONPATH": str(copy_with_a_new_key / "src")}
    probe = (
        "from subtomo_embed.core.config import load_config; import sys; "
        "print(load_config(None, [sys.argv[1]]).scale.neighbours_drawn)"
    )
    given = subprocess.run([sys.executable, "-c", probe, "scale.neighbours_drawn=3"], env=env, capture_output=True)
    assert given.stdout.decode().strip() == "3"
    cli = [sys.executable, "-m", "subtomo_embed.cli", "kmeans", "--set", "scale.neighbours_drawn=0"]
    refused = subprocess.run(cli, env=env, capture_output=True, text=True)
    assert refused.returncode == 3
    assert "key 'scale.neighbours_drawn': Input should be greater than or equal to 1" in refused.stderr


@pytest.mark.slow  # a real run of the copy's pipeline on -profile test's data (1-3 min)
def test_a_new_key_is_passed_by_the_pipeline_to_its_step_only(copy_with_a_new_key, tmp_path):
    nf_runtime.require_nextflow()
    pipeline = nf_runtime.offline_copy(tmp_path / "pipeline", source=copy_with_a_new_key)
    subprocess.run(
        [sys.executable, str(REPO / "tests" / "pipeline" / "make_test_data.py"), str(pipeline / "test_data")],
        check=True,
        capture_output=True,
    )
    # the tasks run the copy's package and bin/ (the local executor passes the environment on)
    env = {
        **nf_runtime.environment(tmp_path / "home"),
        "PYTHONPATH": str(copy_with_a_new_key / "src"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    args = ["run", ".", "-profile", "test", "--prediction_folder", str(tmp_path / "results")]
    proc = subprocess.run(
        [str(nf_runtime.NEXTFLOW), *args, "--scale.neighbours_drawn", "5"],
        cwd=pipeline,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    scripts = [p.read_text() for p in (pipeline / "work").glob("*/*/.command.sh")]
    passed = [text for text in scripts if "--set 'scale.neighbours_drawn=5'" in text]
    assert len(passed) == 1 and "subtomo-cluster kmeans" in passed[0]
    assert (tmp_path / "results" / "kmeans_clusters.h5").is_file()
