"""Fine-tuning on the user's own tomograms (``train --from-data``): views of the real particles cut
by predict's functions, resume, a checkpoint predict loads, bad input."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from inprocess import run_cli
from synthetic import TINY_POOLED_NETWORK, make_checkpoint, make_dataset, write_config

from subtomo_embed.core import io
from subtomo_embed.core.config import load_config
from subtomo_embed.core.model import load_model, read_checkpoint
from subtomo_embed.core.real_views import make_real_pair, make_real_view
from subtomo_embed.core.train import TRAIN_STATE_KEY, Sitting, simsiam_loss
from subtomo_embed.stages.evaluation import dataset_patches
from subtomo_embed.stages.training import (
    REAL_CLASS_OFFSET,
    collect_particles,
    fine_tune_from_config,
    real_view_settings,
    rehearsed_pairs,
)

# rotation by 90° about x in (z, y, x): z' = -y, y' = z
QUARTER_TURN = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


@pytest.fixture
def user_data(tmp_path):
    """Two small tomograms with instance masks, a tiny starting checkpoint and a config naming them."""
    data, masks = make_dataset(tmp_path, n_tomograms=2, shape=(32, 48, 40), n_instances=6, seed=3)
    start = make_checkpoint(tmp_path / "start.ckpt", TINY_POOLED_NETWORK, seed=1)
    config = write_config(
        tmp_path / "config.yaml",
        data_folder=data,
        instances_mask_folder=masks,
        prediction_folder=tmp_path / "pred",
        log_dir=tmp_path,
        trained_model=start,
        expand_labels=1,
        min_particle_size=10,
        parameters__data__patch_size=[16, 16, 16],
        hyper_parameters={"batch_size": 4, "learning_rate": 0.003, "max_steps": 4},
        seed=5,
    )
    return {"root": tmp_path, "config": config, "start": start, "masks": masks}


@pytest.mark.parametrize("masking_type", [0, 1, 2])
def test_an_unaugmented_view_is_predicts_patch(user_data, masking_type):
    cfg = load_config(user_data["config"], [f"masking_type={masking_type}"])
    expected, keys = dataset_patches(cfg)  # predict's own path: plan_tomogram + iter_patches
    sources = collect_particles(cfg)
    assert len(sources) == len(expected) > 4
    identity = real_view_settings(cfg).identity()
    rng = np.random.default_rng(0)
    for source, patch, (stem, label) in zip(sources, expected, keys.itertuples(index=False)):
        assert source.name == f"{stem} label {label}"
        np.testing.assert_array_equal(make_real_view(source, rng, identity), patch)


def test_a_quarter_turn_view_holds_the_same_voxels(user_data):
    """Strict masking, a 90° rotation (grid onto grid): the view holds exactly the particle's
    masked values, moved; an augmented view does not."""
    cfg = load_config(user_data["config"], ["masking_type=2", "parameters.data.patch_size=[24,24,24]"])
    identity = real_view_settings(cfg).identity()
    rng = np.random.default_rng(0)
    for source in collect_particles(cfg)[:4]:
        still = make_real_view(source, rng, identity)
        turned = make_real_view(source, rng, identity, rotation=QUARTER_TURN)
        assert np.count_nonzero(still) > 20
        assert not np.array_equal(still, turned)
        np.testing.assert_allclose(np.sort(still.ravel()), np.sort(turned.ravel()), atol=1e-5)


def test_pairs_are_two_different_views_of_one_particle(user_data):
    cfg = load_config(user_data["config"])
    sources = collect_particles(cfg)
    settings = real_view_settings(cfg)
    a, b, index = make_real_pair(sources, np.random.default_rng(2), settings)
    assert a.shape == b.shape == (16, 16, 16) and 0 <= index < len(sources)
    assert np.count_nonzero(a) > 0 and np.count_nonzero(b) > 0
    assert not np.array_equal(a, b)
    # the same seed gives the same pair (the stream is reproducible, which resume relies on)
    again = make_real_pair(sources, np.random.default_rng(2), settings)
    np.testing.assert_array_equal(a, again[0])
    assert again[2] == index


@pytest.mark.parametrize("fraction", [0.0, 0.5])
def test_rehearsal_mixes_in_the_simulators_pairs_under_their_own_classes(user_data, fraction):
    """hyper_parameters.rehearsal_fraction: that share of the pairs is simulated (the simulator's class ids,
    below REAL_CLASS_OFFSET), the rest the user's particles (offset + the particle's index), cut to one size."""
    cfg = load_config(user_data["config"], [f"hyper_parameters.rehearsal_fraction={fraction}"])
    sources = collect_particles(cfg)
    settings = real_view_settings(cfg)
    make = rehearsed_pairs(sources, settings, cfg)
    rng = np.random.default_rng(7)
    pairs = [make(rng) for _ in range(200)]
    classes = np.array([c for _, _, c in pairs])
    real = classes >= REAL_CLASS_OFFSET
    assert set(classes[real] - REAL_CLASS_OFFSET) <= set(range(len(sources)))
    assert all(a.shape == b.shape == (16, 16, 16) for a, b, _ in pairs)
    if fraction == 0:
        assert real.all()
        # without rehearsal the stream is the user's pairs as make_real_pair draws them
        first = make_real_pair(sources, np.random.default_rng(7), settings)
        np.testing.assert_array_equal(pairs[0][0], first[0])
        assert pairs[0][2] == REAL_CLASS_OFFSET + first[2]
    else:
        assert 0.35 < 1 - real.mean() < 0.65  # binomial(200, 0.5): about 4 standard deviations either side
        assert len(set(classes[~real])) > 1  # several simulated classes


def fixed_batch_loss(checkpoint, sources, settings) -> float:
    """SimSiam loss of a checkpoint on 8 fixed pairs (train-mode BatchNorm, as in training)."""
    model, _ = load_model(checkpoint)
    rng = np.random.default_rng(1234)
    pairs = [make_real_pair(sources, rng, settings) for _ in range(8)]
    x1 = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None])
    x2 = torch.from_numpy(np.stack([p[1] for p in pairs])[:, None])
    model.train()
    with torch.no_grad():
        return float(simsiam_loss(*model(x1, x2)))


def test_fine_tuning_changes_the_weights_lowers_the_loss_and_resumes(user_data):
    cfg = load_config(user_data["config"])
    out = user_data["root"] / "tuned" / "last.ckpt"
    fine_tune_from_config(cfg, out, steps=2, device="cpu", sitting=Sitting(save_every=1, progress=False))
    first = read_checkpoint(out)
    assert first["global_step"] == 2
    start = read_checkpoint(user_data["start"])["state_dict"]
    assert any(not torch.equal(start[k], first["state_dict"][k]) for k in start)
    assert set(first["state_dict"]) == set(start)
    # a second sitting goes on from step 2 to 12, not from 0
    fine_tune_from_config(cfg, out, steps=12, device="cpu", sitting=Sitting(save_every=5, progress=False))
    second = read_checkpoint(out)
    assert second["global_step"] == 12
    # history: every 10 steps and at the end of each sitting
    assert [h["step"] for h in second[TRAIN_STATE_KEY]["history"]] == [2, 10, 12]


def test_fine_tuning_lowers_the_loss_on_fixed_pairs(user_data):
    # SimSiam alone on the user's pairs (no contrast term, no simulated pairs rehearsed): its loss must fall
    plain = ["hyper_parameters.contrast_weight=0", "hyper_parameters.rehearsal_fraction=0"]
    cfg = load_config(user_data["config"], ["hyper_parameters.learning_rate=0.02", *plain])
    out = user_data["root"] / "tuned.ckpt"
    fine_tune_from_config(cfg, out, steps=30, device="cpu", sitting=Sitting(save_every=30, progress=False))
    sources, settings = collect_particles(cfg), real_view_settings(cfg)
    before = fixed_batch_loss(user_data["start"], sources, settings)
    after = fixed_batch_loss(out, sources, settings)
    assert after < before - 0.1, (before, after)


def test_cli_fine_tunes_and_predict_loads_the_checkpoint(user_data):
    out = user_data["root"] / "tuned.ckpt"
    exported = user_data["root"] / "model.ckpt"
    result = run_cli(
        ["train", "-c", user_data["config"], "--from-data", "-o", out, "--export", exported, "--device", "cpu", "-q"]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert read_checkpoint(exported)["global_step"] == 4
    result = run_cli(
        ["predict", "-c", user_data["config"], "--set", f"trained_model={exported}", "--device", "cpu", "-q"]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cfg = load_config(user_data["config"])
    n_particles = sum(1 for s in collect_particles(cfg) if s.name.startswith("TS_01 "))
    embeddings = io.read_h5_dataset(user_data["root"] / "pred" / "TS_01_embeds.h5", "embeddings")
    assert embeddings.shape == (16, n_particles)  # [dim, N], CryoSiam's layout
    assert np.isfinite(embeddings).all()


@pytest.mark.parametrize("share", [0.25, 1.0])
def test_the_export_averages_the_fine_tuned_weights_with_the_starting_ones(user_data, share):
    """hyper_parameters.finetuned_share: --export's weights are share x the fine-tuned (the training
    checkpoint's, kept as trained for resuming) + (1 - share) x the starting checkpoint's; 1 keeps them."""
    out = user_data["root"] / "tuned.ckpt"
    exported = user_data["root"] / "model.ckpt"
    args = ["train", "-q", "-c", user_data["config"], "--from-data", "-o", out, "--export", exported, "--device", "cpu"]
    result = run_cli([*args, "--set", f"hyper_parameters.finetuned_share={share}"])
    assert result.returncode == 0, result.stdout + result.stderr
    tuned, start = read_checkpoint(out)["state_dict"], read_checkpoint(user_data["start"])["state_dict"]
    averaged = read_checkpoint(exported)["state_dict"]
    assert averaged.keys() == tuned.keys()
    moved = 0
    for key, value in tuned.items():
        if not value.is_floating_point():
            assert torch.equal(averaged[key], value), key
            continue
        expected = share * value + (1 - share) * start[key]
        assert torch.allclose(averaged[key], expected, atol=1e-7), key
        moved += not torch.equal(value, start[key])
    assert moved > 0  # fine-tuning changed weights, so the average is neither end
    assert ("weight_averaging" in read_checkpoint(exported)) == (share < 1)
    load_model(exported)  # predict's loader takes it


def test_averaging_with_another_network_is_a_one_line_error(user_data):
    from subtomo_embed.core.errors import ModelError
    from subtomo_embed.stages.training import export_model

    out = user_data["root"] / "tuned.ckpt"
    cfg = load_config(user_data["config"])
    fine_tune_from_config(cfg, out, steps=1, device="cpu", sitting=Sitting(progress=False))
    other = make_checkpoint(user_data["root"] / "other.ckpt", {**TINY_POOLED_NETWORK, "dim": 8}, seed=2)
    with pytest.raises(ModelError, match="not the fine-tuned one"):
        export_model(out, user_data["root"] / "model.ckpt", other, 0.5)
    assert not (user_data["root"] / "model.ckpt").exists()


def test_cli_fine_tunes_with_the_contrastive_term(user_data):
    """With contrast_weight, real pairs (each particle its own class) train with NT-Xent beside SimSiam."""
    out = user_data["root"] / "contrast.ckpt"
    args = ["train", "-q", "-c", user_data["config"], "--from-data", "-o", out, "--device", "cpu", "--steps", "2"]
    result = run_cli([*args, "--set", "hyper_parameters.contrast_weight=0.5"])
    assert result.returncode == 0, result.stdout + result.stderr
    state = read_checkpoint(out)[TRAIN_STATE_KEY]
    assert state["contrast_weight"] == 0.5
    assert all(np.isfinite(h["loss"]) for h in state["history"]) and state["history"][-1]["step"] == 2


def test_cli_workers_fine_tune_to_the_same_weights(user_data):
    """`train --from-data --workers 2` (the real particles' views made by forked workers, as on a GPU
    by default) gives the weights the background thread gives."""
    weights = []
    for workers in ("0", "2"):
        out = user_data["root"] / f"w{workers}.ckpt"
        args = ["train", "-c", user_data["config"], "--from-data", "-o", out, "--device", "cpu", "-q"]
        result = run_cli([*args, "--workers", workers])
        assert result.returncode == 0, result.stdout + result.stderr
        weights.append(read_checkpoint(out)["state_dict"])
    assert read_checkpoint(user_data["root"] / "w2.ckpt")["global_step"] == 4
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key


def test_from_checkpoint_option_overrides_trained_model(user_data):
    other = make_checkpoint(user_data["root"] / "other.ckpt", TINY_POOLED_NETWORK, seed=9)
    out = user_data["root"] / "from_other.ckpt"
    cfg = load_config(user_data["config"], ["trained_model=/nonexistent.ckpt"])
    fine_tune_from_config(cfg, out, start_from=other, steps=1, device="cpu", sitting=Sitting(progress=False))
    assert read_checkpoint(out)["global_step"] == 1


@pytest.mark.parametrize(
    "case, code, words",
    [
        ("no masks", 4, "no instance mask"),
        ("empty mask", 4, "no instances"),
        ("all filtered", 4, "no instances to train on"),
        ("no model", 3, "starting checkpoint"),
        ("from a missing checkpoint", 5, "missing.ckpt: checkpoint file does not exist"),
        ("class weight on real particles", 3, "class_weight needs simulated training"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(user_data, case, code, words):
    config = user_data["config"]
    args = ["train", "-q", "-c", config, "--from-data", "-o", user_data["root"] / "bad.ckpt", "--device", "cpu"]
    if case == "no masks":
        for f in user_data["masks"].iterdir():
            f.unlink()
    elif case == "empty mask":
        io.write_h5(user_data["masks"] / "TS_01_instance_preds.h5", {"instances": np.zeros((32, 48, 40), np.int32)})
    elif case == "all filtered":
        args += ["--set", "min_particle_size=100000"]
    elif case == "no model":
        args += ["--set", "trained_model=null"]
    elif case == "class weight on real particles":
        args += ["--set", "hyper_parameters.class_weight=1"]
    else:
        missing = user_data["root"] / "missing.ckpt"
        args = ["train", "-q", "--from", missing, "-o", user_data["root"] / "bad.ckpt", "--device", "cpu"]
    result = run_cli(args)
    assert result.returncode == code, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert not (user_data["root"] / "bad.ckpt").exists()
    if case == "class weight on real particles":
        assert Path(config).name in lines[0] and "set it to 0" in lines[0]  # names the config and the fix


def test_simulated_training_can_start_from_a_checkpoint(user_data):
    """`train --from CKPT` without --from-data: simulated pairs (here all assemblies), the starting
    checkpoint's network and weights, not the config's fresh one."""
    out = user_data["root"] / "sim_from.ckpt"
    args = ["train", "-q", "--from", user_data["start"], "-o", out, "--device", "cpu", "--steps", "1"]
    args += ["--set", "hyper_parameters.batch_size=2", "--set", "hyper_parameters.assembly_fraction=1"]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr
    ckpt = read_checkpoint(out)
    assert ckpt["global_step"] == 1
    assert ckpt[TRAIN_STATE_KEY]["pairs"]["assembly_fraction"] == 1.0
    assert ckpt["hyper_parameters"]["config"]["hyper_parameters"]["max_steps"] == 1  # --steps, as run
    start = read_checkpoint(user_data["start"])["state_dict"]
    assert ckpt["state_dict"].keys() == start.keys()  # the tiny starting network, not the demo config's
    assert any(not torch.equal(ckpt["state_dict"][k], v) for k, v in start.items())  # and it trained


def test_a_large_instance_is_viewed_in_a_cube_of_the_patch_diagonal(user_data):
    """Instances larger than an 8³ patch: the rotated view is cut from a bounded cube and still holds the particle."""
    cfg = load_config(user_data["config"], ["parameters.data.patch_size=[8,8,8]", "masking_type=2"])
    settings = real_view_settings(cfg)
    rng = np.random.default_rng(4)
    for source in collect_particles(cfg):
        view = make_real_view(source, rng, settings)
        assert view.shape == (8, 8, 8)
        assert np.count_nonzero(view) > 8 * 8 * 8 // 4, source.name  # the particle fills most of the patch


# --------------------------------------------------------------------------------------------
# fine-tuning from picks (no masks): predict-centers' boxes


@pytest.fixture
def picked_data(user_data):
    """The same tomograms with their instances' centroids as picks (a CSV naming the tomogram) and no masks."""
    import pandas as pd

    rows = []
    for source in collect_particles(load_config(user_data["config"])):
        stem = source.name.split(" label ")[0]
        centre = [(s.start + s.stop - 1) / 2 for s in source.region.box]
        rows.append({"tomogram": stem, "z": centre[0], "y": centre[1], "x": centre[2]})
    picks = user_data["root"] / "picks.csv"
    pd.DataFrame(rows).to_csv(picks, index=False)
    config = write_config(
        user_data["root"] / "picks.yaml",
        data_folder=user_data["root"] / "data",
        prediction_folder=user_data["root"] / "pred_picks",
        log_dir=user_data["root"],
        trained_model=user_data["start"],
        centers_file=picks,
        centers_patch_size=12,
        centers={"mask_radius": 5.0, "border": "skip"},
        parameters__data__patch_size=[16, 16, 16],
        hyper_parameters={"batch_size": 4, "learning_rate": 0.003, "max_steps": 2},
        seed=5,
    )
    return {**user_data, "picks_config": config, "n_picks": len(rows)}


