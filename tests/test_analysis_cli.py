"""The global steps on real files: the commands in this process, the bin/ executables as processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import yaml
from conftest_analysis import make_prediction_folder
from inprocess import run_cli
from sklearn.metrics import adjusted_rand_score

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "bin"
COUNTS = (60, 80, 70)
REGION_COLS = ["label", "area", *[f"bbox-{i}" for i in range(6)], "centroid-0", "centroid-1", "centroid-2", "hull_area"]


def run(tool: str, *args, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """A bin/ executable (``subtomo-cluster`` ...) as a process, or a command of ``subtomo-embed`` in this one."""
    if tool.startswith("subtomo-"):
        cmd = [sys.executable, str(BIN / tool), *map(str, args)]
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    else:
        proc = run_cli([tool, *args], cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def write_config(path: Path, **raw) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """merge -> visualize -> kmeans -> spectral on three tomograms with four known groups."""
    root = tmp_path_factory.mktemp("analysis")
    pred = root / "pred"
    truth = make_prediction_folder(pred, counts=COUNTS, dim=16, groups=4, volumes=root / "vol")
    cfg = write_config(
        root / "config.yaml",
        data_folder=str(root / "vol" / "tomograms"),
        instances_mask_folder=str(root / "vol" / "masks"),
        prediction_folder=str(pred),
        clustering_kmeans={"num_clusters": 4, "visualization": True},
        clustering_spectral={"num_clusters": 8, "estimate_num_clusters": True, "visualization": True},
        visualization={"prediction_folder": str(root / "vis"), "distance": "cosine", "3d_umap": True},
        parameters={"data": {"patch_size": [16, 16, 16]}},
    )
    run("subtomo-merge", "--config_file", cfg)  # one executable as a process; the steps' outputs are the point
    run("visualize", "--config_file", cfg)
    run("kmeans", "--config_file", cfg)
    run("spectral", "--config_file", cfg)
    return {"root": root, "pred": pred, "vis": root / "vis", "cfg": cfg, **truth}


@pytest.mark.slow  # shares the module's real merge/visualize/kmeans/spectral run (~35 s)
def test_merged_outputs(project):
    pred = project["pred"]
    with h5py.File(pred / "embeddings.h5") as f:
        assert f["embeddings"].shape == (sum(COUNTS), 16)
        assert f["number_of_samples"][()].tolist() == list(COUNTS)
    table = pd.read_csv(pred / "embeddings_table.csv")
    assert list(table.columns) == ["tomogram", "label", "row", *REGION_COLS[1:]]
    assert len(table) == sum(COUNTS)


@pytest.mark.slow  # shares the module's real merge/visualize/kmeans/spectral run (~35 s)
def test_kmeans_outputs(project):
    pred, truth = project["pred"], project["truth"]
    with h5py.File(pred / "kmeans_clusters.h5") as f:
        clusters = f["clusters"][()]
        assert f["centers"].shape == (4, 16)
    assert clusters.shape == (sum(COUNTS),) and set(np.unique(clusters)) == {0, 1, 2, 3}  # 0-based
    assert adjusted_rand_score(truth, clusters) >= 0.95
    start = 0
    for stem, n in zip(project["stems"], COUNTS):
        pred_h5 = pred / f"{stem}_clusters_kmeans.h5"
        with h5py.File(pred_h5) as f:
            assert np.array_equal(f["predictions"][()], clusters[start : start + n])
        csv = pd.read_csv(pred / f"{stem}_instance_regions_kmeans_clustered.csv")
        assert list(csv.columns) == [*REGION_COLS, "semantic_class"]
        assert np.array_equal(csv["semantic_class"], clusters[start : start + n])
        star = starfile.read(pred / f"{stem}_instance_regions_kmeans_clustered.star")["particles"]
        assert {"rlnLabel", "rlnCoordinateZ", "rlnCoordinateY", "rlnCoordinateX", "rlnClass"} <= set(star.columns)
        assert np.array_equal(star["rlnClass"], clusters[start : start + n])
        start += n


@pytest.mark.slow  # shares the module's real merge/visualize/kmeans/spectral run (~35 s)
def test_spectral_outputs_are_one_based_and_separate(project):
    pred, truth = project["pred"], project["truth"]
    with h5py.File(pred / "spectral_clusters.h5") as f:
        clusters = f["clusters"][()]
        assert f["centers"].shape == (4, 16)
        assert f.attrs["num_clusters"] == 4  # eigengap estimate with upper bound 8
        assert f["eigenvalues"].shape == (9,)
    assert set(np.unique(clusters)) == {1, 2, 3, 4}
    assert adjusted_rand_score(truth, clusters) >= 0.95
    stem = project["stems"][1]
    star = starfile.read(pred / f"{stem}_instance_regions_spectral_clustered.star")["particles"]
    assert star["rlnClass"].min() >= 1
    kmeans_star = starfile.read(pred / f"{stem}_instance_regions_kmeans_clustered.star")["particles"]
    assert kmeans_star["rlnClass"].min() == 0  # not overwritten by spectral (CryoSiam did)
    csv = pd.read_csv(pred / f"{stem}_instance_regions_spectral_clustered.csv")
    assert csv["semantic_class"].min() >= 1
    with h5py.File(pred / f"{stem}_clusters_spectral.h5") as f:
        assert f["predictions"].shape == (COUNTS[1],)


@pytest.mark.slow  # shares the module's real merge/visualize/kmeans/spectral run (~35 s)
def test_per_cluster_particle_stars(project):
    pred = project["pred"]
    for method, ids in (("kmeans", range(4)), ("spectral", range(1, 5))):
        total = 0
        for c in ids:
            star = starfile.read(pred / f"{method}_cluster_{c}_particles.star")["particles"]
            assert {"rlnTomoName", "rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"} <= set(
                star.columns
            )
            assert (star["rlnClass"] == c).all()
            assert star["rlnMicrographName"].str.endswith(".mrc").all()
            total += len(star)
        assert total == sum(COUNTS)


@pytest.mark.slow  # shares the module's real merge/visualize/kmeans/spectral run (~35 s)
def test_label_volumes_carry_cluster_ids(project):
    pred, root = project["pred"], project["root"]
    stem = project["stems"][0]
    csv = pd.read_csv(pred / f"{stem}_instance_regions_kmeans_clustered.csv")
    with mrcfile.open(pred / f"{stem}_clusters_kmeans.mrc") as m:
        vol = m.data.copy()
    with mrcfile.open(root / "vol" / "masks" / f"{stem}.mrc") as m:
        mask = m.data.copy()
    for label, cls in zip(csv["label"], csv["semantic_class"]):
        inside = vol[mask == label]
        if inside.size:  # boxes may overlap; the visible ones carry their cluster + 1
            assert np.all(inside == cls + 1)
    assert np.all(vol[mask == 0] == 0)
    with mrcfile.open(pred / f"{stem}_clusters_spectral.mrc") as m:
        assert set(np.unique(m.data)) <= {0, 1, 2, 3, 4}


@pytest.mark.slow  # shares the module's real merge/visualize/kmeans/spectral run (~35 s)
def test_figures_and_coordinates(project):
    vis = project["vis"]
    expected = [
        "all_tomograms_umap.csv",
        "all_tomograms_umap.png",
        "all_tomograms_umap_3d.csv",
        "all_tomograms_umap_3d.png",
        "distance_map_by_tomogram.png",
        "kmeans_clusters_umap.png",
        "kmeans_clusters_umap.csv",
        "kmeans_distance_map.png",
        "spectral_clusters_umap.png",
        "spectral_distance_map.png",
        *[f"kmeans_cluster_{c}_gallery.png" for c in range(4)],
        *[f"spectral_cluster_{c}_gallery.png" for c in range(1, 5)],
        *[f"{s}_umap.csv" for s in project["stems"]],
        *[f"{s}_umap.png" for s in project["stems"]],
    ]
    missing = [n for n in expected if not (vis / n).is_file()]
    assert not missing
    coords = pd.read_csv(vis / "all_tomograms_umap.csv")
    assert len(coords) == sum(COUNTS)
    assert {"tomogram", "label", "row", "x", "y", "log_area", "centroid-0"} <= set(coords.columns)
    assert coords["centroid-0"].dtype == float and not np.allclose(coords["centroid-0"], coords["centroid-0"].round())
    per = pd.read_csv(vis / f"{project['stems'][2]}_umap.csv")
    assert len(per) == COUNTS[2] and (per["tomogram"] == project["stems"][2]).all()
    kc = pd.read_csv(vis / "kmeans_clusters_umap.csv")
    assert len(kc) == sum(COUNTS) and {"x", "y", "cluster"} <= set(kc.columns)
    assert not list(vis.glob(".subtomo-tmp-*"))


@pytest.mark.slow  # shares the module's real merge/visualize/kmeans/spectral run (~35 s)
def test_pipeline_staging_with_merged_files_only(project, tmp_path):
    """As Nextflow runs it: merged files + regions CSVs staged in the work dir, flags only."""
    for name in ["embeddings.h5", "embeddings_table.csv", *[f"{s}_instance_regions.csv" for s in project["stems"]]]:
        os.symlink(project["pred"] / name, tmp_path / name)
    run(
        "subtomo-cluster",
        "kmeans",
        "--input-dir",
        ".",
        "--output-dir",
        "out",
        "--vis-dir",
        "vis",
        "--set",
        "clustering_kmeans.num_clusters=4",
        "--set",
        "clustering_kmeans.visualization=false",
        "--quiet",
        cwd=tmp_path,
    )
    with h5py.File(tmp_path / "out" / "kmeans_clusters.h5") as f:
        staged = f["clusters"][()]
    with h5py.File(project["pred"] / "kmeans_clusters.h5") as f:
        assert np.array_equal(staged, f["clusters"][()])  # seeded: same result
    assert (tmp_path / "out" / f"{project['stems'][0]}_instance_regions_kmeans_clustered.star").is_file()
    assert not (tmp_path / "out" / "embeddings.h5").exists()  # no re-merge


@pytest.mark.slow  # shares the module's real merge/visualize/kmeans/spectral run (~35 s)
def test_seed_command_names(project, tmp_path):
    out = tmp_path / "out"
    run(
        "simsiam_embeddings_spectral_clustering",
        "--config_file",
        project["cfg"],
        "--output-dir",
        out,
        "--set",
        "clustering_spectral.visualization=false",
        "--set",
        "clustering_spectral.estimate_num_clusters=false",
        "--set",
        "clustering_spectral.num_clusters=4",
        "--set",
        "instances_mask_folder=null",
    )
    with h5py.File(out / "spectral_clusters.h5") as f:
        assert adjusted_rand_score(project["truth"], f["clusters"][()]) >= 0.95
    help_text = run("simsiam_embeddings_kmeans_clustering", "--help").stdout
    assert "--config_file" in help_text and "--input-dir" in help_text


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


@pytest.mark.parametrize(
    "case, code, needle",
    [
        ("k1", 3, "clustering_kmeans.num_clusters"),
        ("too_few", 4, "cannot make 500 clusters"),
        ("nan", 4, "TS_01_embeds.h5"),
        ("dims", 4, "TS_02_embeds.h5"),
        ("empty", 4, "no embeddings found"),
    ],
)
def test_bad_input_fails_cleanly(tmp_path, case, code, needle):
    from subtomo_embed.core.io import write_h5

    pred = tmp_path / "pred"
    if case == "empty":
        pred.mkdir()
    else:
        make_prediction_folder(pred, counts=(20, 30, 25), dim=8)
    k = {"k1": 1, "too_few": 500}.get(case, 3)
    if case == "nan":
        emb = np.ones((8, 30), np.float32)
        emb[0, 7] = np.nan
        write_h5(pred / "TS_01_embeds.h5", {"embeddings": emb})
    if case == "dims":
        write_h5(pred / "TS_02_embeds.h5", {"embeddings": np.ones((9, 25), np.float32)})
    before = _files(pred)
    cfg = write_config(tmp_path / "c.yaml", prediction_folder=str(pred), clustering_kmeans={"num_clusters": k})
    proc = run("subtomo-cluster", "kmeans", "-c", cfg, check=False)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert needle in lines[-1] and "Traceback" not in proc.stderr
    assert _files(pred) == before  # nothing written (not even a merge, not even vis/)


def test_help_is_light():
    code = (
        "import sys, subtomo_embed.commands.analysis, subtomo_embed.stages.merging, subtomo_embed.stages.clustering,"
        " subtomo_embed.stages.visualize;"
        "heavy = [m for m in ('umap', 'sklearn', 'matplotlib', 'pynndescent') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
