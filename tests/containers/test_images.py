"""The CPU image, built here with podman (containers/build_test_image.sh, as `make test-containers` does),
running the pipeline the way Nextflow starts containers.

Every process's ``script:`` block is rendered from its module with the values tests/pipeline uses and
run in the image as a task: ``bash -euo pipefail .command.sh`` in the task folder, bind-mounted at
its own path, with the inputs staged as symlinks into a folder that is mounted too, under a uid the
image does not know and an unwritable HOME. Two ways of starting it:

* Docker's (``docker.runOptions = '-u $(id -u):$(id -g)'``): ``-u 1000:1000``, HOME=/;
* Apptainer's (``--no-home``, a cleared environment, a read-only image): ``--read-only``, only the image's
  environment and the whitelisted variables, HOME a folder that does not exist, the host's /tmp bound.

The whole flow (extract -> embed -> merge -> kmeans -> spectral -> visualize, predict-centers, and train
on picks) runs both ways and in the venv (tests/pipeline's ``run_block``), and every output must equal the venv's.
``subtomo-embed demo`` (which ends with visualize) runs in the image as uid 1000 with a read-only root.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import starfile

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "pipeline"))

import test_pipeline as pipeline  # noqa: E402  (block, render, script_values, stage, run_block)
from tools import require_executable  # noqa: E402

pytestmark = pytest.mark.slow

IMAGE = "localhost/subtomo-embed:test-cpu"
CUDA_IMAGE = "localhost/subtomo-embed:test-cuda"
BASE_IMAGE = "localhost/subtomo-embed-base:bookworm"  # build_test_image.sh's default
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
RUN = [*PODMAN, "run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
TASK_UID = 1000  # when the tests run as root; otherwise the user's own uid (rootless podman, keep-id)
Runner = Callable[[str, Path, dict, dict], None]


def build_image(tag: str, flavour: str) -> str:
    """containers/build_test_image.sh TAG FLAVOUR (cpu: Dockerfile.cpu, cuda: Dockerfile.cuda); prints the size."""
    require_executable("podman")
    if subprocess.run([*PODMAN, "image", "exists", BASE_IMAGE]).returncode != 0:
        require_executable("mmdebstrap")  # the script makes the Debian base with it
    proc = subprocess.run(
        ["bash", str(REPO / "containers" / "build_test_image.sh"), tag, flavour], capture_output=True, text=True
    )
    assert proc.returncode == 0, f"building {tag} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    print(proc.stderr.strip(), file=sys.stderr)
    return tag


@pytest.fixture(scope="session")
def image() -> str:
    return build_image(IMAGE, "cpu")


@pytest.fixture(scope="session")
def cuda_image() -> str:
    return build_image(CUDA_IMAGE, "cuda")


@pytest.fixture(scope="module")
def top(tmp_path_factory) -> Path:
    """The test root, mounted at its own path in every container: the inputs and one folder per run."""
    from synthetic import make_checkpoint, make_dataset, write_picks

    top = tmp_path_factory.mktemp("images")
    top.chmod(0o755)
    inputs = top / "inputs"
    data, masks = make_dataset(inputs, n_tomograms=2, n_instances=10)
    make_checkpoint(inputs / "model.ckpt")
    write_picks(inputs / "particles.star", masks)
    return top


# ------------------------------------------------------------------------------------------------
# the flow, run by any runner


def run_flow(top: Path, name: str, run: Runner) -> dict[str, Path]:
    """Every process in the workflow's order, each task on the previous ones' outputs, staged as the
    workflow stages them (tests/pipeline's ``chain``, plus PREDICT_CENTERS); returns the task folders."""
    inputs = top / "inputs"
    data, masks, ckpt, picks = inputs / "data", inputs / "masks", inputs / "model.ckpt", inputs / "particles.star"
    root = top / name
    root.mkdir()
    tasks: dict[str, Path] = {}

    def task(label: str) -> Path:
        folder = tasks[label] = root / label
        folder.mkdir()
        return folder

    for stem in pipeline.STEMS:
        w = task(f"extract_{stem}")
        pipeline.stage(w, data / f"{stem}.mrc", masks / f"{stem}_instance_preds.h5")
        run(
            "EXTRACT_PATCHES",
            w,
            pipeline.script_values(
                "EXTRACT_PATCHES", meta_id=stem, tomogram=f"{stem}.mrc", mask=f"{stem}_instance_preds.h5"
            ),
            {},
        )
        e = task(f"embed_{stem}")
        pipeline.stage(e, w / f"{stem}_patches.h5", ckpt)
        run(
            "EMBED",
            e,
            pipeline.script_values("EMBED", meta_id=stem, patches=f"{stem}_patches.h5"),
            pipeline.TASK_ENVIRONMENT,
        )
    m = task("MERGE_EMBEDDINGS")
    per_tomogram = sorted(
        (
            tasks[f"embed_{s}"] / f"{s}{suffix}"
            for s in pipeline.STEMS
            for suffix in ("_embeds.h5", "_instance_labels.h5", "_instance_regions.csv")
        ),
        key=lambda f: f.name,
    )
    pipeline.stage(m, *per_tomogram, into="per_tomogram")
    run("MERGE_EMBEDDINGS", m, pipeline.script_values("MERGE_EMBEDDINGS"), {})
    for process in ("CLUSTER_KMEANS", "CLUSTER_SPECTRAL", "VISUALIZE"):
        a = task(process)
        pipeline.stage(a, m / "embeddings.h5", m / "embeddings_table.csv")
        pipeline.stage(a, *[data / f"{s}.mrc" for s in pipeline.STEMS], into="data")
        pipeline.stage(a, *[masks / f"{s}_instance_preds.h5" for s in pipeline.STEMS], into="masks")
        if process.startswith("CLUSTER"):
            pipeline.stage(a, *[tasks[f"embed_{s}"] / f"{s}_instance_regions.star" for s in pipeline.STEMS])
        else:
            pipeline.stage(
                a,
                tasks["CLUSTER_KMEANS"] / "out" / "kmeans_clusters.h5",
                tasks["CLUSTER_SPECTRAL"] / "out" / "spectral_clusters.h5",
            )
        run(process, a, pipeline.script_values(process), {})
    p = task("PREDICT_CENTERS")
    pipeline.stage(p, data / "TS_02.mrc", ckpt)
    pipeline.stage(p, picks, into="picks")
    run(
        "PREDICT_CENTERS",
        p,
        pipeline.script_values("PREDICT_CENTERS", meta_id="TS_02", tomogram="TS_02.mrc", picks_name=picks.name),
        pipeline.TASK_ENVIRONMENT,
    )
    t = task("TRAIN")  # with params.train and params.picks: fine-tuning on the picks' boxes
    pipeline.stage(t, *[data / f"{s}.mrc" for s in pipeline.STEMS], into="data")
    pipeline.stage(t, picks, into="picks")
    pipeline.stage(t, ckpt, into="start")
    run("TRAIN", t, pipeline.script_values("TRAIN", settings=pipeline.flags(pipeline.settings("TRAIN_ON_PICKS"))), {})
    return tasks


def venv_runner(process: str, workdir: Path, values: dict, env: dict) -> None:
    pipeline.run_block(process, "script", workdir, values, env=env)


def user_options() -> list[str]:
    if os.geteuid() == 0:
        return ["-u", f"{TASK_UID}:{TASK_UID}"]
    return ["--userns=keep-id", "-u", f"{os.getuid()}:{os.getgid()}"]


def give_to_task_user(folder: Path) -> None:
    """As root, the task folder becomes the task user's, as Nextflow's work dir is the user's own."""
    if os.geteuid() == 0:
        for path in (folder, *folder.rglob("*")):
            os.lchown(path, TASK_UID, TASK_UID)


def container_command(image: str, top: Path, workdir: Path, env: dict, apptainer: bool) -> list[str]:
    """``podman run`` as Nextflow's docker executor starts a task, or as its apptainer one does."""
    command = [*RUN, *user_options(), "-v", f"{top}:{top}", "-w", str(workdir)]
    if apptainer:  # --no-home, --cleanenv (the image's own environment stays), read-only SIF, host /tmp bound
        command += ["--read-only", "-e", "HOME=/home/nextflow-user", "-v", f"{top / 'host-tmp'}:/tmp"]
    for key, value in env.items():  # envWhitelist
        command += ["-e", f"{key}={value}"]
    return [*command, image]


def container_runner(image: str, top: Path, apptainer: bool) -> Runner:
    def run(process: str, workdir: Path, values: dict, env: dict) -> None:
        script = pipeline.render(pipeline.block(process, "script"), values)
        (workdir / ".command.sh").write_text(script)
        give_to_task_user(workdir)
        command = [*container_command(image, top, workdir, env, apptainer), "bash", "-euo", "pipefail", ".command.sh"]
        proc = subprocess.run(command, capture_output=True, text=True)
        assert proc.returncode == 0, (
            f"{process} failed in {image}:\n{' '.join(command)}\n{script}\n{proc.stderr[-3000:]}"
        )

    return run


def assert_home_is_not_writable(image: str, top: Path, apptainer: bool) -> None:
    probe = [*container_command(image, top, top, {}, apptainer), "bash", "-c", 'touch "$HOME/.probe"']
    assert subprocess.run(probe, capture_output=True).returncode != 0, "HOME is writable in the container"


@pytest.fixture(scope="module")
def venv_flow(top) -> dict[str, Path]:
    return run_flow(top, "venv", venv_runner)


@pytest.fixture(scope="module")
def docker_flow(image, top) -> dict[str, Path]:
    assert_home_is_not_writable(image, top, apptainer=False)
    return run_flow(top, "docker", container_runner(image, top, apptainer=False))


@pytest.fixture(scope="module")
def apptainer_flow(image, top) -> dict[str, Path]:
    host_tmp = top / "host-tmp"
    host_tmp.mkdir()
    host_tmp.chmod(0o1777)
    assert_home_is_not_writable(image, top, apptainer=True)
    return run_flow(top, "apptainer", container_runner(image, top, apptainer=True))


# ------------------------------------------------------------------------------------------------
# outputs equal the venv's


def files_of(task: Path) -> set[str]:
    return {str(p.relative_to(task)) for p in task.rglob("*") if not p.is_dir() and p.name != ".command.sh"}


def assert_same_tables(a: pd.DataFrame, b: pd.DataFrame, roots: tuple[Path, Path], where: str) -> None:
    """Equal within float tolerance, once each run's own folder is written as <run> (paths in the tables)."""
    a, b = (t.replace(re.escape(str(r)), "<run>", regex=True) for t, r in ((a, roots[0]), (b, roots[1])))
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, atol=1e-5, obj=where)


