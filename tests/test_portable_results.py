"""Results a biologist can move and trust (issue 29): a copied or moved results folder keeps its
clusters; one projection of the merged set serves every figure and the explorer; the projection
cache's values never become paths of their own."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from real_run import run_cli
from test_explorer import decode, page_data_of

from subtomo_embed.core import layout


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Embeddings of 210 instances in three tomograms (their volumes too); kmeans (k=3) and spectral
    (k=2) with their figures on a 100-point plot subsample; visualize."""
    from conftest_analysis import make_prediction_folder
    from synthetic import write_config

    root = tmp_path_factory.mktemp("portable") / "project"
    out = root / "out"
    make_prediction_folder(out, counts=(60, 80, 70), volumes=root / "volumes")
    config = write_config(
        root / "config.yaml",
        data_folder=root / "volumes" / "tomograms",
        instances_mask_folder=root / "volumes" / "masks",
        prediction_folder=out,
        log_dir=root / "logs",
        clustering_kmeans__visualization=True,
        clustering_spectral__num_clusters=2,
        clustering_spectral__visualization=True,
        visualization__max_plot_points=100,
    )
    for command in ("kmeans", "spectral", "visualize"):
        run_cli(command, "--config_file", config)
    return {"root": root, "out": out, "config": config}


def copy_results(run: dict, where: Path, new_times: bool = True) -> dict:
    """The whole project copied as ``cp -r`` or ``rsync`` without ``-t`` leave it: every file with a new
    modification time (``new_times``, else as ``cp -a``); the config's paths point into the copy."""
    root = where / "copied"
    shutil.copytree(run["root"], root, symlinks=True)
    later = time.time() + 3600
    for folder, _, files in os.walk(root):
        for name in files:
            if new_times:
                os.utime(Path(folder) / name, (later, later))
    config = root / "config.yaml"
    config.write_text(config.read_text().replace(str(run["root"]), str(root)))
    return {"root": root, "out": root / "out", "config": config}


def colourings(out: Path) -> list[str]:
    data = page_data_of((out / "vis" / layout.EXPLORER_NAME).read_text(encoding="utf-8"))
    return [c["name"] for c in data["colourings"]]


def test_a_copied_results_folder_keeps_its_clusters(run, tmp_path):
    copy = copy_results(run, tmp_path)
    merged = copy["out"] / "embeddings.h5"
    before = merged.read_bytes()
    output = run_cli("visualize", "--config_file", copy["config"])
    assert "rebuilding" not in output  # the merge is current: same contents
    assert merged.read_bytes() == before
    assert colourings(copy["out"]) == ["KMeans cluster", "Spectral cluster", "tomogram", "instance size"]
    table = pd.read_csv(copy["out"] / "vis" / "all_tomograms_umap.csv")
    assert {"kmeans_cluster", "spectral_cluster"} <= set(table.columns)

    # the records of outputs name files relative to their folder, so a re-run in the copy cleans the copy
    record = json.loads((copy["out"] / ".kmeans_outputs.json").read_text())
    assert record and not [n for n in record if os.path.isabs(n)]
    assert (copy["out"] / "kmeans_cluster_2_particles.star").is_file()
    run_cli("kmeans", "--config_file", copy["config"], "--set", "clustering_kmeans.num_clusters=2")
    assert not (copy["out"] / "kmeans_cluster_2_particles.star").exists()
    assert not (copy["out"] / "vis" / "kmeans_cluster_2_gallery.png").exists()
    assert (run["out"] / "kmeans_cluster_2_particles.star").is_file()  # the original is left alone


def test_clusters_of_other_embeddings_are_said_stale_once_with_the_command(run, tmp_path):
    copy = copy_results(run, tmp_path)
    embeds = copy["out"] / "TS_01_embeds.h5"
    with h5py.File(embeds, "r+") as f:
        f["embeddings"][...] = f["embeddings"][()] * 2.0  # re-embedded: other contents, same size
    output = run_cli("visualize", "--config_file", copy["config"])
    assert "rebuilding" in output
    for step in ("kmeans", "spectral"):
        assert output.count(f"refresh it with: subtomo-embed {step} --config_file {copy['config']}") == 1, output
    assert colourings(copy["out"]) == ["tomogram", "instance size"]


def test_the_same_particle_has_the_same_coordinates_in_every_figure_and_the_explorer(run):
    vis = run["out"] / "vis"
    everything = pd.read_csv(vis / "all_tomograms_umap.csv").set_index("row")[["x", "y"]]
    n = len(everything)
    assert n > 100  # more than the plot subsample: the clustering figures drew a subsample of one map
    for method in ("kmeans", "spectral"):
        figure = pd.read_csv(vis / f"{method}_clusters_umap.csv").set_index("row")[["x", "y"]]
        assert len(figure) == n
        np.testing.assert_array_equal(figure.loc[everything.index].to_numpy(), everything.to_numpy())
    data = page_data_of((vis / layout.EXPLORER_NAME).read_text(encoding="utf-8"))
    page = np.c_[[decode(c, "<f4") for c in data["projections"][0]["coords"]]].T
    np.testing.assert_array_equal(page, everything.loc[data["row"]].to_numpy(np.float32))


def test_a_projection_cache_method_is_never_a_path(run, tmp_path):
    """Issue 31 class 1: the cache's ``method`` attribute named output files; a ``../`` value wrote outside
    (a results folder from elsewhere can hold any cache, and any folder the path needs)."""
    copy = copy_results(run, tmp_path, new_times=False)  # a cache that is current in every other way
    caches = sorted(copy["out"].rglob(".projection_*.h5"))
    assert caches
    for cache in caches:
        with h5py.File(cache, "r+") as f:
            f.attrs["method"] = "x/../../../escaped"
    (copy["out"] / "vis" / "all_tomograms_x").mkdir()
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    run_cli("visualize", "--config_file", copy["config"])
    new = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    outside = [p for p in new if not p.is_relative_to(copy["out"])]
    assert not outside and not [p for p in new if "escaped" in p.name]
    assert (copy["out"] / "vis" / "all_tomograms_umap.csv").is_file()
    for cache in caches:
        with h5py.File(cache, "r") as f:
            assert f.attrs["method"] == "umap"  # recomputed and rewritten


def test_the_explorer_can_be_thinned(run, tmp_path):
    """visualization.explorer_max_points: a stratified sample of every tomogram and cluster, same coordinates."""
    vis = tmp_path / "thin"
    run_cli(
        "visualize", "--config_file", run["config"], "--vis-dir", vis, "--set", "visualization.explorer_max_points=100"
    )
    data = page_data_of((vis / layout.EXPLORER_NAME).read_text(encoding="utf-8"))
    rows = np.array(data["row"])
    assert 90 <= data["n"] <= 110 and rows.tolist() == sorted(set(rows.tolist()))
    assert data["tomograms"] == ["TS_00", "TS_01", "TS_02"]
    everything = pd.read_csv(run["out"] / "vis" / "all_tomograms_umap.csv").set_index("row")[["x", "y"]]
    page = np.c_[[decode(c, "<f4") for c in data["projections"][0]["coords"]]].T
    np.testing.assert_array_equal(page, everything.loc[rows].to_numpy(np.float32))
