"""Training: views cut exactly as predict cuts them, CryoSiam's checkpoint layout, resume."""

import numpy as np
import pytest
import torch
import yaml
from synthetic import TINY_POOLED_NETWORK

from subtomo_embed.core.config import load_config
from subtomo_embed.core.errors import ConfigError
from subtomo_embed.core.model import load_model, read_checkpoint
from subtomo_embed.core.patch_contract import Normalization, PatchContract
from subtomo_embed.core.simulate import random_particle
from subtomo_embed.core.simulated_views import (
    ViewSettings,
    class_targets,
    extract_view,
    make_pair,
    simulated_class_count,
    view_volume,
)
from subtomo_embed.core.train import (
    CLASS_HEAD_KEY,
    OPTIMIZER_KEY,
    TRAIN_STATE_KEY,
    Sitting,
    TrainingSettings,
    class_contrastive_loss,
    embedding_spread,
    train,
)
from subtomo_embed.stages.training import export_model

NET = TINY_POOLED_NETWORK
NORM = Normalization(-2, 3, 0.4, 0.2)
CONTRACT_16 = PatchContract((16, 16, 16), 1, 1, NORM)
SETTINGS = ViewSettings(CONTRACT_16, size_range=(3.0, 4.0))
QUIET = Sitting(progress=False)
ASSEMBLY_16 = ViewSettings(CONTRACT_16, size_range=(3.0, 4.0), assembly_fraction=0.5)
CRYOSIAM_TOP_KEYS = {"epoch", "global_step", "pytorch-lightning_version", "state_dict", "hyper_parameters"}


def test_a_view_is_the_patch_predict_cuts(tmp_path):
    """Write one view as a tomogram + CryoSiam mask, run the pipeline's extract: same patch."""
    from subtomo_embed.core import h5files, io, volumes
    from subtomo_embed.stages.extraction import run_extract

    rng = np.random.default_rng(0)
    volume, mask = view_volume(random_particle(rng, size_range=(3, 4)), rng, SETTINGS)
    patch = extract_view(volume, mask, SETTINGS)
    volumes.write_mrc(tmp_path / "data" / "v.mrc", volume)
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


ASSEMBLY_SETTINGS = ViewSettings(PatchContract((32, 32, 32), 1, 2, NORM), assembly_fraction=1.0)


def test_assembly_pairs_are_two_simulations_of_one_arrangement():
    """Each view its own orientation, noise and mask; both centred in predict's patch; the class
    drawn from the training class seeds (never the small seeds the docs evaluate on)."""
    from subtomo_embed.core.assemblies import ARRANGEMENTS
    from subtomo_embed.core.simulated_views import ASSEMBLY_CLASS_OFFSET, TRAINING_CLASS_SEEDS

    rng = np.random.default_rng(2)
    for _ in range(3):
        a, b, cls = make_pair(rng, ASSEMBLY_SETTINGS)
        assert ASSEMBLY_CLASS_OFFSET <= cls < ASSEMBLY_CLASS_OFFSET + len(ARRANGEMENTS)
        assert a.shape == b.shape == (32, 32, 32) and not np.array_equal(a != 0, b != 0)
        for view in (a, b):
            inside = np.argwhere(view != 0)
            assert 0.03 < len(inside) / view.size < 0.5  # hull-masked: the particle, not the box
            np.testing.assert_allclose(inside.mean(axis=0), 15.5, atol=2.0)  # centred as predict centres
    assert TRAINING_CLASS_SEEDS[0] >= 1_000_000


def test_assembly_fraction_mixes_the_two_kinds_of_pairs():
    from dataclasses import replace

    from subtomo_embed.core.simulated_views import ASSEMBLY_CLASS_OFFSET

    rng = np.random.default_rng(3)
    half = replace(ASSEMBLY_SETTINGS, assembly_fraction=0.5)
    kinds = [make_pair(rng, half)[2] >= ASSEMBLY_CLASS_OFFSET for _ in range(40)]
    assert 8 <= sum(kinds) <= 32  # binomial(40, 0.5): outside this with probability < 1e-4
    shapes_only = replace(ASSEMBLY_SETTINGS, assembly_fraction=0.0)
    assert all(make_pair(rng, shapes_only)[2] < 5 for _ in range(5))