def assert_same_h5(a: Path, b: Path, where: str) -> None:
    with h5py.File(a) as fa, h5py.File(b) as fb:
        names_a, names_b = [], []
        fa.visit(names_a.append)
        fb.visit(names_b.append)
        assert names_a == names_b, where
        for name in names_a:
            if isinstance(fa[name], h5py.Dataset):
                x, y = fa[name][()], fb[name][()]
                if np.issubdtype(np.asarray(x).dtype, np.floating):
                    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5, err_msg=f"{where}:{name}")
                else:
                    np.testing.assert_array_equal(x, y, err_msg=f"{where}:{name}")


def assert_same_checkpoints(a: Path, b: Path, where: str) -> None:
    """The same training steps on the same weights: equal step counts and weights within float tolerance."""
    from subtomo_embed.core.model import read_checkpoint

    ca, cb = read_checkpoint(a), read_checkpoint(b)
    assert ca["global_step"] == cb["global_step"], where
    assert ca["state_dict"].keys() == cb["state_dict"].keys(), where
    for key, x in ca["state_dict"].items():
        np.testing.assert_allclose(
            x.numpy(), cb["state_dict"][key].numpy(), rtol=1e-4, atol=1e-5, err_msg=f"{where}:{key}"
        )


def assert_same_outputs(venv: dict[str, Path], other: dict[str, Path]) -> None:
    assert venv.keys() == other.keys()
    roots = (next(iter(venv.values())).parent, next(iter(other.values())).parent)
    for label, task in venv.items():
        names = files_of(task)
        assert names == files_of(other[label]), label
        for name in sorted(names):
            a, b, where = task / name, other[label] / name, f"{label}/{name}"
            if a.is_symlink():  # a staged input
                continue
            if a.suffix == ".h5":
                assert_same_h5(a, b, where)
            elif a.suffix == ".csv":
                assert_same_tables(pd.read_csv(a), pd.read_csv(b), roots, where)
            elif a.suffix == ".star":
                sa, sb = starfile.read(a, always_dict=True), starfile.read(b, always_dict=True)
                assert sa.keys() == sb.keys(), where
                for block in sa:
                    assert_same_tables(sa[block], sb[block], roots, f"{where}:{block}")
            elif a.suffix == ".ckpt":
                assert_same_checkpoints(a, b, where)
            elif name.endswith("_config.yaml"):  # the resolved config a step keeps: it names its own folders
                assert a.read_text().replace(str(roots[0]), str(roots[1])) == b.read_text(), where
            elif a.suffix in (".yml", ".yaml", ".txt"):
                assert a.read_text() == b.read_text(), where


