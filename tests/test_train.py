"""Training: views cut exactly as predict cuts them, CryoSiam's checkpoint layout, resume."""

import numpy as np
import pytest
import torch
import yaml
from synthetic import TINY_POOLED_NETWORK

from subtomo_embed.core.config import load_config
from subtomo_embed.core.extract import Normalization
from subtomo_embed.core.model import load_model, read_checkpoint
from subtomo_embed.core.simulate import random_particle
from subtomo_embed.core.train import (
    OPTIMIZER_KEY,
    TRAIN_STATE_KEY,
    Sitting,
    TrainingSettings,
    ViewSettings,
    embedding_spread,
    extract_view,
    make_pair,
    train,
    view_volume,
)

NET = TINY_POOLED_NETWORK
NORM = Normalization(-2, 3, 0.4, 0.2)
SETTINGS = ViewSettings((16, 16, 16), 1, 1, NORM, size_range=(3.0, 4.0))
QUIET = Sitting(progress=False)
CRYOSIAM_TOP_KEYS = {"epoch", "global_step", "pytorch-lightning_version", "state_dict", "hyper_parameters"}


def test_a_view_is_the_patch_predict_cuts(tmp_path):
    """Write one view as a tomogram + CryoSiam mask, run the pipeline's extract: same patch."""
    from subtomo_embed.core import h5files, io
    from subtomo_embed.stages.extraction import run_extract

    rng = np.random.default_rng(0)
    volume, mask = view_volume(random_particle(rng, size_range=(3, 4)), rng, SETTINGS)
    patch = extract_view(volume, mask, SETTINGS)
    io.write_mrc(tmp_path / "data" / "v.mrc", volume)
    io.write_h5(tmp_path / "masks" / "v_instance_preds.h5", {"instances": mask})
    cfg = load_config(
        None,
        [
            f"data_folder={tmp_path / 'data'}",
            f"instances_mask_folder={tmp_path / 'masks'}",
            f"prediction_folder={tmp_path / 'out'}",
            "masking_type=1",
            "expand_labels=1",
            "parameters.data.patch_size=[16,16,16]",
            "parameters.data.min=-2",
            "parameters.data.max=3",
            "parameters.data.mean=0.4",
            "parameters.data.std=0.2",
        ],
    )
    [patches_file] = run_extract(cfg)
    [expected] = list(h5files.iter_patches_file(patches_file))
    np.testing.assert_array_equal(patch, expected)
    assert (patch == 0).mean() > 0.3  # hull-masked and zero-padded


def test_pairs_share_the_particle_not_the_noise():
    a, b, cls = make_pair(np.random.default_rng(1), SETTINGS)
    assert a.shape == b.shape == (16, 16, 16) and 0 <= cls < 5
    assert not np.array_equal(a, b)
    assert not np.array_equal(a != 0, b != 0)  # not even the same mask outline


def test_spread_sees_collapse():
    assert embedding_spread(torch.randn(64, 32)) == pytest.approx(1.0, abs=0.15)
    assert embedding_spread(torch.ones(64, 32) + 1e-4 * torch.randn(64, 32)) < 0.05


def test_checkpoint_has_cryosiam_layout_loads_and_resumes(tmp_path):
    cfg = load_config(None, ["parameters.data.patch_size=[16,16,16]"])
    out = tmp_path / "last.ckpt"
    train(
        cfg.model_dump(by_alias=True),
        NET,
        TrainingSettings(SETTINGS, 2, batch_size=4),
        out,
        sitting=Sitting(save_every=1, progress=False),
    )
    ckpt = read_checkpoint(out)
    assert set(ckpt) == CRYOSIAM_TOP_KEYS | {OPTIMIZER_KEY, TRAIN_STATE_KEY}
    assert ckpt["global_step"] == 2
    assert set(ckpt["hyper_parameters"]) == {"config", "backbone_config"}
    for section in ("config", "backbone_config"):
        network = ckpt["hyper_parameters"][section]["parameters"]["network"]
        # the keys CryoSiam's loader reads (cryosiam.apps.simsiam_prediction.utils.load_prediction_model)
        for key in (
            "block_type",
            "in_channels",
            "spatial_dims",
            "num_layers",
            "num_filters",
            "no_max_pool",
            "dim",
            "pred_dim",
        ):
            assert network[key] == NET[key]
    assert all(k.startswith(("_model.encoder.", "_model.predictor.")) for k in ckpt["state_dict"])
    model, network = load_model(out, contrastive=True)
    assert network["dim"] == 16
    # the stored config is a valid config file again
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(ckpt["hyper_parameters"]["config"]))
    assert load_config(tmp_path / "again.yaml").parameters.network.num_filters == [4, 8, 8, 16]

    before = {k: v.clone() for k, v in ckpt["state_dict"].items()}
    train(
        cfg.model_dump(by_alias=True),
        NET,
        TrainingSettings(SETTINGS, 3, batch_size=4),
        out,
        sitting=Sitting(save_every=1, progress=False),
    )
    again = read_checkpoint(out)
    assert again["global_step"] == 3
    assert [h["step"] for h in again[TRAIN_STATE_KEY]["history"]][-1] == 3
    assert any(not torch.equal(before[k], again["state_dict"][k]) for k in before)


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    cfg = load_config(None, ["parameters.data.patch_size=[16,16,16]"]).model_dump(by_alias=True)
    once, twice = tmp_path / "once.ckpt", tmp_path / "twice.ckpt"
    train(cfg, NET, TrainingSettings(SETTINGS, 3, batch_size=4, seed=7), once, sitting=QUIET)
    train(cfg, NET, TrainingSettings(SETTINGS, 1, batch_size=4, seed=7), twice, sitting=QUIET)
    # same schedule: the second sitting is told the same total
    train(cfg, NET, TrainingSettings(SETTINGS, 3, batch_size=4, seed=7), twice, sitting=QUIET)
    a, b = read_checkpoint(once)["state_dict"], read_checkpoint(twice)["state_dict"]
    assert read_checkpoint(twice)["global_step"] == 3
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