def test_family_set_fraction_draws_class_sets_of_one_family_that_differ_only_in_order():
    """family_set_fraction 1: every assembly pair's class set is rings or double rings of several orders,
    one diameter and one mass; 0 keeps the mixed class sets and the very same stream of pairs."""
    from dataclasses import replace

    from subtomo_embed.core.simulated_views import ORDER_FAMILIES, training_class_set

    orders = replace(ASSEMBLY_SETTINGS, family_set_fraction=1.0)
    rng = np.random.default_rng(4)
    families_seen = set()
    for _ in range(12):
        classes = training_class_set(rng, orders)
        families = {c.family for c in classes}
        assert len(families) == 1 and families <= set(ORDER_FAMILIES) and 3 <= len(classes) <= 5
        assert len({c.centres.round(3).tobytes() for c in classes}) == len(classes)  # distinct arrangements
        assert len({round(c.outer_radius, 6) for c in classes}) == 1  # one envelope
        masses = {round(len(c.centres) * c.subunit_radius**3, 4) for c in classes}
        assert len(masses) == 1  # one mass: only the order (and a double ring's height) differ
        families_seen |= families
    assert families_seen == set(ORDER_FAMILIES)
    mixed = replace(ASSEMBLY_SETTINGS, family_set_fraction=0.0)
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    first, second = make_pair(a, mixed), make_pair(b, ASSEMBLY_SETTINGS)
    assert first[2] == second[2] and np.array_equal(first[0], second[0])


def test_the_classifier_term_leaves_out_pairs_that_are_not_the_simulators():
    from subtomo_embed.core.simulated_views import ASSEMBLY_CLASS_OFFSET, SIMULATED_CLASS_END
    from subtomo_embed.core.train import class_loss

    torch.manual_seed(0)
    head = torch.nn.Linear(8, simulated_class_count())
    z1, z2 = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8)
    classes = np.array([1, SIMULATED_CLASS_END, ASSEMBLY_CLASS_OFFSET + 3, SIMULATED_CLASS_END + 7, 2, 1_000_000])
    keep = [0, 2, 4]
    mixed = class_loss(head, z1, z2, classes)
    assert mixed.item() == pytest.approx(class_loss(head, z1[keep], z2[keep], classes[keep]).item(), rel=1e-6)
    none = class_loss(head, z1[[1, 3, 5]], z2[[1, 3, 5]], classes[[1, 3, 5]])
    assert none.item() == 0.0
    none.backward()  # a batch of structures only still trains (a zero gradient)
    assert z1.grad is not None and float(z1.grad.abs().sum()) == 0.0


def test_scaled_assembly_keeps_its_arrangement():
    from subtomo_embed.core.assemblies import random_class_set, scaled

    a = random_class_set(5, 3)[0]
    b = scaled(a, 1.1)
    np.testing.assert_allclose(b.centres, a.centres * 1.1)
    assert b.outer_radius == pytest.approx(a.outer_radius * 1.1) and b.family == a.family


def test_spread_sees_collapse():
    assert embedding_spread(torch.randn(64, 32)) == pytest.approx(1.0, abs=0.15)
    assert embedding_spread(torch.ones(64, 32) + 1e-4 * torch.randn(64, 32)) < 0.05


def test_class_contrastive_loss_with_every_pair_its_own_class_is_nt_xent():
    torch.manual_seed(0)
    p1, p2 = torch.randn(6, 8), torch.randn(6, 8)
    z = torch.nn.functional.normalize(torch.cat([p1, p2]), dim=1)
    logits = z @ z.T / 0.5 - torch.eye(12) * 1e9
    partner = torch.cat([torch.arange(6, 12), torch.arange(0, 6)])  # view i's other view
    nt_xent = torch.nn.functional.cross_entropy(logits, partner)
    assert float(class_contrastive_loss(p1, p2, np.arange(6), 0.5)) == pytest.approx(float(nt_xent), rel=1e-5)


