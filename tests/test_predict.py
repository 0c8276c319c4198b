"""`subtomo-embed predict`, `extract` and `embed` as a user runs them, with real files."""

import subprocess

import h5py
import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch
from inprocess import run_cli
from reference import reference_embeddings, reference_patches
from synthetic import make_checkpoint, write_config, write_h5_mask, write_mrc

from subtomo_embed.core.model import load_model


def run(args, env, cwd=None, ok=True):
    """The command in this process (``inprocess.run_cli``); ``bin/`` wrappers as real processes."""
    if args[0] == "subtomo-embed":
        proc = run_cli(args, cwd)
    else:
        proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def read_outputs(out, stem):
    with h5py.File(out / f"{stem}_embeds.h5") as f:
        emb = f["embeddings"][()]
    with h5py.File(out / f"{stem}_instance_labels.h5") as f:
        labels = f["labels"][()]
    return emb, labels, pd.read_csv(out / f"{stem}_instance_regions.csv")


def expected(dataset, stem, masking=1, expand=2, contrastive=True, patch=(12, 12, 12)):
    image = mrcfile.read(dataset["data"] / f"{stem}.mrc")
    with h5py.File(dataset["masks"] / f"{stem}_instance_preds.h5") as f:
        mask = f["instances"][()]
    patches, rows = reference_patches(image, mask, patch, masking, expand, min_size=10)
    model, _ = load_model(dataset["ckpt"], contrastive)
    return reference_embeddings(model, patches, contrastive), rows


def cosine(a, b):
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("contrastive,masking", [(True, 1), (False, 2), (True, 0)])
def test_predict_matches_cryosiam(dataset, cli_env, contrastive, masking):
    cfg = write_config(
        dataset["root"] / "c.yaml",
        data_folder=dataset["data"],
        instances_mask_folder=dataset["masks"],
        prediction_folder=dataset["out"],
        trained_model=dataset["ckpt"],
        contrastive=contrastive,
        masking_type=masking,
    )
    run(["subtomo-embed", "simsiam_embeddings_predict", "--config_file", str(cfg)], cli_env)
    for stem in ["TS_01", "TS_02"]:
        emb, labels, regions = read_outputs(dataset["out"], stem)
        ref, rows = expected(dataset, stem, masking, contrastive=contrastive)
        assert emb.shape == (16, len(rows))  # [dim, N], as CryoSiam
        assert labels.dtype == np.int64 and labels.tolist() == [int(r["label"]) for r in rows]
        assert regions["label"].tolist() == labels.tolist()
        assert list(regions.columns) == [
            "label",
            "area",
            *[f"bbox-{i}" for i in range(6)],
            *[f"centroid-{i}" for i in range(3)],
            "hull_area",
        ]
        assert np.all(cosine(emb.T, ref) >= 0.999)
        star = starfile.read(dataset["out"] / f"{stem}_instance_regions.star")["particles"]
        assert star["rlnLabel"].tolist() == labels.tolist()
        np.testing.assert_allclose(star["rlnCoordinateZ"], regions["centroid-0"], atol=1e-5)
        assert "rlnBbox-5" in star.columns and "hull_area" not in star.columns


@pytest.mark.slow  # two real runs as processes (~10 s)
def test_extract_then_embed_equals_predict(dataset, cli_env, tmp_path):
    cfg = str(dataset["config"])
    run(["subtomo-embed", "predict", "-c", cfg], cli_env)
    staged = tmp_path / "staged"
    staged.mkdir()
    run(
        [
            "subtomo-extract",
            "--tomogram",
            str(dataset["data"] / "TS_02.mrc"),
            "--mask",
            str(dataset["masks"] / "TS_02_instance_preds.h5"),
            "--output-dir",
            str(staged),
            "--set",
            "min_particle_size=10",
            "--set",
            "expand_labels=2",
            "--set",
            "masking_type=1",
            "--set",
            "parameters.data.patch_size=[12,12,12]",
        ],
        cli_env,
        cwd=staged,
    )
    assert (staged / "TS_02_patches.h5").is_file()
    run(
        [
            "subtomo-embed-patches",
            "--patches",
            "TS_02_patches.h5",
            "--checkpoint",
            str(dataset["ckpt"]),
            "--output-dir",
            str(staged),
            "--device",
            "cpu",
        ],
        cli_env,
        cwd=staged,
    )
    a = read_outputs(dataset["out"], "TS_02")
    b = read_outputs(staged, "TS_02")
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    assert a[1].tolist() == b[1].tolist()
    pd.testing.assert_frame_equal(a[2], b[2])


