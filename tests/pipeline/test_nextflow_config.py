"""The configs and the workflow's rules as Nextflow 24.10 resolves them (issue 11, points 1, 3, 4, 6, 7,
8, 9, 10; issue 26).

Three kinds of evidence, all from the real runtime on an offline copy of the pipeline
(tests/pipeline/nf_runtime.py):

* ``nextflow config -profile … -o json``: every setting as resolved for a profile combination
  (closures as their source text), one JVM start per combination, cached for the module;
* a probe run (``nextflow run``) of stand-in processes with the names and labels of modules/local/*:
  each task fails twice with an exit status the config retries and then succeeds, and writes what it
  was given on each attempt (cpus, memory, time, SUBTOMO_EMBED_BATCH_SIZE): the resources Nextflow
  gives each process per attempt, capped by resourceLimits, and the beforeScript it runs;
* an inspection run: the resolved closures' source text evaluated by Nextflow's Groovy with the
  task, params and workflow values a case needs (every exit status, each attempt, each container
  engine and executor), and the workDir a cloud profile sets from --work_bucket.

What the workflow's and modules' source must say (sorted collects, no null channel items, the batch
size outside the script) is checked on the text: it tests our source, not Nextflow. The tests that start
Nextflow are marked slow; without .venv/bin/nextflow (`make nextflow`) they skip, or fail in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from nf_runtime import nextflow, offline_copy, process_modules, require_nextflow, resolved_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODULES = process_modules()  # CLUSTER_KMEANS and CLUSTER_SPECTRAL: modules/local/cluster, included twice
NF_FILES = sorted([*REPO.glob("*.nf"), *REPO.glob("workflows/*.nf"), *REPO.glob("modules/local/*/main.nf")])
GB = 2**30
# The profiles select GPU tasks with a regular expression for the label: a selector with base.config's text
# ('process_gpu') replaced base.config's block in a real run, and GPU tasks got 1 CPU and 4 GB on every attempt.
GPU_SELECTOR = "withLabel:^process_gpu$"
HOUR = 3_600_000  # ms
MACHINE_MEMORY_MB = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
# the exit statuses a scheduler or the tool gives for a lack of resources (retried)
RETRIED = (6, 137, 140, 143)
# what each label asks on attempt n (conf/base.config): cpus, memory n x GB, time n x hours
LABELS = {"process_single": (1, 8, 4), "process_medium": (4, 16, 8), "process_gpu": (8, 32, 8)}
# the profile combinations the tests read (docs/usage.md gives these to users)
ENGINES = ("docker", "podman", "apptainer", "singularity")
PROFILES = ("", "test", "test,docker,gpu", *ENGINES, "slurm", "slurm,gpu", "awsbatch,gpu", "googlebatch,gpu")
# the combinations whose GPU tasks' resources are read (test_the_gpu_label_keeps_its_resources_in_every_profile)
GPU_LABEL_PROFILES = ("", "test", "test,docker,gpu", "slurm", "slurm,gpu", "awsbatch,gpu", "googlebatch,gpu")


def labels_of(module: Path) -> list[str]:
    return re.findall(r"^\s*label\s+'(\w+)'", module.read_text(), flags=re.M)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict[str, Path]:
    require_nextflow()
    root = tmp_path_factory.mktemp("nextflow_config")
    return {"root": root, "pipeline": offline_copy(root / "pipeline"), "home": root / "nxf_home"}


def launch_folder(project, name: str) -> Path:
    """A folder that runs a script of its own with the pipeline's nextflow.config and conf/."""
    where = project["pipeline"] / name
    where.mkdir()
    for item in ("nextflow.config", "conf"):
        (where / item).symlink_to(project["pipeline"] / item)
    return where


@pytest.fixture(scope="module")
def config(project):
    """``config('slurm,gpu')``: the resolved settings of a profile combination ('' for none), cached."""
    cache: dict[str, dict] = {}

    def resolve(profiles: str) -> dict:
        assert profiles in PROFILES, f"add {profiles!r} to PROFILES"
        if profiles not in cache:
            cache[profiles] = resolved_config(project["pipeline"], profiles, project["home"])
        return cache[profiles]

    return resolve


# ------------------------------------------------------------------------------------------------
# the probe: stand-in processes named and labelled as the modules, run by the pipeline's config