def test_the_image_holds_the_checkout_s_package(image):
    """Every file of the package in the image is the checkout's (a stale build cache would not be)."""
    site = "/opt/venv/lib/python3.11/site-packages"
    listing = subprocess.run(
        [
            *RUN,
            "-w",
            site,
            image,
            "bash",
            "-c",
            "find subtomo_embed -type f ! -name '*.pyc' ! -path '*__pycache__*' -exec md5sum {} +",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    in_image = {name: digest for digest, name in (line.split() for line in listing.stdout.splitlines())}
    checkout = {
        str(f.relative_to(REPO / "src")): hashlib.md5(f.read_bytes()).hexdigest()
        for f in (REPO / "src" / "subtomo_embed").rglob("*")
        if f.is_file() and f.suffix != ".pyc"
    }
    assert in_image == checkout


def test_the_flow_in_the_image_started_as_docker_does_equals_the_venv_run(venv_flow, docker_flow):
    assert_same_outputs(venv_flow, docker_flow)
    assert list((docker_flow["VISUALIZE"] / "vis").glob("*umap*.png"))  # umap (numba) ran


def test_the_flow_in_the_image_started_as_apptainer_does_equals_the_venv_run(venv_flow, apptainer_flow):
    assert_same_outputs(venv_flow, apptainer_flow)
    assert list((apptainer_flow["VISUALIZE"] / "vis").glob("*umap*.png"))


def test_the_image_has_ps_no_compiler_and_nothing_of_its_build(image):
    """ps for Nextflow's task metrics; the build-time mount (/mnt) and the sources left nothing behind."""
    check = (
        'command -v ps && ! command -v cc && ! command -v gcc && test "$(id -u)" = 1000 '
        '&& test -z "$(ls -A /mnt)" && test -z "$(ls -A /tmp)" && test ! -e /src'
    )
    proc = subprocess.run([*RUN, image, "bash", "-c", check], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_demo_runs_in_the_image_as_another_user_on_a_read_only_root(image, top):
    run_demo(image, top / "demo")


def test_the_cuda_image_runs_the_demo_on_the_cpu_as_another_user_on_a_read_only_root(cuda_image, top):
    """Dockerfile.cuda, built here (PyPI's torch is the CUDA build): its CPU path, as a node without a GPU runs it."""
    check = "python -c 'import torch; assert torch.version.cuda, torch.__version__; print(torch.__version__)'"
    proc = subprocess.run([*RUN, cuda_image, "bash", "-c", check], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_demo(cuda_image, top / "demo_cuda")


def run_demo(image: str, out: Path) -> None:
    out.mkdir()
    give_to_task_user(out)
    command = [
        *RUN,
        *user_options(),
        "--read-only",
        "-v",
        f"{out}:{out}",
        "-w",
        str(out),
        image,
        "subtomo-embed",
        "demo",
        "--output",
        "demo",
        "--device",
        "cpu",
        "--tomograms",
        "1",
        "--particles",
        "25",
        "--shape",
        "48",
        "112",
        "112",
    ]
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(model: /opt/venv/lib/python3.11/site-packages/subtomo_embed/data/models/demo_simsiam.ckpt)" in proc.stdout
    scores = pd.read_csv(out / "demo" / "ari.csv")
    assert len(scores) == 8  # two difficulties x four methods
    vis = out / "demo" / "easy" / "predictions" / "vis"
    assert list(vis.glob("*umap*.png")) and list(vis.glob("kmeans_cluster_*_gallery.png"))