def test_class_contrastive_loss_pulls_a_class_together():
    """Two classes of two pairs each, every view of a class on one axis: each view has 3 positives at
    cosine 1 and 4 negatives at cosine 0, so the loss is log(3 e^(1/t) + 4) - 1/t; with the classes
    crossed (each pair's class partner on the other axis) it is larger."""
    e1, e2 = torch.eye(4)[0], torch.eye(4)[1]
    p = torch.stack([e1, e1, e2, e2])
    t = 0.2
    expected = np.log(3 * np.exp(1 / t) + 4) - 1 / t
    assert float(class_contrastive_loss(p, p.clone(), np.array([0, 0, 1, 1]), t)) == pytest.approx(expected, rel=1e-5)
    assert float(class_contrastive_loss(p, p.clone(), np.array([0, 1, 0, 1]), t)) > expected + 1.0


def test_contrast_weight_changes_the_run_and_is_recorded(tmp_path):
    cfg = load_config(None, ["parameters.data.patch_size=[16,16,16]"]).model_dump(by_alias=True)
    runs = {}
    for weight in (0.0, 1.0):
        runs[weight] = tmp_path / f"c{weight}.ckpt"
        settings = TrainingSettings(SETTINGS, 2, batch_size=4, seed=5, contrast_weight=weight)
        train(cfg, NET, settings, runs[weight], sitting=QUIET)
    plain, contrast = (read_checkpoint(runs[w]) for w in (0.0, 1.0))
    assert contrast[TRAIN_STATE_KEY]["contrast_weight"] == 1.0 and plain[TRAIN_STATE_KEY]["contrast_weight"] == 0.0
    assert contrast[TRAIN_STATE_KEY]["contrast_temperature"] == 0.2
    # same batches, same start: only the loss differs, and so do the weights
    assert any(not torch.equal(plain["state_dict"][k], contrast["state_dict"][k]) for k in plain["state_dict"])
    # the logged loss includes the term: NT-Xent/SupCon is positive, SimSiam's alone is at most 1
    assert contrast[TRAIN_STATE_KEY]["history"][-1]["loss"] > plain[TRAIN_STATE_KEY]["history"][-1]["loss"]


def test_class_targets_number_shapes_then_arrangements():
    from subtomo_embed.core.assemblies import ARRANGEMENTS
    from subtomo_embed.core.simulate import CLASSES
    from subtomo_embed.core.simulated_views import ASSEMBLY_CLASS_OFFSET

    ids = [0, 4, ASSEMBLY_CLASS_OFFSET, ASSEMBLY_CLASS_OFFSET + len(ARRANGEMENTS) - 1]
    assert class_targets(ids).tolist() == [0, 4, 5, 4 + len(ARRANGEMENTS)]
    assert simulated_class_count() == len(CLASSES) + len(ARRANGEMENTS) == 43