PROBE_PROCESS = """\
process NAME {
LABELS
    input:
    val exits

    script:
    \"\"\"
    echo '{"process": "${task.process}", "attempt": ${task.attempt}, "cpus": ${task.cpus}, \\
"memory": ${task.memory.toBytes()}, "time": ${task.time.toMillis()}, \\
"batch": "'\\${SUBTOMO_EMBED_BATCH_SIZE:-}'"}' >> ${launchDir}/attempts.jsonl
    exit ${exits[task.attempt - 1]}
    \"\"\"
}
"""


def probe_script() -> str:
    """Each process fails on attempts 1 and 2 (with two of RETRIED) and succeeds on attempt 3."""
    processes, calls = [], []
    for i, (name, module) in enumerate(MODULES.items()):
        labels = "\n".join(f"    label '{label}'" for label in labels_of(module))
        processes.append(PROBE_PROCESS.replace("NAME", name).replace("LABELS", labels))
        calls.append(f"    {name}([{RETRIED[i % 4]}, {RETRIED[(i + 1) % 4]}, 0])")
    return "\n".join(processes) + "\nworkflow {\n" + "\n".join(calls) + "\n}\n"


@pytest.fixture(scope="module")
def attempts(project):
    """``attempts('test,gpu')``: {(process, attempt): what the task was given} of a probe run."""
    cache: dict[str, dict] = {}

    def run(profiles: str) -> dict:
        if profiles not in cache:
            where = launch_folder(project, f"probe_{profiles.replace(',', '_') or 'none'}")
            (where / "main.nf").write_text(probe_script())
            args = ["run", "main.nf", *(["-profile", profiles] if profiles else [])]
            proc = nextflow(*args, cwd=where, home=project["home"], timeout=600)
            assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
            rows = [json.loads(line) for line in (where / "attempts.jsonl").read_text().splitlines()]
            cache[profiles] = {(r["process"], r["attempt"]): r for r in rows}
            assert len(cache[profiles]) == len(rows) == 3 * len(MODULES), sorted(cache[profiles])
        return cache[profiles]

    return run


# ------------------------------------------------------------------------------------------------
# the inspection: resolved closures evaluated by Nextflow's Groovy

INSPECT = """\
// params.closures: [name, source, values] rows; each closure is called with values' names only (the
// task, params and workflow that Nextflow would give it)
def rows = new groovy.json.JsonSlurper().parse(new File(params.closures))
def shell = new GroovyShell()
def evaluated = rows.collectEntries { row ->
    def closure = (Closure) shell.evaluate("(" + row.source + ")")
    closure.resolveStrategy = Closure.DELEGATE_ONLY
    closure.delegate = row.values
    [(row.name): closure.call()?.toString()]
}

workflow {
    def found = [workDir: workflow.workDir.toString(), closures: evaluated]
    file(params.answers).text = groovy.json.JsonOutput.toJson(found)
}
"""


def closure_cases(config) -> list[tuple[str, str, dict]]:
    """(name, closure source, values) of every closure case the tests below read."""
    default, slurm, aws, google = config(""), config("slurm"), config("awsbatch,gpu"), config("googlebatch,gpu")
    cases = []
    for code in range(256):
        cases.append((f"errorStrategy {code}", default["process"]["errorStrategy"], {"task": {"exitStatus": code}}))
    before = default["process"]["withName:EMBED|PREDICT_CENTERS"]["beforeScript"]
    for batch in (None, 4, 1):  # None: the pipeline's default (conf/config_params.config)
        params = {**default["params"], **({"hyper_parameters": {"batch_size": batch}} if batch else {})}
        for attempt in (1, 2, 3):
            values = {"task": {"attempt": attempt}, "params": params}
            cases.append((f"beforeScript {batch} {attempt}", before, values))
    gpu_options = config("test,docker,gpu")["process"][GPU_SELECTOR]["containerOptions"]
    for executor in ("local", "slurm", "awsbatch", "google-batch"):
        for engine in (*ENGINES, None):
            values = {"task": {"executor": executor}, "workflow": {"containerEngine": engine}}
            cases.append((f"containerOptions {executor} {engine}", gpu_options, values))
    for accelerator in (None, 1):
        for options in (None, "--account=lab"):
            params = {**slurm["params"], "slurm_options": options, "slurm_queue": "cpu", "slurm_gpu_queue": "gpu"}
            values = {"task": {"accelerator": accelerator}, "params": params}
            for key in ("clusterOptions", "queue"):
                source = slurm["process"][GPU_SELECTOR][key]
                cases.append((f"slurm {key} {accelerator} {options}", source, values))
        params = {**aws["params"], "aws_cpu_queue": "cpu", "aws_gpu_queue": "gpu"}
        source = aws["process"][GPU_SELECTOR]["queue"]
        cases.append(
            (f"awsbatch queue {accelerator}", source, {"task": {"accelerator": accelerator}, "params": params})
        )
        source = google["process"][GPU_SELECTOR]["machineType"]
        values = {"task": {"accelerator": accelerator}, "params": google["params"]}
        cases.append((f"googlebatch machineType {accelerator}", source, values))
    for profiles in GPU_LABEL_PROFILES:
        gpu = config(profiles)["process"]["withLabel:process_gpu"]
        for key, unit in (("memory", "toBytes"), ("time", "toMillis")):
            source = f"{{ -> ({gpu[key]}).call().{unit}() }}"  # bytes, milliseconds
            for attempt in (1, 2, 3):
                cases.append((f"gpu {key} {profiles} {attempt}", source, {"task": {"attempt": attempt}}))
    return cases


