"""Issue 13: hostile and untrusted inputs beyond the bad-input table (tests/test_bad_inputs.py).

Files travel: embeddings and patches files come from collaborators, picks from other tools,
configs from colleagues. Each test crafts one such file and checks that the command either
refuses it with a one-line error of the right class and writes nothing, or does the right thing
and says what it did; and that nothing is ever written outside the folders the command was given.
The CLI runs in this process (typer's CliRunner), on a small predicted dataset made once.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from synthetic import make_checkpoint, make_dataset, write_config, write_h5_mask, write_picks
from typer.testing import CliRunner

from subtomo_embed.cli import app


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr
    return result.exit_code, result.stderr


def last_line(stderr: str) -> str:
    return (stderr.strip().splitlines() or [""])[-1]


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """data/, masks/, model.ckpt, config.yaml and out/ after predict and merge (copied by each test)."""
    root = tmp_path_factory.mktemp("predicted")
    data, masks = make_dataset(root)
    ckpt = make_checkpoint(root / "model.ckpt")
    config = write_config(
        root / "config.yaml",
        data_folder=data,
        instances_mask_folder=masks,
        prediction_folder=root / "out",
        trained_model=ckpt,
    )
    for command in ("predict", "merge"):
        code, stderr = invoke(command, "-c", config)
        assert code == 0, stderr
    return root


@pytest.fixture
def run(predicted, tmp_path):
    """A private copy of the predicted dataset: (root, config path, set(**changes))."""
    root = tmp_path / "case"
    shutil.copytree(predicted, root, symlinks=True)
    config = root / "config.yaml"
    raw = yaml.safe_load(config.read_text())
    for key in ("data_folder", "instances_mask_folder", "prediction_folder", "trained_model"):
        raw[key] = raw[key].replace(str(predicted), str(root))
    config.write_text(yaml.safe_dump(raw))

    def set_config(**changes):
        raw = yaml.safe_load(config.read_text())
        for key, value in changes.items():
            node = raw
            parts = key.split("__")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        config.write_text(yaml.safe_dump(raw))

    return root, config, set_config


def snapshot(folder: Path) -> dict[str, str]:
    return (
        {
            str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))
            if not p.is_symlink()
        }
        if folder.exists()
        else {}
    )


# --- class 1: names read from files never become paths ----------------------------------------------


def test_names_in_a_merged_file_never_become_paths(run, tmp_path):
    root, config, _ = run
    merged = root / "shared"
    merged.mkdir()
    shutil.copy(root / "out" / "embeddings.h5", merged / "embeddings.h5")
    with h5py.File(merged / "embeddings.h5", "r+") as f:
        del f["tomograms"]
        f["tomograms"] = np.array([b"../../x/TS_01", str(tmp_path / "abs" / "TS_02").encode()])
    before = snapshot(tmp_path)
    code, stderr = invoke("kmeans", "-c", config, "--input-dir", merged, "--output-dir", root / "k")
    assert code == 4, stderr
    assert re.search(r"embeddings\.h5: .*'\.\./\.\./x/TS_01'.* not a plain file name", last_line(stderr)), stderr
    assert snapshot(tmp_path) == before


def test_a_patches_file_stem_never_becomes_a_path(run, tmp_path):
    root, config, _ = run
    code, stderr = invoke("extract", "-c", config, "--filename", "TS_01.mrc", "--output-dir", root / "patches")
    assert code == 0, stderr
    patches = root / "patches" / "TS_01_patches.h5"
    with h5py.File(patches, "r+") as f:
        f.attrs["stem"] = "../../y"
    before = snapshot(tmp_path)
    code, stderr = invoke("embed", "-c", config, "--patches", patches, "--output-dir", root / "emb")
    assert code == 4, stderr
    assert re.search(r"TS_01_patches\.h5: .*'\.\./\.\./y'.* not a plain file name", last_line(stderr)), stderr
    assert snapshot(tmp_path) == before


# --- class 2: no table sized by a label value -------------------------------------------------------------


def test_labels_above_2_to_the_53_make_no_dense_table(run):
    root, config, set_config = run
    mask_path = root / "masks" / "TS_01_instance_preds.h5"
    with h5py.File(mask_path) as f:
        mask = f["instances"][()].astype(np.int64)
    huge = 2**53 + 1
    mask[mask == 1] = huge
    write_h5_mask(mask_path, mask)
    set_config(test_files=["TS_01.mrc"], prediction_folder=str(root / "o2"))
    assert invoke("predict", "-c", config)[0] == 0
    code, stderr = invoke("kmeans", "-c", config)  # a dense lookup table would need 2^53 entries
    assert code == 0, stderr
    import mrcfile

    with mrcfile.open(root / "o2" / "TS_01_clusters_kmeans.mrc") as m:
        volume = m.data.copy()
    table = pd.read_csv(root / "o2" / "TS_01_instance_regions_kmeans_clustered.csv")
    for label, cluster in zip(table["label"], table["semantic_class"]):
        assert np.unique(volume[mask == label]).tolist() == [cluster + 1], label  # 1-based in the volume
    assert (volume[mask == 0] == 0).all()
    assert huge in table["label"].to_numpy()


# --- class 3: no silent wrong results ----------------------------------------------------------------------


def test_patches_of_another_size_than_the_config_are_refused(run):
    root, config, _ = run
    assert invoke("extract", "-c", config, "--filename", "TS_01.mrc", "--output-dir", root / "patches")[0] == 0
    code, stderr = invoke(
        "embed",
        "-c",
        config,
        "--patches",
        root / "patches" / "TS_01_patches.h5",
        "--output-dir",
        root / "emb",
        "--set",
        "parameters.data.patch_size=[8,8,8]",
    )
    assert code == 4, stderr
    assert re.search(
        r"TS_01_patches\.h5: patches of 12×12×12 voxels, but parameters\.data\.patch_size is \[8, 8, 8\]",
        last_line(stderr),
    ), stderr
    assert not (root / "emb").exists() or not any((root / "emb").iterdir())


def _regions_beside_the_mask(root, change):
    table = pd.read_csv(root / "out" / "TS_01_instance_regions.csv")
    table = change(table)
    table.to_csv(root / "masks" / "TS_01_instance_regions.csv", index=False)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda t: t.assign(label=t["label"].where(t.index != 0, 999)), r"label 999 .*not in the mask"),
        (lambda t: pd.concat([t, t.iloc[:1]]), r"label \d+ appears twice"),
        (
            lambda t: t.astype({"bbox-0": object}).assign(**{"bbox-0": ["abc"] + list(t["bbox-0"][1:])}),
            r"column 'bbox-0' row 1 is not an integer \('abc'\)",
        ),
        (
            lambda t: t.assign(**{"bbox-3": t["bbox-3"].astype(float).where(t.index != 1, np.nan)}),
            r"column 'bbox-3' row 2 is not an integer",
        ),
        (lambda t: t.assign(**{"bbox-0": t["bbox-3"]}), r"empty or inverted bbox"),
        (lambda t: t.assign(**{"bbox-5": t["bbox-5"] + 1000}), r"bbox .* outside the mask"),
    ],
)
def test_a_bad_cryosiam_regions_csv_is_an_input_error_naming_it(run, change, message):
    root, config, set_config = run
    _regions_beside_the_mask(root, change)
    set_config(test_files=["TS_01.mrc"], prediction_folder=str(root / "o2"))
    code, stderr = invoke("predict", "-c", config)
    assert code == 4, stderr
    assert re.search(r"masks/TS_01_instance_regions\.csv: .*" + message, last_line(stderr)), last_line(stderr)
    assert not (root / "o2").exists() or not any((root / "o2").glob("TS_01*"))


def test_an_invalid_voxel_size_is_not_used(run, caplog):
    import mrcfile

    root, config, set_config = run
    with mrcfile.open(root / "data" / "TS_01.mrc", "r+") as m:
        m.voxel_size = (float("nan"),) * 3
    set_config(test_files=["TS_01.mrc"], prediction_folder=str(root / "o2"))
    code, stderr = invoke("predict", "-c", config)
    assert code == 0, stderr
    assert "TS_01.mrc: the MRC header's voxel size (nan" in stderr
    star = (root / "o2" / "TS_01_instance_regions.star").read_text()
    assert "Angst" not in star and "nan" not in star and "inf" not in star
    write_picks(root / "picks.star", root / "masks")  # RELION 5 picks: Å, they need the voxel size
    set_config(centers_file=str(root / "picks.star"), centers_patch_size=8, prediction_folder=str(root / "pc"))
    code, stderr = invoke("predict-centers", "-c", config)
    assert code == 4, stderr
    assert re.search(r"TS_01\.mrc: the MRC header's voxel size .* set centers\.voxel_size", last_line(stderr)), stderr


def test_no_cluster_label_volumes_for_picks(run):
    root, config, set_config = run
    write_picks(root / "picks.star", root / "masks")
    set_config(centers_file=str(root / "picks.star"), centers_patch_size=8, prediction_folder=str(root / "pc"))
    assert invoke("predict-centers", "-c", config)[0] == 0
    code, stderr = invoke("kmeans", "-c", config)
    assert code == 0, stderr
    assert not list((root / "pc").glob("*_clusters_kmeans.mrc"))
    assert "no cluster label volumes: the embeddings come from picks" in stderr


# --- class 4: a re-run leaves exactly its own outputs -------------------------------------------------------


def test_a_rerun_with_fewer_clusters_leaves_no_old_cluster_files(run):
    root, config, set_config = run
    set_config(clustering_kmeans__num_clusters=4, clustering_kmeans__visualization=True)
    assert invoke("kmeans", "-c", config)[0] == 0
    out, vis = root / "out", root / "out" / "vis"
    assert (out / "kmeans_cluster_3_particles.star").is_file() and (vis / "kmeans_cluster_3_gallery.png").is_file()
    (out / "kmeans_cluster_notes.txt").write_text("mine")  # not ours: never touched
    (out / "kmeans_cluster_9_particles.star").write_text("mine too")  # our pattern, but we did not write it
    set_config(clustering_kmeans__num_clusters=2)
    code, stderr = invoke("kmeans", "-c", config)
    assert code == 0, stderr
    assert sorted(p.name for p in out.glob("kmeans_cluster_*")) == [
        "kmeans_cluster_0_particles.star",
        "kmeans_cluster_1_particles.star",
        "kmeans_cluster_9_particles.star",
        "kmeans_cluster_notes.txt",
    ]
    assert sorted(p.name for p in vis.glob("kmeans_cluster_*")) == [
        "kmeans_cluster_0_gallery.png",
        "kmeans_cluster_1_gallery.png",
    ]
    assert "removed 4 outputs of the previous kmeans run" in stderr


def test_an_output_folder_that_is_an_input_folder_is_refused_before_anything_is_written(run):
    root, config, set_config = run
    set_config(prediction_folder=str(root / "data"))
    before = snapshot(root)
    code, stderr = invoke("predict", "-c", config)
    assert code == 3, stderr
    assert re.search(r"config\.yaml: prediction_folder .*/data is the data_folder", last_line(stderr)), stderr
    code, stderr = invoke("kmeans", "-c", config, "--input-dir", root / "out", "--output-dir", root / "masks")
    assert code == 3 and "--output-dir" in last_line(stderr) and "instances_mask_folder" in last_line(stderr), stderr
    assert snapshot(root) == before


# --- class 5: one line, the right exit code, nothing written ------------------------------------------------


def test_an_hdf5_group_where_a_dataset_is_expected(run):
    root, config, set_config = run
    with h5py.File(root / "masks" / "TS_01_instance_preds.h5", "w") as f:
        f.create_group("instances").create_dataset("x", data=[1])
    set_config(test_files=["TS_01.mrc"], prediction_folder=str(root / "o2"))
    code, stderr = invoke("predict", "-c", config)
    assert code == 4 and re.search(
        r"TS_01_instance_preds\.h5: 'instances' is an HDF5 group, not a dataset", last_line(stderr)
    ), stderr
    with h5py.File(root / "out" / "TS_02_embeds.h5", "r+") as f:
        data = f["embeddings"][()]
        del f["embeddings"]
        f.create_group("embeddings").create_dataset("x", data=data)
    code, stderr = invoke("merge", "-c", config, "--input-dir", root / "out", "--output-dir", root / "m")
    assert code == 4 and re.search(
        r"TS_02_embeds\.h5: 'embeddings' is an HDF5 group, not a dataset", last_line(stderr)
    ), stderr


# --- the hostile round (issue 13's "fresh round of your own") ---------------------------------------------------


def test_a_tomogram_is_never_its_own_mask(run):
    root, config, set_config = run
    set_config(instances_mask_folder=str(root / "data"), test_files=["TS_01.mrc"], prediction_folder=str(root / "o2"))
    code, stderr = invoke("predict", "-c", config)
    assert code == 4 and "TS_01.mrc: the instance mask found for this tomogram is the tomogram itself" in stderr


def test_label_volumes_hold_every_cluster_id_exactly():
    from subtomo_embed.stages.clustering import label_volume_dtype, paint_labels

    assert [label_volume_dtype(k) for k in (5, 127, 128, 32767, 32768, 65535, 65536)] == [
        np.int8,
        np.int8,
        np.int16,
        np.int16,
        np.uint16,
        np.uint16,
        np.float32,
    ]  # int16 wrapped above 32767
    mask = np.zeros((3, 4, 5), np.int64)
    mask[0, :2] = 7
    mask[1, 1:3] = 2**60
    mask[2, 3] = 9  # not clustered: stays 0
    for labels in ([7, 2**60], [7, 3]):  # a huge label (sorted lookup) and small ones only (dense table)
        labels = np.array(labels)
        painted = paint_labels(np.where(mask == 2**60, labels[1], mask), labels, np.array([40000, 2]))
        assert painted.dtype == np.uint16
        assert (painted[0, :2] == 40000).all() and (painted[1, 1:3] == 2).all()
        assert painted.sum() == 40000 * 10 + 2 * 10


def test_nan_in_a_merged_file_used_as_it_is(run):
    root, config, _ = run
    shared = root / "shared"
    shared.mkdir()
    for name in ("embeddings.h5", "embeddings_table.csv"):
        shutil.copy(root / "out" / name, shared / name)
    with h5py.File(shared / "embeddings.h5", "r+") as f:
        f["embeddings"][0, 0] = np.nan
    code, stderr = invoke("kmeans", "-c", config, "--input-dir", shared, "--output-dir", root / "k")
    assert code == 4 and re.search(r"shared/embeddings\.h5: .*(NaN|finite)", last_line(stderr)), stderr
    assert not (root / "k").exists() or not any((root / "k").iterdir())


def test_a_picks_file_without_picks_is_said_so(run):
    root, config, set_config = run
    (root / "picks.csv").write_text("x,y,z\n")
    set_config(
        centers_file=str(root / "picks.csv"),
        centers_patch_size=8,
        test_files=["TS_01.mrc"],
        prediction_folder=str(root / "pc"),
    )
    code, stderr = invoke("predict-centers", "-c", config)  # nothing at all to embed: an error (issue 31)
    assert code == 4 and "picks.csv: picks file holds no picks (a header only)" in last_line(stderr), stderr


def test_an_output_file_that_is_a_symlink_is_replaced_not_followed(run, tmp_path):
    root, config, set_config = run
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (root / "out" / "TS_01_embeds.h5").unlink()
    (root / "out" / "TS_01_embeds.h5").symlink_to(victim)
    assert invoke("predict", "-c", config)[0] == 0
    assert victim.read_text() == "keep me" and not (root / "out" / "TS_01_embeds.h5").is_symlink()


def test_unicode_and_spaces_in_names_go_through(run):
    root, config, set_config = run
    (root / "data" / "TS_01.mrc").rename(root / "data" / "TS ü 01.mrc")
    (root / "masks" / "TS_01_instance_preds.h5").rename(root / "masks" / "TS ü 01_instance_preds.h5")
    set_config(prediction_folder=str(root / "o2"))
    assert invoke("predict", "-c", config)[0] == 0
    assert invoke("kmeans", "-c", config)[0] == 0
    assert (root / "o2" / "TS ü 01_clusters_kmeans.mrc").is_file()


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("number_of_samples", lambda f: np.array([-3, f["embeddings"].shape[0] + 3]), r"holds a negative count \(-3\)"),
        ("labels", lambda f: f["labels"][:3], r"dataset 'labels' has 3 entries but there are \d+ embeddings"),
        ("tomograms", lambda f: np.array([b"TS_01", b"TS_01"]), r"tomogram 'TS_01' appears twice in 'tomograms'"),
    ],
)
def test_a_merged_file_whose_counts_or_labels_do_not_fit_is_refused(run, name, value, message):
    root, config, _ = run
    shared = root / "shared"
    shared.mkdir()
    for file in ("embeddings.h5", "embeddings_table.csv"):
        shutil.copy(root / "out" / file, shared / file)
    with h5py.File(shared / "embeddings.h5", "r+") as f:
        data = value(f)
        del f[name]
        f[name] = data
    code, stderr = invoke("kmeans", "-c", config, "--input-dir", shared, "--output-dir", root / "k")
    assert code == 4 and re.search(r"shared/embeddings\.h5: .*" + message, last_line(stderr)), stderr


def test_a_patches_file_whose_regions_do_not_fit_its_patches(run):
    root, config, _ = run
    assert invoke("extract", "-c", config, "--filename", "TS_01.mrc", "--output-dir", root / "p")[0] == 0
    with h5py.File(root / "p" / "TS_01_patches.h5", "r+") as f:
        labels = f["regions/label"][()]
        del f["regions/label"]
        f["regions/label"] = labels[:2]
    code, stderr = invoke(
        "embed", "-c", config, "--patches", root / "p" / "TS_01_patches.h5", "--output-dir", root / "e"
    )
    assert code == 4 and "regions column 'label' does not have one value per patch" in last_line(stderr), stderr


@pytest.mark.parametrize(
    "target,command,code,message",
    [
        ("data/TS_01.mrc", "predict", 4, r"TS_01\.mrc: not a readable MRC file"),
        ("masks/TS_01_instance_preds.h5", "predict", 4, r"TS_01_instance_preds\.h5: not a readable HDF5 file"),
        ("model.ckpt", "predict", 5, r"model\.ckpt: not a readable PyTorch checkpoint"),
        ("out/TS_01_embeds.h5", "merge", 4, r"TS_01_embeds\.h5: not a readable HDF5 file"),
        ("config.yaml", "merge", 3, r"config\.yaml: key 'prediction_folder' must be set"),
    ],
)
def test_zero_size_files_are_named(run, target, command, code, message):
    root, config, set_config = run
    set_config(
        test_files=["TS_01.mrc"], prediction_folder=str(root / "o2") if command == "predict" else str(root / "out")
    )
    (root / target).write_bytes(b"")
    extra = ["--output-dir", root / "m"] if command == "merge" else []
    got, stderr = invoke(command, "-c", config, *extra)
    assert got == code and re.search(message, last_line(stderr)), stderr


def test_a_visualize_rerun_on_fewer_tomograms_leaves_no_old_projections(run):
    root, config, set_config = run
    set_config(visualization__pca_components=2)
    assert invoke("visualize", "-c", config)[0] == 0
    vis = root / "out" / "vis"
    assert (vis / "TS_02_pca.csv").is_file()
    (vis / "TS_02_notes_pca.csv").write_text("mine: never in our record")
    set_config(clustering_files=["TS_01"])
    code, stderr = invoke("visualize", "-c", config, "--output-dir", root / "out")
    assert code == 0, stderr
    assert not (vis / "TS_02_pca.csv").exists() and not (vis / "TS_02_pca.png").exists()
    assert (vis / "TS_01_pca.csv").is_file() and (vis / "TS_02_notes_pca.csv").is_file()
    assert "outputs of the previous visualize run that this run does not write" in stderr