def test_an_unaugmented_pick_view_is_what_predict_centers_embeds(picked_data):
    """Every pick whose box lies inside its tomogram: the identity view, embedded by the same model,
    equals predict-centers' written embedding (its own run, its own patch function)."""
    from subtomo_embed.core.real_views import PickSource, make_real_pair
    from subtomo_embed.stages.training import training_particles

    config = picked_data["picks_config"]
    result = run_cli(["predict-centers", "-q", "-c", config, "--device", "cpu"])
    assert result.returncode == 0, result.stderr
    cfg = load_config(config)
    sources = training_particles(cfg)
    assert all(isinstance(s, PickSource) for s in sources) and 2 <= len(sources) <= picked_data["n_picks"]
    model, _ = load_model(picked_data["start"], contrastive=True)
    identity = real_view_settings(cfg).identity()
    written = {}
    for stem in ("TS_01", "TS_02"):
        with h5py.File(picked_data["root"] / "pred_picks" / f"{stem}_embeds.h5") as f:
            written[stem] = f["embeddings"][()].T
    rng = np.random.default_rng(0)
    by_stem: dict = {}
    for source in sources:
        by_stem.setdefault(source.name.split(" pick ")[0], []).append(source)
    for stem, picks in by_stem.items():
        views = np.stack([make_real_pair([p], rng, identity)[0] for p in picks])
        with torch.no_grad():
            mine = model.embed(torch.from_numpy(views[:, None]), True).numpy()
        np.testing.assert_allclose(mine, written[stem], atol=1e-5)
    # augmented views of one pick differ from each other and from the identity view, and stay finite
    a, b, _ = make_real_pair(sources[:1], rng, real_view_settings(cfg))
    assert np.isfinite(a).all() and not np.array_equal(a, b)


