"""The configs and the workflow's rules, read statically (issue 11, points 1, 3, 4, 6, 7, 8, 9, 10).

Resources are evaluated from the .config files by tests/pipeline/nf_config.py (a small evaluator
of the forms these files use, not Nextflow); the head node's file handling is run in real Groovy in
test_head_node.py.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from nf_config import Duration, Memory, effective, evaluate, labels_of, params_of, request  # noqa: E402
from nf_static import config_settings  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODULES = {p.parent.name.upper(): p for p in REPO.glob("modules/local/*/main.nf")}
NF_FILES = sorted([*REPO.glob("*.nf"), *REPO.glob("workflows/*.nf"), *REPO.glob("modules/local/*/main.nf")])
GB = 2**30


def requests(repo: Path, profiles: list[str]):
    settings = effective(repo, profiles)
    retries = int(request(settings, "X", [], "maxRetries"))
    for process, module in MODULES.items():
        for attempt in range(1, retries + 2):
            yield (
                process,
                attempt,
                {d: request(settings, process, labels_of(module), d, attempt) for d in ("cpus", "memory", "time")},
            )


# ------------------------------------------------------------------------------------------
# point 1: resources


@pytest.mark.parametrize("profiles", [["test"], ["test", "docker"], ["test", "docker", "gpu"]])
def test_the_test_profile_fits_2_cores_and_6_gb_with_labels_and_retries(profiles):
    seen = 0
    for process, attempt, asked in requests(REPO, profiles):
        assert asked["cpus"] <= 2 and asked["memory"] <= 6 * GB and asked["time"] <= 1, (process, attempt, asked)
        seen += 1
    assert seen == len(MODULES) * 3


def test_every_request_is_capped_by_the_max_params():
    settings = effective(REPO, [])
    params = params_of(settings)
    assert (params["max_cpus"], params["max_memory"], params["max_time"]) == (16, "128.GB", "48.h")
    worst = {"cpus": 0, "memory": 0, "time": 0}
    for _, _, asked in requests(REPO, []):
        worst = {k: max(worst[k], asked[k]) for k in worst}
    assert worst["cpus"] <= 16 and worst["memory"] <= 128 * GB and worst["time"] <= 48
    assert worst["memory"] == 96 * GB  # the GPU label's third attempt, under the cap


def test_without_the_profiles_own_limits_the_test_profile_would_ask_32_gb(tmp_path):
    """base.config read resourceLimits with the default max_* before the test profile set them: the
    bug this guards against (a 16 GB CI runner refuses a 32 GB task)."""
    for name in ("nextflow.config", "conf"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, tmp_path / name)
    text = (tmp_path / "conf" / "test.config").read_text()
    text, n = re.subn(r"process \{\s*resourceLimits[^}]*\}", "", text)
    assert n == 1
    (tmp_path / "conf" / "test.config").write_text(text)
    asked = {p: a for p, attempt, a in requests(tmp_path, ["test"]) if attempt == 1}
    assert asked["EMBED"]["memory"] == 32 * GB and asked["EXTRACT_PATCHES"]["memory"] == 16 * GB


def test_the_evaluator_reads_units_and_refuses_what_it_does_not_know():
    assert evaluate("{ 8.GB * task.attempt }", {}, 3) == Memory(24 * GB)
    assert evaluate("'6.GB'", {}) == 6 * GB and evaluate("'1.h'", {}) == Duration(1)
    assert evaluate("[cpus: params.max_cpus, memory: params.max_memory]", {"max_cpus": 2, "max_memory": "6.GB"}) == {
        "cpus": 2,
        "memory": 6 * GB,
    }
    with pytest.raises(ValueError):
        evaluate("{ check_max(8.GB, 'memory') }", {})


# ------------------------------------------------------------------------------------------
# point 6: errors, GPU options, environment


def _setting(profiles, path):
    found = [s for s in effective(REPO, profiles) if s.path == path]
    return found[-1] if found else None


def test_bad_input_and_a_missing_gpu_are_not_retried():
    from subtomo_embed.core.errors import DeviceError, ResourceError, SubtomoError

    strategy = _setting([], ("process", "errorStrategy")).value
    retried = {int(c) for c in re.search(r"in \[([\d, ]+)\]", strategy).group(1).split(",")}
    codes = {cls.exit_code for cls in SubtomoError.__subclasses__()}
    assert DeviceError.exit_code in codes and ResourceError.exit_code in retried
    assert codes & retried == {ResourceError.exit_code}  # 3 config, 4 input, 5 model, 7 device: terminate
    assert {137, 140, 143} <= retried


def _all_settings(file: Path):
    return config_settings(file)


def test_gpu_options_only_for_gpu_tasks_in_the_gpu_profile():
    settings = [s for f in [REPO / "nextflow.config", *REPO.glob("conf/*.config")] for s in _all_settings(f)]
    for s in settings:
        if "--gpus" in s.value or "--nv" in s.value:
            assert s.path[:2] == ("profiles", "gpu") and s.path[-2:] == ("withLabel:process_gpu", "containerOptions"), s
        if s.path[-1] == "runOptions":
            assert "--gpus" not in s.value and "--nv" not in s.value, s
        if s.path[-1] == "accelerator":
            assert s.path[:2] == ("profiles", "gpu") and "withLabel:process_gpu" in s.path, s
    for process, module in MODULES.items():
        assert ("process_gpu" in labels_of(module)) == (process in ("EMBED", "PREDICT_CENTERS", "TRAIN")), process


def test_gres_only_for_tasks_given_a_gpu():
    """--gres (slurm_gpu_options) is added only when the task has an accelerator, which only the gpu profile sets."""
    options = _setting(["slurm"], ("process", "withLabel:process_gpu", "clusterOptions")).value
    assert "task.accelerator ? params.slurm_gpu_options : null" in options
    assert _setting(["slurm"], ("process", "clusterOptions")).value == "params.slurm_options"
    assert _setting(["slurm", "test"], ("process", "withLabel:process_gpu", "accelerator")) is None
    assert _setting(["gpu"], ("process", "withLabel:process_gpu", "accelerator")) is not None


@pytest.mark.parametrize("engine", ["docker", "apptainer", "singularity"])
def test_containers_keep_the_assigned_gpu_and_the_batch_size(engine):
    whitelist = _setting([engine], (engine, "envWhitelist")).value
    assert {"CUDA_VISIBLE_DEVICES", "SUBTOMO_EMBED_BATCH_SIZE"} <= set(re.findall(r"'(\w+)'", whitelist))


def test_apptainer_pull_timeout_and_cache_dir_are_params():
    assert _setting(["apptainer"], ("apptainer", "pullTimeout")).value == "params.apptainer_pull_timeout"
    assert _setting(["apptainer"], ("apptainer", "cacheDir")).value == "params.apptainer_cache_dir"


# ------------------------------------------------------------------------------------------
# point 8: the batch size is not in EMBED's task hash


def test_the_batch_size_is_outside_the_task_hash():
    """Nextflow hashes a task's script source, inputs, container, and the globals and task.ext.* the
    script references; the batch size must come in through none of them."""
    for process in ("EMBED", "PREDICT_CENTERS"):
        text = MODULES[process].read_text()
        script = text[text.index("script:") : text.index("stub:")]
        assert "task.ext.args" in script  # so ext.args must not carry it
        assert "batch_size" not in script.replace("hyper_parameters.batch_size=\\$SUBTOMO_EMBED_BATCH_SIZE", "")
        assert "params." not in script
        assert "\\${SUBTOMO_EMBED_BATCH_SIZE:+--set hyper_parameters.batch_size=\\$SUBTOMO_EMBED_BATCH_SIZE}" in script
    for s in effective(REPO, ["test", "gpu", "slurm", "docker"]):
        if "ext" in s.path or s.path[-1] in ("ext.args",):
            assert "batch" not in s.value, s


@pytest.mark.parametrize("batch, attempts", [(None, [10, 5, 2]), (4, [4, 2, 1]), (1, [1, 1, 1])])
def test_before_script_exports_the_batch_size_halved_per_retry(batch, attempts):
    """conf/modules.config's beforeScript closure, run in Groovy (the language server's jar) for attempts 1-3."""
    from groovy_eval import groovy

    jar = REPO / ".venv" / "share" / "nf-lang" / "language-server-all.jar"
    if not jar.is_file():
        pytest.fail(f"{jar} missing: run `make nf-lang`")
    closure = _setting([], ("process", "withName:EMBED|PREDICT_CENTERS", "beforeScript")).value
    params = {"hyper_parameters": {"batch_size": batch}} if batch else {}
    answers = groovy(
        jar,
        REPO / "workflows" / "subtomo_embed.nf",
        [f"task = [attempt: {a}]; ({closure})().toString()" for a in (1, 2, 3)],
        params,
    )
    assert [a["value"] for a in answers] == [f"export SUBTOMO_EMBED_BATCH_SIZE={n}" for n in attempts]


# ------------------------------------------------------------------------------------------
# points 3, 4, 10: the workflow's collects, filters and file handling


def _workflow() -> str:
    return (REPO / "workflows" / "subtomo_embed.nf").read_text()


def test_every_collect_sorts():
    text = _workflow()
    collects = re.findall(r"\.(collect|toList)\(([^)]*)", text)
    assert len(collects) >= 5
    assert all(kind == "collect" and args.startswith("sort:") for kind, args in collects), collects
    assert "def byName(a, b)" in text and "a.name <=> b.name" in text


def test_no_channel_item_is_null():
    for path in NF_FILES:
        text = path.read_text()
        assert not re.search(r"return\s+null\b", text), path
    text = _workflow()
    # tomograms without a mask are filtered out of the channel; those without picks before it is made
    assert ".filter { stem, _tomogram, mask ->" in text
    assert "picked = picked.findAll { item -> item[2] != null }" in text
    assert text.index("picked.findAll { item -> item[2] != null }") < text.index("channel.fromList(picked)")


def test_files_are_found_with_nextflows_file_api():
    for path in NF_FILES:
        text = path.read_text()
        assert "java.io.File" not in text and "File(" not in text.replace("collectFile(", "")
    text = _workflow()
    assert 'files("${location}/*${extension}")' in text and 'files("${location}/*")' in text
    assert "file(params.picks, checkIfExists: true)" in text
    assert "file(params.trained_model, checkIfExists: true)" in text


@pytest.mark.parametrize(
    "profile, executor, queue_param",
    [("awsbatch", "awsbatch", "aws_gpu_queue"), ("googlebatch", "google-batch", "google_gpu_machine")],
)
def test_cloud_profiles(profile, executor, queue_param):
    settings = effective(REPO, [profile, "gpu"])
    last = {s.path: s.value for s in settings}
    assert last[("workDir",)] == "params.work_bucket"
    assert last[("process", "executor")] == f"'{executor}'"
    assert any(queue_param in v for p, v in last.items() if "withLabel:process_gpu" in p)
    # the engine's --gpus/--nv are not for Batch services, which attach the GPU themselves
    assert (
        "task.executor in ['awsbatch', 'google-batch'] ? ''"
        in last[("process", "withLabel:process_gpu", "containerOptions")]
    )


# ------------------------------------------------------------------------------------------
# point 9: parameters, schema, plugin, versions


def _config_params() -> set[str]:
    return {s.path[1] for s in config_settings(REPO / "nextflow.config") if s.path[0] == "params" and len(s.path) == 2}


def _schema_params() -> set[str]:
    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    return {k for group in schema["$defs"].values() for k in group["properties"]}


def test_the_schema_lists_exactly_the_params_of_nextflow_config():
    assert _config_params() == _schema_params(), (
        f"in nextflow.config only: {sorted(_config_params() - _schema_params())}; "
        f"in the schema only: {sorted(_schema_params() - _config_params())}"
    )


def test_every_param_used_is_defined():
    used = set()
    for path in [*NF_FILES, REPO / "nextflow.config", *REPO.glob("conf/*.config")]:
        used |= set(re.findall(r"\bparams\.(\w+)", path.read_text()))
    assert used <= _config_params(), sorted(used - _config_params())
    profile_params = {
        s.path[1]
        for f in REPO.glob("conf/*.config")
        for s in config_settings(f)
        if s.path[0] == "params" and len(s.path) == 2
    }
    assert profile_params <= _config_params(), sorted(profile_params - _config_params())


def test_parameters_are_validated_by_a_pinned_nf_schema():
    config = (REPO / "nextflow.config").read_text()
    assert re.search(r"plugins \{\s*id 'nf-schema@\d+\.\d+\.\d+'\s*\}", config)
    main = (REPO / "main.nf").read_text()
    assert "include { validateParameters } from 'plugin/nf-schema'" in main
    assert main.index("validateParameters()") < main.index("SUBTOMO_EMBED()")


def test_software_versions_are_collected():
    main = (REPO / "main.nf").read_text()
    assert "collectFile(name: 'software_versions.yml', storeDir: \"${params.prediction_folder}/pipeline_info\"" in main
    workflow = _workflow()
    emitted = re.search(r"ch_versions = ch_embed_versions\s*\.mix\(([^)]*)\)", workflow).group(1)
    for process in MODULES:
        if process not in ("EXTRACT_PATCHES", "EMBED", "PREDICT_CENTERS", "TRAIN"):
            assert f"{process}.out.versions" in emitted, process
    # TRAIN runs only with params.train: its versions come through ch_train_versions (empty without it)
    assert "ch_train_versions" in emitted and "ch_train_versions = TRAIN.out.versions" in workflow
    assert "EXTRACT_PATCHES.out.versions.mix(EMBED.out.versions)" in workflow
    assert "ch_embed_versions = PREDICT_CENTERS.out.versions" in workflow


def test_the_expected_values_come_from_the_test_profiles_settings():
    """make_test_data.py --expected runs the one-machine commands with conf/test.config's params."""
    from make_test_data import TEST_CONFIG
    from nf_config import groovy_literal

    profile = {
        s.path[1]: groovy_literal(s.value)
        for s in config_settings(REPO / "conf" / "test.config")
        if s.path[0] == "params" and len(s.path) == 2 and not s.value.startswith('"')
    }
    for key, value in TEST_CONFIG.items():
        node = profile
        for part in key.split("__"):
            node = node[part]
        assert node == value, key
    assert groovy_literal("[a: [1, 2], 'b': null, c: [:], d: [x: 'y']]") == {
        "a": [1, 2],
        "b": None,
        "c": {},
        "d": {"x": "y"},
    }


@pytest.mark.parametrize("profiles", [[], ["test"]])
def test_the_default_params_pass_the_schema(profiles):
    """What validateParameters() checks first: the params as nextflow.config (and the test profile)
    set them, against nextflow_schema.json (trace_report_suffix's date, not a literal, as a string)."""
    import jsonschema
    from nf_config import groovy_literal

    params = {}
    for s in effective(REPO, profiles):
        if s.path[0] == "params" and len(s.path) == 2:
            try:
                params[s.path[1]] = groovy_literal(s.value)
            except (ValueError, IndexError):
                params[s.path[1]] = "2026-01-01_00-00-00" if s.path[1] == "trace_report_suffix" else "/x"
    assert set(params) >= _config_params()
    # nf-schema leaves out params that evaluate to false (null, false, '') before validating
    given = {k: v for k, v in params.items() if v or v == 0 and v is not False}
    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    if not profiles:  # without a profile the user gives the required paths (-params-file)
        given |= {k: "/data" for group in schema["$defs"].values() for k in group.get("required", [])}
    jsonschema.validate(given, schema)