def test_resume_skips_complete_and_redoes_changed(dataset, cli_env):
    cfg = str(dataset["config"])
    run(["subtomo-embed", "predict", "-c", cfg], cli_env)
    target = dataset["out"] / "TS_01_embeds.h5"
    first = target.stat().st_mtime_ns
    proc = run(["subtomo-embed", "predict", "-c", cfg], cli_env)
    assert target.stat().st_mtime_ns == first
    assert "already complete" in proc.stderr
    # a half-finished tomogram (one output missing) is redone
    (dataset["out"] / "TS_02_instance_regions.star").unlink()
    run(["subtomo-embed", "predict", "-c", cfg], cli_env)
    assert (dataset["out"] / "TS_02_instance_regions.star").is_file()
    assert target.stat().st_mtime_ns == first
    # a changed setting redoes everything
    proc = run(["subtomo-embed", "predict", "-c", cfg, "--set", "masking_type=2"], cli_env)
    assert target.stat().st_mtime_ns != first and "changed" in proc.stderr
    assert not list(dataset["out"].glob(".subtomo-tmp-*"))
    # so does averaging over rotations, and its embeddings are the model's averaged over the group
    strict = read_outputs(dataset["out"], "TS_01")[0]
    four = ["--set", "masking_type=2", "--set", "embedding_rotations=4"]
    proc = run(["subtomo-embed", "predict", "-c", cfg, *four], cli_env)
    assert "changed" in proc.stderr
    image = mrcfile.read(dataset["data"] / "TS_01.mrc")
    with h5py.File(dataset["masks"] / "TS_01_instance_preds.h5") as f:
        patches, _ = reference_patches(image, f["instances"][()], (12, 12, 12), 2, 2, min_size=10)
    model, _ = load_model(dataset["ckpt"], contrastive=True)
    with torch.no_grad():
        want = model.embed(torch.from_numpy(np.stack(patches)[:, None]).float(), True, 4).numpy()
    averaged = read_outputs(dataset["out"], "TS_01")[0]
    np.testing.assert_allclose(averaged.T, want, atol=1e-5)  # stored as CryoSiam stores them: [dim, N]
    assert not np.allclose(averaged, strict, atol=1e-3)


def test_filename_and_test_files_select_tomograms(dataset, cli_env):
    run(["subtomo-embed", "predict", "-c", str(dataset["config"]), "--filename", "TS_02.mrc"], cli_env)
    assert sorted(p.name for p in dataset["out"].glob("*_embeds.h5")) == ["TS_02_embeds.h5"]
    (dataset["data"] / "notes.txt").write_text("not a tomogram")
    run(["subtomo-embed", "predict", "-c", str(dataset["config"]), "--set", "test_files=[TS_01.mrc]"], cli_env)
    assert sorted(p.name for p in dataset["out"].glob("*_embeds.h5")) == ["TS_01_embeds.h5", "TS_02_embeds.h5"]


def test_an_mrc_label_volume_mask_gives_what_the_same_hdf5_mask_gives(tmp_path, cli_env):
    """The mask's format changes nothing: the same labels as an MRC label volume (<stem>.mrc) or as
    CryoSiam's HDF5 (<stem>_instance_preds.h5) give the same instances, regions and embeddings."""
    from synthetic import make_dataset

    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    outputs = {}
    for mask_format in ("h5", "mrc"):
        root = tmp_path / mask_format
        data, masks = make_dataset(root, n_tomograms=1, mask_format=mask_format)  # the same seed: the same data
        assert [p.name for p in masks.iterdir()] == [{"h5": "TS_01_instance_preds.h5", "mrc": "TS_01.mrc"}[mask_format]]
        inputs = {"data_folder": data, "instances_mask_folder": masks, "trained_model": ckpt}
        cfg = write_config(root / "c.yaml", prediction_folder=root / "out", **inputs)
        run(["subtomo-embed", "predict", "-c", str(cfg)], cli_env)
        outputs[mask_format] = read_outputs(root / "out", "TS_01")
    (emb, labels, regions), (emb_mrc, labels_mrc, regions_mrc) = outputs["h5"], outputs["mrc"]
    assert emb.shape[1] == labels.size > 1
    np.testing.assert_array_equal(labels_mrc, labels)
    pd.testing.assert_frame_equal(regions_mrc, regions)
    np.testing.assert_allclose(emb_mrc, emb, rtol=1e-6, atol=1e-7)


