"""The pipeline under the real Nextflow runtime (`make nextflow`: io.nextflow:nextflow from Maven Central).

Everything here runs ``nextflow`` itself, in a copy of the pipeline that differs from the shipped one only
by the nf-schema lines (tests/nextflow/offline_copy.sh: the plugin registry is not reachable here); the
params are checked against nextflow_schema.json with jsonschema instead. One module-scoped copy holds the
test profile's tiny dataset, and the tests below run on it in order, as a user would:

1. ``-profile test,podman`` in the image `make test-containers` builds, killed with SIGKILL while EMBED
   runs, then ``-resume``: it finishes and its outputs equal the one-machine run of the same data;
2. ``-resume`` with nothing changed: every task CACHED (read from the trace file);
3. one tomogram changed: only its own tasks and MERGE onward run again; its EMBED, given too little
   memory on the first attempt (a test config), is OOM-killed (137), retried with more memory and half
   the batch size, and succeeds;
4. a corrupt tomogram (exit 4): the run ends at once, without a retry, with the tool's one-line error;
5. ``-stub-run`` and ``nextflow config`` for the profile combinations the docs give users.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import jsonschema
import mrcfile
import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "pipeline"))

import make_test_data  # noqa: E402
import nf_runtime  # noqa: E402
from tools import require_executable  # noqa: E402

import subtomo_embed  # noqa: E402

pytestmark = pytest.mark.slow

IMAGE = "localhost/subtomo-embed:test-cpu"
VENV_BIN = Path(sys.executable).parent
PER_TOMOGRAM = ("EXTRACT_PATCHES", "EMBED")
GPU_SELECTOR = "withLabel:^process_gpu$"  # the profiles' selector of GPU tasks (nextflow.config, gpu)
ALL_TOMOGRAMS = ("MERGE_EMBEDDINGS", "CLUSTER_KMEANS", "CLUSTER_SPECTRAL", "VISUALIZE")
# what podman needs on this kind of machine (runc, cgroupfs, bounded ulimits), for Nextflow's podman engine
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
netns = "none"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""
# the first EMBED attempt gets too little memory (podman --memory) and is OOM-killed: exit 137, retried
SMALL_FIRST_ATTEMPT = """\
process {
    withName: 'EMBED' {
        memory = { task.attempt == 1 ? 150.MB : 4.GB }
    }
}
"""


@pytest.fixture(scope="module")
def nextflow() -> Path:
    return nf_runtime.require_nextflow()


@pytest.fixture(scope="module")
def project(tmp_path_factory, nextflow) -> Path:
    """The offline copy of the pipeline, with the test profile's data in test_data/."""
    root = tmp_path_factory.mktemp("nextflow")
    root.chmod(0o755)
    copy = nf_runtime.offline_copy(root / "pipeline")
    subprocess.run(
        [sys.executable, str(REPO / "tests" / "pipeline" / "make_test_data.py"), str(copy / "test_data")],
        check=True,
        capture_output=True,
    )
    (root / "containers.conf").write_text(CONTAINERS_CONF)
    (root / "small_first_attempt.config").write_text(SMALL_FIRST_ATTEMPT)
    return copy


def environment(project: Path) -> dict:
    """Nextflow offline (nf_runtime), podman configured for this machine, the venv's executables first."""
    env = nf_runtime.environment(project.parent / "nxf_home")
    env["CONTAINERS_CONF"] = str(project.parent / "containers.conf")
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def command(project: Path, *args: str, run: str) -> list[str]:
    """``nextflow run`` with the trace/report/timeline named after ``run``."""
    return [str(nf_runtime.NEXTFLOW), "run", ".", "--trace_report_suffix", run, *args]