def test_fine_tuning_from_picks_writes_a_checkpoint_predict_loads(picked_data):
    out = picked_data["root"] / "picks.ckpt"
    result = run_cli(["train", "-q", "-c", picked_data["picks_config"], "--from-data", "-o", out, "--device", "cpu"])
    assert result.returncode == 0, result.stderr
    ckpt = read_checkpoint(out)
    assert ckpt["global_step"] == 2
    model, network = load_model(out, contrastive=True)
    assert network["dim"] == 16


def test_picks_of_other_tomograms_only_is_a_one_line_error_and_exit_4(picked_data):
    import pandas as pd

    picks = picked_data["root"] / "picks.csv"
    table = pd.read_csv(picks)
    table["tomogram"] = "TS_99"
    table.to_csv(picks, index=False)
    out = picked_data["root"] / "none.ckpt"
    result = run_cli(["train", "-q", "-c", picked_data["picks_config"], "--from-data", "-o", out, "--device", "cpu"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # the picks are checked against the selected tomograms before anything else (issue 31)
    assert result.returncode == 4 and "picks name none of the" in lines[-1] and "'TS_99'" in lines[-1], result.stderr
    assert "Traceback" not in result.stderr and lines[-1].startswith("input error: ") and "picks.csv" in lines[-1]
    assert not out.exists()