@pytest.fixture(scope="module")
def inspected(project, config) -> dict:
    """One run under ``-profile awsbatch --work_bucket <folder>``: {workDir, closures: name -> value}.
    The executor is set back to local (-c): awsbatch would load the nf-amazon plugin, not reachable here."""
    where = launch_folder(project, "inspect")
    (where / "inspect.nf").write_text(INSPECT)
    (where / "local.config").write_text("process.executor = 'local'\n")
    rows = [{"name": n, "source": s, "values": v} for n, s, v in closure_cases(config)]
    (where / "closures.json").write_text(json.dumps(rows))
    bucket = project["root"] / "bucket" / "work"
    proc = nextflow(
        "run", "inspect.nf", "-c", "local.config", "-profile", "awsbatch", "--work_bucket", str(bucket),
        "--closures", "closures.json", "--answers", str(where / "answers.json"), cwd=where, home=project["home"],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    found = json.loads((where / "answers.json").read_text())
    found["bucket"] = str(bucket)
    return found


# ------------------------------------------------------------------------------------------------
# point 1: resources, per attempt, capped


@pytest.mark.slow  # starts Nextflow
def test_the_test_profile_fits_2_cores_and_6_gb_with_labels_and_retries(attempts, config):
    given = attempts("test,gpu")
    for (process, attempt), task in given.items():
        assert task["cpus"] <= 2 and task["memory"] <= 6 * GB and task["time"] <= HOUR, (process, attempt, task)
    # the caps hold with the container and GPU profiles too
    for profiles in ("test", "test,docker,gpu"):
        assert config(profiles)["process"]["resourceLimits"] == {"cpus": 2, "memory": "6.GB", "time": "1.h"}


@pytest.mark.slow  # starts Nextflow
def test_the_local_executor_caps_at_this_machines_cores_and_memory(config):
    """No executor profile and no --max_cpus / --max_memory: the caps are this machine's (base.config)."""
    resolved = config("")
    assert resolved["params"]["max_cpus"] is None and resolved["params"]["max_memory"] is None
    limits = resolved["process"]["resourceLimits"]
    assert limits == {"cpus": os.cpu_count(), "memory": f"{MACHINE_MEMORY_MB} MB", "time": "48.h"}


# cpus, memory, time caps of the probe runs
CAPS = {"": (os.cpu_count(), MACHINE_MEMORY_MB * 2**20, 48 * HOUR), "test,gpu": (2, 6 * GB, HOUR)}


@pytest.mark.slow  # starts Nextflow
@pytest.mark.parametrize("profiles", ["", "test,gpu"])
def test_each_task_gets_its_labels_resources_capped_and_more_on_each_retry(attempts, profiles):
    max_cpus, max_memory, max_time = CAPS[profiles]
    given = attempts(profiles)
    for (process, attempt), task in given.items():
        (label,) = labels_of(MODULES[process])
        cpus, memory_gb, hours = LABELS[label]
        expected = {
            "cpus": min(cpus, max_cpus),
            "memory": min(memory_gb * attempt * GB, max_memory),
            "time": min(hours * attempt * HOUR, max_time),
        }
        assert {k: task[k] for k in expected} == expected, (process, attempt)


@pytest.mark.slow  # starts Nextflow
@pytest.mark.parametrize("profiles", GPU_LABEL_PROFILES)
def test_the_gpu_label_keeps_its_resources_in_every_profile(config, inspected, profiles):
    """base.config's resources for GPU tasks, whatever the profiles add (see GPU_SELECTOR): the
    values Nextflow gives attempts 1 to 3, in bytes and milliseconds (before resourceLimits caps them)."""
    cpus, memory_gb, hours = LABELS["process_gpu"]
    assert config(profiles)["process"]["withLabel:process_gpu"]["cpus"] == cpus
    closures = inspected["closures"]
    got = [(closures[f"gpu memory {profiles} {a}"], closures[f"gpu time {profiles} {a}"]) for a in (1, 2, 3)]
    assert got == [(str(memory_gb * a * GB), str(hours * a * HOUR)) for a in (1, 2, 3)], profiles


@pytest.mark.slow  # starts Nextflow
@pytest.mark.parametrize("profiles", ["slurm", "slurm,gpu", "awsbatch,gpu", "googlebatch,gpu"])
def test_cluster_and_cloud_profiles_cap_at_their_nodes_not_this_machine(config, profiles):
    resolved = config(profiles)
    assert resolved["params"]["max_cpus"] is None and resolved["params"]["max_memory"] is None
    assert resolved["process"]["resourceLimits"] == {"cpus": 16, "memory": "128.GB", "time": "48.h"}


# ------------------------------------------------------------------------------------------------
# point 6: errors, GPU options, environment


@pytest.mark.slow  # starts Nextflow
def test_bad_input_and_a_missing_gpu_are_not_retried(inspected, attempts):
    from subtomo_embed.core.errors import ResourceError, SubtomoError

    strategy = {code: inspected["closures"][f"errorStrategy {code}"] for code in range(256)}
    retried = {code for code, what in strategy.items() if what == "retry"}
    assert set(strategy.values()) == {"retry", "terminate"}
    codes = {cls.exit_code for cls in SubtomoError.__subclasses__()}
    assert codes == {3, 4, 5, 6, 7}
    assert codes & retried == {ResourceError.exit_code}  # 3 config, 4 input, 5 model, 7 device: terminate
    assert set(RETRIED) <= retried
    # and in a real run: every process failed twice with these and was retried (attempt 3 ran)
    assert {key[1] for key in attempts("test,gpu")} == {1, 2, 3}


def _settings(node, path=()):
    """(path, value) of every leaf of a resolved config."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _settings(value, (*path, key))
    elif isinstance(node, list):
        for value in node:
            yield from _settings(value, path)
    else:
        yield path, node


@pytest.mark.slow  # starts Nextflow
def test_gpu_options_only_for_gpu_tasks_in_the_gpu_profile(config):
    gpu_option = re.compile(r"--gpus|--nv\b|nvidia\.com/gpu")
    seen = []
    for profiles in PROFILES:
        for path, value in _settings(config(profiles)):
            if path[-1] == "runOptions":
                assert not gpu_option.search(str(value)), (profiles, path)
            if gpu_option.search(str(value)) or path[-1] == "accelerator":
                assert "gpu" in profiles.split(",") and path[:2] == ("process", GPU_SELECTOR), path
                assert path[-1] in ("containerOptions", "accelerator"), (profiles, path)
                seen.append(path[-1])
    assert set(seen) == {"containerOptions", "accelerator"}
    for process, module in MODULES.items():
        assert ("process_gpu" in labels_of(module)) == (process in ("EMBED", "PREDICT_CENTERS", "TRAIN")), process


@pytest.mark.slow  # starts Nextflow
def test_each_engine_gets_its_gpu_option_and_batch_services_none(inspected):
    expected = {"docker": "--gpus all", "podman": "--device nvidia.com/gpu=all", "apptainer": "--nv"}
    expected |= {"singularity": "--nv", None: ""}
    for executor in ("local", "slurm", "awsbatch", "google-batch"):
        for engine, option in expected.items():
            batch_service = executor in ("awsbatch", "google-batch")
            got = inspected["closures"][f"containerOptions {executor} {engine}"]
            assert got == ("" if batch_service else option), (executor, engine)


@pytest.mark.slow  # starts Nextflow
def test_gres_and_the_gpu_queue_only_for_tasks_given_a_gpu(config, inspected):
    """--gres (slurm_gpu_options) only when the task has an accelerator, which only the gpu profile sets."""
    closures = inspected["closures"]
    assert closures["slurm clusterOptions None None"] == ""
    assert closures["slurm clusterOptions None --account=lab"] == "--account=lab"
    assert closures["slurm clusterOptions 1 None"] == "--gres=gpu:1"
    assert closures["slurm clusterOptions 1 --account=lab"] == "--account=lab --gres=gpu:1"
    assert [closures[f"slurm queue {a} None"] for a in (None, 1)] == ["cpu", "gpu"]
    assert "accelerator" not in config("slurm")["process"][GPU_SELECTOR]
    assert "accelerator" not in config("test")["process"].get(GPU_SELECTOR, {})
    assert config("slurm,gpu")["process"][GPU_SELECTOR]["accelerator"] == 1
    assert config("slurm")["process"]["clusterOptions"] is None  # params.slurm_options, for every task


@pytest.mark.slow  # starts Nextflow
def test_gpu_tasks_run_one_at_a_time_only_on_the_local_executor(config):
    assert config("test,docker,gpu")["process"][GPU_SELECTOR]["maxForks"] == 1
    for profiles in ("slurm,gpu", "awsbatch,gpu", "googlebatch,gpu"):
        assert config(profiles)["process"][GPU_SELECTOR]["maxForks"] == 0, profiles


@pytest.mark.slow  # starts Nextflow
@pytest.mark.parametrize("engine", ENGINES)
def test_containers_keep_the_assigned_gpu_and_the_batch_size(config, engine):
    resolved = config(engine)
    assert resolved[engine]["enabled"] is True
    assert {"CUDA_VISIBLE_DEVICES", "SUBTOMO_EMBED_BATCH_SIZE"} <= set(resolved[engine]["envWhitelist"])
    assert [e for e in ENGINES if resolved.get(e, {}).get("enabled")] == [engine]


@pytest.mark.slow  # starts Nextflow
def test_apptainer_pull_timeout_and_cache_dir_are_params(config):
    for engine in ("apptainer", "singularity"):
        resolved = config(engine)
        assert resolved[engine]["pullTimeout"] == resolved["params"]["apptainer_pull_timeout"] == "2h"
        assert "cacheDir" in resolved[engine] and resolved[engine]["cacheDir"] is None  # the param's default


# ------------------------------------------------------------------------------------------------
# point 8: the batch size is not in EMBED's task hash, and halves on each retry


@pytest.mark.slow  # starts Nextflow
def test_the_batch_size_is_outside_the_task_hash(config):
    """Nextflow hashes a task's script source, inputs, container, and the globals and task.ext.* the
    script references; the batch size must come in through none of them, only through beforeScript."""
    for process in ("EMBED", "PREDICT_CENTERS"):
        text = MODULES[process].read_text()
        script = text[text.index("script:") : text.index("stub:")]
        assert "task.ext.args" in script  # so ext.args must not carry it
        assert "batch_size" not in script.replace("hyper_parameters.batch_size=\\$SUBTOMO_EMBED_BATCH_SIZE", "")
        assert "params." not in script
        assert "\\${SUBTOMO_EMBED_BATCH_SIZE:+--set hyper_parameters.batch_size=\\$SUBTOMO_EMBED_BATCH_SIZE}" in script
    for profiles in PROFILES:
        for path, value in _settings(config(profiles)["process"]):
            if re.search(r"batch_size|BATCH_SIZE", str(value)):
                assert path == ("withName:EMBED|PREDICT_CENTERS", "beforeScript"), (profiles, path)


@pytest.mark.slow  # starts Nextflow
@pytest.mark.parametrize("batch, sizes", [(None, [10, 5, 2]), (4, [4, 2, 1]), (1, [1, 1, 1])])
def test_before_script_exports_the_batch_size_halved_per_retry(inspected, batch, sizes):
    got = [inspected["closures"][f"beforeScript {batch} {attempt}"] for attempt in (1, 2, 3)]
    assert got == [f"export SUBTOMO_EMBED_BATCH_SIZE={n}" for n in sizes]


@pytest.mark.slow  # starts Nextflow
@pytest.mark.parametrize("profiles, sizes", [("", ["10", "5", "2"]), ("test,gpu", ["4", "2", "1"])])
def test_gpu_tasks_are_given_the_halved_batch_size_and_others_none(attempts, profiles, sizes):
    """In a real run: what EMBED and PREDICT_CENTERS find in SUBTOMO_EMBED_BATCH_SIZE per attempt."""
    given = attempts(profiles)
    for process in MODULES:
        batches = [given[(process, n)]["batch"] for n in (1, 2, 3)]
        assert batches == (sizes if process in ("EMBED", "PREDICT_CENTERS") else ["", "", ""]), process


# ------------------------------------------------------------------------------------------------
# points 3, 4, 10: the workflow's collects, filters and file handling (its source)


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


@pytest.mark.slow  # starts Nextflow
@pytest.mark.parametrize(
    "profile, executor, key", [("awsbatch", "awsbatch", "queue"), ("googlebatch", "google-batch", "machineType")]
)
def test_cloud_profiles(config, inspected, profile, executor, key):
    resolved = config(f"{profile},gpu")
    assert resolved["process"]["executor"] == executor
    # GPU tasks on the GPU queue / machine, the others not (evaluated with and without a GPU)
    closures = inspected["closures"]
    if profile == "awsbatch":
        assert [closures[f"awsbatch queue {a}"] for a in (None, 1)] == ["cpu", "gpu"]
    else:
        assert [closures[f"googlebatch machineType {a}"] for a in (None, 1)] == [None, "g2-standard-12"]
        assert resolved["google"]["batch"]["installGpuDrivers"] is True
    assert key in resolved["process"][GPU_SELECTOR]


@pytest.mark.slow  # starts Nextflow
def test_the_work_folder_is_the_work_bucket(inspected):
    """-profile awsbatch (googlebatch the same line) with --work_bucket: the run's work folder."""
    assert inspected["workDir"] == inspected["bucket"]


# ------------------------------------------------------------------------------------------------
# point 9: parameters, schema, plugin, versions


def _schema() -> dict:
    return json.loads((REPO / "nextflow_schema.json").read_text())


def _schema_params() -> set[str]:
    return {k for group in _schema()["$defs"].values() for k in group["properties"]}


@pytest.mark.slow  # starts Nextflow
def test_the_schema_lists_exactly_the_params_of_nextflow_config(config):
    params = set(config("")["params"])
    assert params == _schema_params(), (
        f"in nextflow.config only: {sorted(params - _schema_params())}; "
        f"in the schema only: {sorted(_schema_params() - params)}"
    )


@pytest.mark.slow  # starts Nextflow
def test_every_param_used_is_defined_and_no_profile_adds_one(config):
    used = set()
    for path in [*NF_FILES, REPO / "nextflow.config", *REPO.glob("conf/*.config")]:
        used |= set(re.findall(r"\bparams\.(\w+)", path.read_text()))
    defined = set(config("")["params"])
    assert used <= defined, sorted(used - defined)
    for profiles in PROFILES:
        assert set(config(profiles)["params"]) == defined, profiles


@pytest.mark.slow  # starts Nextflow
def test_parameters_are_validated_by_a_pinned_nf_schema(project):
    """The shipped config (not the offline copy, which has no plugins block) as Nextflow resolves it:
    nf-schema, at an exact version, is its one plugin; main.nf validates before the workflow runs."""
    shipped = project["root"] / "shipped"
    shutil.copytree(project["pipeline"], shipped)
    shutil.copy(REPO / "nextflow.config", shipped / "nextflow.config")
    plugins = resolved_config(shipped, "", project["home"])["plugins"]
    assert len(plugins) == 1 and re.fullmatch(r"nf-schema@\d+\.\d+\.\d+", plugins[0]), plugins
    main = (REPO / "main.nf").read_text()
    assert "include { validateParameters } from 'plugin/nf-schema'" in main
    assert main.index("validateParameters()") < main.index("SUBTOMO_EMBED()")


@pytest.mark.slow  # starts Nextflow
def test_the_expected_values_come_from_the_test_profiles_settings(config):
    """make_test_data.py --expected runs the one-machine commands with conf/test.config's params."""
    from make_test_data import TEST_CONFIG

    params = config("test")["params"]
    for key, value in TEST_CONFIG.items():
        node = params
        for part in key.split("__"):
            node = node[part]
        assert node == value, key


@pytest.mark.slow  # starts Nextflow
def test_the_default_params_pass_the_schema(config):
    """What validateParameters() checks first: the params as nextflow.config sets them, against
    nextflow_schema.json (the test profile's: tests/nextflow/test_nextflow.py)."""
    import jsonschema

    params = config("")["params"]
    # nf-schema leaves out params that evaluate to false (null, false, '') before validating
    given = {k: v for k, v in params.items() if v or v == 0 and v is not False}
    # without a profile the user gives the required paths (-params-file)
    given |= {k: "/data" for group in _schema()["$defs"].values() for k in group.get("required", [])}
    jsonschema.validate(given, _schema())