def nextflow_run(project: Path, *args: str, run: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(project, *args, run=run),
        cwd=project,
        env=environment(project),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def trace(results: Path, run: str) -> list[dict]:
    with open(results / "pipeline_info" / f"execution_trace_{run}.txt", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def statuses(rows: list[dict]) -> dict[str, list[str]]:
    """``'EMBED (TS_01)'`` -> its statuses, in the order the attempts ran."""
    out: dict[str, list[str]] = {}
    for row in sorted(rows, key=lambda r: int(r["task_id"])):
        out.setdefault(row["name"].split(":")[-1], []).append(row["status"])
    return out


def published(results: Path) -> list[str]:
    return sorted(n for n in make_test_data.published(results) if not n.startswith("pipeline_info/"))


def running_task(work: Path, script_word: str) -> Path | None:
    for begin in work.glob("*/*/.command.begin"):
        task = begin.parent
        if script_word in (task / ".command.sh").read_text() and not (task / ".exitcode").exists():
            return task
    return None


def finished_task(work: Path, script_word: str) -> Path | None:
    """A task whose script holds ``script_word`` and that exited 0."""
    for exitcode in work.glob("*/*/.exitcode"):
        task = exitcode.parent
        if script_word in (task / ".command.sh").read_text() and exitcode.read_text().strip() == "0":
            return task
    return None


def wait_for_task(run: subprocess.Popen, find: Callable[[], Path | None], what: str, timeout: float = 600) -> Path:
    """The task folder ``find()`` names, polled while the run goes on; fails with the run's output when the
    run ends (or ``timeout`` passes) without one."""
    deadline = time.monotonic() + timeout
    task = find()
    while task is None and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.3)
        task = find()
    if task is None:
        output = run.communicate(timeout=60)[0][-4000:] if run.poll() is not None else "(still running)"
        pytest.fail(f"{what} never appeared within {timeout:.0f} s:\n{output}")
    return task


def stop_orphan_containers() -> None:
    """Task containers a killed Nextflow left running (they are named nxf-<hash>)."""
    podman = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
    ids = subprocess.run([*podman, "ps", "-q", "--filter", "name=nxf-"], capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run([*podman, "rm", "-f", *ids], capture_output=True)


@pytest.fixture(scope="module")
def image() -> str:
    require_executable("podman")
    proc = subprocess.run(
        ["bash", str(REPO / "containers" / "build_test_image.sh"), IMAGE], capture_output=True, text=True
    )
    assert proc.returncode == 0, f"building {IMAGE} failed:\n{proc.stderr[-4000:]}"
    return IMAGE


@pytest.fixture(scope="module")
def expected(project: Path) -> dict:
    """What `subtomo-embed predict, kmeans, spectral, visualize` make of the same data on one machine."""
    os.environ["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    root = project / "test_data"
    return make_test_data.one_machine_run(root, "expected", ["predict", "kmeans", "spectral", "visualize"])


# ------------------------------------------------------------------------------------------------
# the copy and the schema


def test_the_offline_copy_differs_only_by_the_nf_schema_lines(project):
    removed = []
    for name in ("main.nf", "nextflow.config"):
        shipped = (REPO / name).read_text().splitlines()
        copied = (project / name).read_text().splitlines()
        for line in difflib.ndiff(shipped, copied):
            assert not line.startswith("+ "), f"{name}: the copy adds {line!r}"
            if line.startswith("- "):
                removed.append(line[2:].strip())
    assert removed == [
        "include { validateParameters } from 'plugin/nf-schema'",
        "validateParameters()",
        "plugins {",
        "id 'nf-schema@2.3.0'",
        "}",
    ]
    for folder in ("conf", "modules", "workflows", "bin"):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                assert (project / path.relative_to(REPO)).read_bytes() == path.read_bytes(), path


def resolved_config(project: Path, profiles: str) -> dict:
    return nf_runtime.resolved_config(project, profiles, project.parent / "nxf_home")


def schema_errors(params: dict) -> list[str]:
    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(params)]


def test_the_resolved_params_pass_the_schema_and_a_bad_value_does_not(project):
    params = resolved_config(project, "test")["params"]
    assert schema_errors(params) == []
    assert any("masking_type" in e for e in schema_errors({**params, "masking_type": 5}))


@pytest.mark.parametrize("value", ["12", 12])
def test_whole_numbers_given_as_strings_pass_the_schema(project, value):
    """Nextflow >= 26.04 leaves `--min_particle_size 12` a string when the default is null (issue 26, 1):
    the schema takes digits, the workflow casts them (wholeNumber), negative or other text is refused."""
    params = resolved_config(project, "test")["params"]
    for key in ("min_particle_size", "max_particle_size", "centers_patch_size"):
        assert schema_errors({**params, key: value}) == []
        assert schema_errors({**params, key: "-5"}) != []
        assert schema_errors({**params, key: "twelve"}) != []


# ------------------------------------------------------------------------------------------------
# the real runs, in order


def test_killed_during_embed_then_resumed_equals_the_one_machine_run(project, image, expected):
    results = project / "test_data" / "results"
    shutil.rmtree(results, ignore_errors=True)
    args = ("-profile", "test,podman", "--container_cpu", image)
    first = subprocess.Popen(
        command(project, *args, run="killed"),
        cwd=project,
        env=environment(project),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for_task(first, lambda: running_task(project / "work", "subtomo-embed-patches"), "a running EMBED")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
        stop_orphan_containers()
    assert first.returncode == -signal.SIGKILL

    resumed = nextflow_run(project, *args, "-resume", run="resumed")
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    assert "subtomo-embed: done; results in" in resumed.stdout

    # the one-machine run's files, its CSV and STAR files byte for byte, its embeddings and labels
    assert published(results) == expected["files"]
    assert not list(results.rglob("*_config.yaml"))  # a task's resolved config names its staging folders
    for name, digest in expected["md5"].items():
        assert make_test_data.md5(results / name) == digest, name
    one_machine = project / "test_data" / "expected"
    for name in expected["files"]:
        if name.endswith(".h5"):
            with h5py.File(results / name, "r") as got, h5py.File(one_machine / name, "r") as want:
                assert sorted(got) == sorted(want), name
                for key in want:
                    if not isinstance(want[key], h5py.Dataset):
                        continue
                    if np.issubdtype(want[key].dtype, np.floating):
                        np.testing.assert_allclose(got[key][()], want[key][()], rtol=1e-5, atol=1e-6, err_msg=name)
                    else:  # labels, names
                        np.testing.assert_array_equal(got[key][()], want[key][()], err_msg=name)
    versions = (results / "pipeline_info" / "software_versions.yml").read_text()
    assert {p for p in ("EXTRACT_PATCHES", "EMBED", *ALL_TOMOGRAMS) if f':{p}":' in versions} == {
        "EXTRACT_PATCHES",
        "EMBED",
        *ALL_TOMOGRAMS,
    }
    for report in (
        "execution_report_resumed.html",
        "execution_timeline_resumed.html",
        "execution_trace_resumed.txt",
        "pipeline_dag.html",
    ):
        assert (results / "pipeline_info" / report).stat().st_size > 0, report
    # every task of the test profile within its caps (2 cores, 6 GB), labels and retries included
    for row in trace(results, "resumed"):
        if row["status"] != "CACHED":
            assert int(row["cpus"]) <= 2 and row["memory"] in ("4 GB", "6 GB"), row


def test_resume_with_nothing_changed_runs_nothing(project, image):
    proc = nextflow_run(project, "-profile", "test,podman", "--container_cpu", image, "-resume", run="unchanged")
    assert proc.returncode == 0, proc.stdout[-4000:]
    seen = statuses(trace(project / "test_data" / "results", "unchanged"))
    assert len(seen) == 2 * len(PER_TOMOGRAM) + len(ALL_TOMOGRAMS)
    assert all(s == ["CACHED"] for s in seen.values()), seen


def test_one_changed_tomogram_reruns_its_tasks_and_merge_onward_and_oom_is_retried_with_more(project, image):
    tomogram = project / "test_data" / "data" / "TS_02.mrc"
    with mrcfile.open(tomogram, mode="r+") as mrc:
        mrc.data[...] = mrc.data * np.float32(1.01)
    config = project.parent / "small_first_attempt.config"
    proc = nextflow_run(
        project, "-profile", "test,podman", "--container_cpu", image, "-c", str(config), "-resume", run="changed"
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    rows = trace(project / "test_data" / "results", "changed")
    seen = statuses(rows)
    assert seen["EXTRACT_PATCHES (TS_01)"] == ["CACHED"] and seen["EMBED (TS_01)"] == ["CACHED"]
    assert seen["EXTRACT_PATCHES (TS_02)"] == ["COMPLETED"]
    assert seen["EMBED (TS_02)"] == ["FAILED", "COMPLETED"], seen
    for name in ALL_TOMOGRAMS:
        assert seen[f"{name} (all tomograms)"] == ["COMPLETED"], name
    attempts = [r for r in rows if r["name"].endswith("EMBED (TS_02)")]
    assert [r["exit"] for r in attempts] == ["137", "0"]
    assert [r["memory"] for r in attempts] == ["150 MB", "4 GB"]
    work = project / "work"
    retried = work / attempts[1]["hash"].split("/")[0]
    run_script = next(retried.glob(f"{attempts[1]['hash'].split('/')[1]}*/.command.run")).read_text()
    assert "SUBTOMO_EMBED_BATCH_SIZE=2" in run_script  # the test profile's 4, halved on the retry


def test_a_corrupt_tomogram_ends_the_run_at_once_with_the_tools_message(project, image):
    data = project.parent / "bad_data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir()
    shutil.copy(project / "test_data" / "data" / "TS_01.mrc", data / "TS_01.mrc")
    (data / "TS_09.mrc").write_bytes(b"not an MRC file\n" * 100)
    masks = project.parent / "bad_masks"
    shutil.copytree(project / "test_data" / "masks", masks, dirs_exist_ok=True)
    shutil.copy(masks / "TS_02_instance_preds.h5", masks / "TS_09_instance_preds.h5")
    results = project.parent / "bad_results"
    proc = nextflow_run(
        project,
        "-profile",
        "test,podman",
        "--container_cpu",
        image,
        "--data_folder",
        str(data),
        "--instances_mask_folder",
        str(masks),
        "--prediction_folder",
        str(results),
        run="bad",
    )
    assert proc.returncode != 0
    error_lines = [
        line
        for line in proc.stdout.splitlines() + proc.stderr.splitlines()
        if "error: TS_09.mrc: " in line  # "input error: <file>: <problem>"
    ]
    assert error_lines, proc.stdout[-4000:]
    rows = [r for r in trace(results, "bad") if r["name"].endswith("(TS_09)")]
    assert [(r["status"], r["exit"]) for r in rows] == [("FAILED", "4")]  # not retried
    assert not (results / "embeddings.h5").exists()


def test_a_run_that_embeds_nothing_fails_with_a_message(project):
    """Picks that name no tomogram of data_folder: no task yields embeddings, and the run must not end
    'done' with nothing published (collect() of an empty channel emits nothing)."""
    picks = project.parent / "elsewhere.star"
    text = (project / "test_data" / "picks.star").read_text()
    picks.write_text(text.replace("TS_01", "TS_77").replace("TS_02", "TS_78"))
    results = project.parent / "nothing_results"
    proc = nextflow_run(
        project,
        "-profile",
        "test",
        "--picks",
        str(picks),
        "--centers_patch_size",
        "9",
        "--prediction_folder",
        str(results),
        run="nothing",
    )
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "subtomo-embed: done" not in proc.stdout
    said = proc.stdout + proc.stderr
    assert "no tomogram yielded embeddings" in said or "TS_77" in said or "no picks" in said, said[-3000:]
    assert not (results / "embeddings.h5").exists()


def test_train_passes_the_contrast_settings_on_to_fine_tuning(project):
    """--train true: TRAIN fine-tunes with the params file's contrast_weight, contrast_temperature,
    rehearsal_fraction and finetuned_share, none of them the default (the workflow's TRAIN key list once
    left the contrast keys out, so the pipeline fine-tuned with 0); the run is stopped once TRAIN has made
    its checkpoint."""
    import torch

    params = project.parent / "train_params.yaml"
    params.write_text(
        "train: true\n"
        "hyper_parameters: {batch_size: 4, max_steps: 2, contrast_weight: 0.25, contrast_temperature: 0.1,"
        " rehearsal_fraction: 0.2, finetuned_share: 0.75}\n"
    )
    results = project.parent / "train_results"
    proc = subprocess.Popen(
        command(
            project, "-profile", "test", "-params-file", str(params), "--prediction_folder", str(results), run="train"
        ),
        cwd=project,
        env=environment(project),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        task = wait_for_task(proc, lambda: finished_task(project / "work", "subtomo-train"), "a finished TRAIN")
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    assert "hyper_parameters.contrast_weight=0.25" in (task / ".command.sh").read_text()
    finetuned = torch.load(task / "finetuned.ckpt", map_location="cpu", weights_only=False)
    assert finetuned["weight_averaging"]["finetuned_share"] == 0.75  # averaged with the starting weights
    stored = finetuned["hyper_parameters"]["config"]
    assert stored["hyper_parameters"]["contrast_weight"] == 0.25
    assert stored["hyper_parameters"]["contrast_temperature"] == 0.1
    assert stored["hyper_parameters"]["rehearsal_fraction"] == 0.2


# ------------------------------------------------------------------------------------------------
# the profiles the docs give users


@pytest.mark.parametrize("profiles", ["test", "test,podman"])
def test_stub_run(project, profiles, image):
    results = project.parent / f"stub_{profiles.replace(',', '_')}"
    proc = nextflow_run(
        project,
        "-profile",
        profiles,
        "--container_cpu",
        image,
        "-stub-run",
        "--prediction_folder",
        str(results),
        run="stub",
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    seen = statuses(trace(results, "stub"))
    assert len(seen) == 2 * len(PER_TOMOGRAM) + len(ALL_TOMOGRAMS)
    assert all(s == ["COMPLETED"] for s in seen.values()), seen
    # every process that ran reports its version (its `eval` output), collected once by main.nf
    versions = yaml.safe_load((results / "pipeline_info" / "software_versions.yml").read_text())
    ran = {name.split(" (")[0] for name in seen}
    assert {name.split(":")[-1] for name in versions} == ran
    assert {v["subtomo-embed"] for v in versions.values()} == {subtomo_embed.__version__}


def test_documented_profile_combinations_resolve(project):
    slurm = resolved_config(project, "slurm,apptainer,gpu")
    assert slurm["process"]["executor"] == "slurm" and slurm["apptainer"]["enabled"] is True
    gpu = slurm["process"][GPU_SELECTOR]
    # base.config's resources for the label survive the profiles (a same-text selector would replace them)
    assert {"cpus", "memory", "time"} <= set(slurm["process"]["withLabel:process_gpu"])
    assert gpu["accelerator"] == 1 and gpu["container"] == slurm["params"]["container_gpu"]
    assert gpu["maxForks"] == 0  # the gpu profile's one-at-a-time is for the local executor only
    assert "task.accelerator" in gpu["queue"]  # the GPU queue only for tasks given a GPU (issue 26, 7)
    assert slurm["process"]["resourceLimits"]["cpus"] == 16  # not capped by the head node

    aws = resolved_config(project, "awsbatch,gpu")
    assert aws["process"]["executor"] == "awsbatch"
    assert "task.accelerator" in aws["process"][GPU_SELECTOR]["queue"]
    google = resolved_config(project, "googlebatch,gpu")
    assert google["process"]["executor"] == "google-batch" and google["google"]["batch"]["installGpuDrivers"] is True
    docker = resolved_config(project, "docker")
    assert docker["docker"]["enabled"] is True and "id -u" in docker["docker"]["runOptions"]
    podman = resolved_config(project, "podman,gpu")
    assert podman["podman"]["enabled"] is True and podman["process"][GPU_SELECTOR]["maxForks"] == 1
    # a workstation (the local executor): without --max_cpus every request is capped by this machine's cores
    assert docker["process"]["resourceLimits"]["cpus"] == os.cpu_count()
    test = resolved_config(project, "test")
    assert test["process"]["resourceLimits"] == {"cpus": 2, "memory": "6.GB", "time": "1.h"}


def test_the_release_workflow_checks_out_the_default_branch_before_it_edits_and_refuses_a_wrong_tag():
    """Editing nextflow.config on the tag's checkout, then checking out the default branch, fails or loses the edit;
    a tag that is not pyproject.toml's version would publish images under the wrong name."""
    release = (REPO / ".github" / "workflows" / "release.yml").read_text()
    checkout = release.index('git checkout "${{ github.event.repository.default_branch }}"')
    assert checkout < release.index("sed -i")
    assert "tomllib.load(open('pyproject.toml', 'rb'))['project']['version']" in release
    assert release.index("['project']['version']") < release.index("Build and push the CPU image")