def _bad(dataset, cli_env, *extra):
    proc = run(["subtomo-embed", "predict", "-c", str(dataset["config"]), *extra], cli_env, ok=False)
    assert "Traceback" not in proc.stderr
    assert not dataset["out"].exists() or not list(dataset["out"].glob("*.h5"))
    return proc


def test_mask_shape_mismatch(dataset, cli_env):
    write_h5_mask(dataset["masks"] / "TS_01_instance_preds.h5", np.ones((5, 5, 5), np.int32))
    proc = _bad(dataset, cli_env, "--filename", "TS_01.mrc")
    assert proc.returncode == 4 and "TS_01_instance_preds.h5" in proc.stderr and "shape" in proc.stderr


def test_float_mask(dataset, cli_env):
    with h5py.File(dataset["masks"] / "TS_01_instance_preds.h5", "r+") as f:
        data = f["instances"][()].astype(np.float32)
        del f["instances"]
        f["instances"] = data
    proc = _bad(dataset, cli_env, "--filename", "TS_01.mrc")
    assert proc.returncode == 4 and "float" in proc.stderr


def test_missing_mask_error_or_skip(dataset, cli_env):
    (dataset["masks"] / "TS_01_instance_preds.h5").unlink()
    proc = _bad(dataset, cli_env)
    assert proc.returncode == 4 and "no instance mask for TS_01.mrc" in proc.stderr
    proc = run(["subtomo-embed", "predict", "-c", str(dataset["config"]), "--skip-missing-masks"], cli_env)
    assert "skipped" in proc.stderr
    assert sorted(p.name for p in dataset["out"].glob("*_embeds.h5")) == ["TS_02_embeds.h5"]


def test_keep_going_finishes_the_others(dataset, cli_env):
    write_mrc(dataset["data"] / "TS_01.mrc", np.full((32, 48, 40), np.nan, np.float32))
    proc = run(["subtomo-embed", "predict", "-c", str(dataset["config"]), "--keep-going"], cli_env, ok=False)
    assert proc.returncode == 4 and "NaN" in proc.stderr and "1 failed" in proc.stderr
    assert sorted(p.name for p in dataset["out"].glob("*_embeds.h5")) == ["TS_02_embeds.h5"]


def test_the_one_loop_keeps_going_past_a_failing_tomogram(dataset):
    """predict, embed and predict-centers share embed_tomograms: a job that fails (here as an
    unreadable patches file would) is recorded, the next tomogram is done, the summary counts both."""
    from subtomo_embed.core.config import load_config
    from subtomo_embed.core.errors import InputDataError
    from subtomo_embed.stages.embedding import embed_tomograms, predict_job, start_run

    cfg = load_config(dataset["config"])
    dataset["out"].mkdir()
    run = start_run("embed", cfg, dataset["out"], None, "cpu", overwrite=False, keep_going=True)

    def unreadable():
        raise InputDataError("not a readable HDF5 file", dataset["out"] / "TS_01_patches.h5")

    tomogram = dataset["data"] / "TS_02.mrc"
    summary = embed_tomograms(run, [("TS_01", unreadable), ("TS_02", lambda: predict_job(run, tomogram))])
    assert summary.done == ["TS_02"] and summary.skipped == []
    assert [stem for stem, _ in summary.failed] == ["TS_01"] and "not a readable HDF5" in summary.failed[0][1]
    assert sorted(p.name for p in dataset["out"].glob("*_embeds.h5")) == ["TS_02_embeds.h5"]
    run.keep_going = False
    with pytest.raises(InputDataError):
        embed_tomograms(run, [("TS_01", unreadable)])


def test_unknown_config_key(dataset, cli_env):
    text = dataset["config"].read_text().replace("masking_type:", "masking_typo:")
    dataset["config"].write_text(text)
    proc = _bad(dataset, cli_env)
    assert proc.returncode == 3 and "unknown key 'masking_typo'" in proc.stderr and "config.yaml" in proc.stderr


def test_dim_mismatch_with_checkpoint(dataset, cli_env):
    proc = _bad(dataset, cli_env, "--set", "parameters.network.dim=1024")
    assert proc.returncode == 3 and "dim" in proc.stderr and "model.ckpt" in proc.stderr