def test_class_weight_trains_a_classifier_kept_beside_the_network_and_resumes(tmp_path):
    """The classifier of class_weight is saved outside the state_dict (CryoSiam's layout unchanged, predict
    loads the checkpoint), trains, and a resumed run equals an uninterrupted one; resuming it without
    class_weight is a one-line config error."""
    cfg = load_config(None, ["parameters.data.patch_size=[16,16,16]"]).model_dump(by_alias=True)
    settings = {n: TrainingSettings(ASSEMBLY_16, n, batch_size=4, seed=3, class_weight=1.0) for n in (1, 3)}
    once, twice = tmp_path / "once.ckpt", tmp_path / "twice.ckpt"
    train(cfg, NET, settings[3], once, sitting=QUIET)
    train(cfg, NET, settings[1], twice, sitting=QUIET)
    first_head = {k: v.clone() for k, v in read_checkpoint(twice)[CLASS_HEAD_KEY].items()}
    train(cfg, NET, settings[3], twice, sitting=QUIET)
    a, b = read_checkpoint(once), read_checkpoint(twice)
    assert a[TRAIN_STATE_KEY]["class_weight"] == 1.0
    assert a[CLASS_HEAD_KEY]["weight"].shape == (simulated_class_count(), NET["dim"])
    assert not torch.equal(first_head["weight"], b[CLASS_HEAD_KEY]["weight"])  # it trained
    assert all(k.startswith(("_model.encoder.", "_model.predictor.")) for k in a["state_dict"])
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a[CLASS_HEAD_KEY]["weight"], b[CLASS_HEAD_KEY]["weight"], rtol=1e-4, atol=1e-5)
    load_model(once, contrastive=True)
    exported = export_model(once, tmp_path / "exported.ckpt")
    assert CLASS_HEAD_KEY not in read_checkpoint(exported) and OPTIMIZER_KEY not in read_checkpoint(exported)
    more = TrainingSettings(ASSEMBLY_16, 4, batch_size=4, seed=3)
    with pytest.raises(ConfigError, match="trained with hyper_parameters.class_weight"):
        train(cfg, NET, more, once, sitting=QUIET)


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
    assert ckpt["hyper_parameters"]["config"]["hyper_parameters"]["max_steps"] == 2  # the run's, not the config's

    before = {k: v.clone() for k, v in ckpt["state_dict"].items()}
    train(
        cfg.model_dump(by_alias=True),
        NET,
        TrainingSettings(SETTINGS, 3, batch_size=4),
        out,
        sitting=Sitting(save_every=1, progress=False),
    )
    again = read_checkpoint(out)
    assert again["global_step"] == 3 and again["hyper_parameters"]["config"]["hyper_parameters"]["max_steps"] == 3
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


def test_worker_processes_make_the_same_run(tmp_path, caplog):
    """Batches made by two forked workers (a DataLoader) are the ones the background thread makes:
    the weights after 3 steps are the same, and the log says the workers were used."""
    cfg = load_config(None, ["parameters.data.patch_size=[16,16,16]"]).model_dump(by_alias=True)
    runs = {}
    for workers in (0, 2):
        runs[workers] = tmp_path / f"w{workers}.ckpt"
        sitting = Sitting(progress=False, workers=workers)
        with caplog.at_level("INFO", logger="subtomo_embed.core.train"):
            caplog.clear()
            train(cfg, NET, TrainingSettings(SETTINGS, 3, batch_size=4, seed=11), runs[workers], sitting=sitting)
        used = "simulating batches on 2 worker processes" in caplog.text
        assert used == (workers == 2), caplog.text
    a, b = read_checkpoint(runs[0])["state_dict"], read_checkpoint(runs[2])["state_dict"]
    assert read_checkpoint(runs[2])["global_step"] == 3
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_an_error_in_a_batch_worker_reaches_the_run(tmp_path):
    """A user-facing error raised while a worker makes a batch stops the run with its own one-line text."""
    from subtomo_embed.core.errors import InputDataError

    def broken(rng):
        raise InputDataError("no particle in this view", "view.mrc")

    cfg = load_config(None, ["parameters.data.patch_size=[16,16,16]"]).model_dump(by_alias=True)
    ckpt = tmp_path / "broken.ckpt"
    with pytest.raises(InputDataError) as raised:
        train(
            cfg,
            NET,
            TrainingSettings(SETTINGS, 2, batch_size=4),
            ckpt,
            "cpu",
            Sitting(progress=False, workers=2),
            broken,
        )
    assert str(raised.value) == "view.mrc: no particle in this view"  # one line, as the thread raises it
    assert not ckpt.exists()


def test_batch_workers_default_to_none_on_a_cpu():
    from subtomo_embed.core.pair_stream import batch_workers
    from subtomo_embed.core.parallel import default_workers

    assert batch_workers(None, torch.device("cpu")) == 0
    assert batch_workers(None, torch.device("cuda")) == default_workers()
    assert batch_workers(3, torch.device("cpu")) == 3
