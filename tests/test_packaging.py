"""The package as users install it: a wheel, installed into a fresh virtual environment away from the
source tree, runs `subtomo-embed demo` with the config and model it ships (package data)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "src" / "subtomo_embed" / "data"
SHIPPED = {
    "subtomo_embed/data/configs/demo.yaml": DATA / "configs" / "demo.yaml",
    "subtomo_embed/data/models/demo_simsiam.ckpt": DATA / "models" / "demo_simsiam.ckpt",
    "subtomo_embed/data/structures.json": DATA / "structures.json",  # the model card's training / held-out lists
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (the checkout gets no build/ or egg-info)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(root),
            str(source),
        ],
        check=True,
        cwd=root,
    )
    (built,) = root.glob("subtomo_embed-*.whl")
    return built


def test_the_wheel_ships_the_demo_config_and_model(wheel):
    with zipfile.ZipFile(wheel) as archive:
        for name, original in SHIPPED.items():
            assert archive.read(name) == original.read_bytes(), name


def test_the_top_level_demo_paths_are_the_package_data():
    for link in ("configs/demo.yaml", "models/demo_simsiam.ckpt"):  # docs, the Makefile and tests name these
        assert (REPO / link).resolve() == (DATA / link).resolve(), link


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel; its dependencies come from the project's venv through a .pth
    file (appended to sys.path, after the venv's own site-packages: no copy, no download)."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
    )
    return venv


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/bin:/bin"
    return env


def test_the_installed_package_is_the_wheel_not_the_checkout(installed, tmp_path):
    proc = subprocess.run(
        [str(installed / "bin" / "python"), "-c", "import subtomo_embed; print(subtomo_embed.__file__)"],
        cwd=tmp_path,
        env=clean_env(),
        check=True,
        capture_output=True,
        text=True,
    )
    assert Path(proc.stdout.strip()).is_relative_to(installed)


@pytest.mark.slow
def test_a_wheel_install_runs_the_demo_away_from_the_source_tree(installed, tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            str(installed / "bin" / "subtomo-embed"),
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
        ],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    shipped_model = next(installed.glob("lib/python3*/site-packages/subtomo_embed/data/models/demo_simsiam.ckpt"))
    assert f"(model: {shipped_model})" in proc.stdout
    scores = pd.read_csv(out / "ari.csv").set_index(["dataset", "method"])
    # two difficulties x (trained model, untrained network, radial descriptor, spherical-harmonic descriptor)
    assert len(scores) == 8
    easy = scores.loc["SNR 3, no wedge"]
    assert easy.loc["trained model", "kmeans_ari"] > easy.loc["untrained network", "kmeans_ari"]
    predictions = out / "easy" / "predictions"
    assert (predictions / "TS_01_embeds.h5").is_file() and (predictions / "kmeans_clusters.h5").is_file()
    assert list((predictions / "vis").glob("*umap*.png"))
