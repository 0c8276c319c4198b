"""The SimSiam network and the safe loading of CryoSiam Lightning checkpoints."""

import os
import sys
import types

import numpy as np
import pytest
import torch
from synthetic import TINY_NETWORK, make_checkpoint

from subtomo_embed.core.errors import ModelError
from subtomo_embed.core.model import build_simsiam, lightning_checkpoint, load_model, read_checkpoint


def test_round_trip_same_embeddings(tmp_path):
    path = make_checkpoint(tmp_path / "m.ckpt")
    model, network = load_model(path, contrastive=True)
    assert network["dim"] == 16 and not model.training
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt["hyper_parameters"]) == {"config", "backbone_config"}
    assert all(k.startswith("_model.") for k in ckpt["state_dict"])
    assert any(k.startswith("_model.encoder.fc.7") for k in ckpt["state_dict"])  # BatchNorm1d(dim, affine=False)
    again, _ = load_model(path, contrastive=False)
    x = torch.randn(3, 1, 12, 12, 12)
    with torch.no_grad():
        e = model.embed(x, True)
        torch.testing.assert_close(e, again.embed(x, True))
        torch.testing.assert_close(e.norm(dim=1), torch.ones(3))  # L2-normalized predictor output
        assert model.embed(x, False).shape == (3, 16)


def test_key_layout_matches_cryosiam_module_names():
    keys = set(build_simsiam(TINY_NETWORK).state_dict())
    for k in [
        "encoder.conv1.weight",
        "encoder.bn1.running_mean",
        "encoder.layer1.0.conv1.weight",
        "encoder.layer2.0.downsample.0.weight",
        "encoder.fc.0.weight",
        "encoder.fc.6.weight",
        "encoder.fc.6.bias",
        "predictor.0.weight",
        "predictor.3.bias",
    ]:
        assert k in keys, k
    assert "encoder.fc.0.bias" not in keys and "predictor.0.bias" not in keys


def test_lightning_attribute_dict_loads_without_lightning(tmp_path, monkeypatch):
    mod = types.ModuleType("lightning.fabric.utilities.data")

    class AttributeDict(dict):
        pass

    AttributeDict.__module__ = "lightning.fabric.utilities.data"
    AttributeDict.__qualname__ = "AttributeDict"
    mod.AttributeDict = AttributeDict
    for name in ["lightning", "lightning.fabric", "lightning.fabric.utilities"]:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "lightning.fabric.utilities.data", mod)
    model = build_simsiam(TINY_NETWORK)
    ckpt = lightning_checkpoint(model, {"parameters": {"network": TINY_NETWORK}})
    ckpt["hyper_parameters"] = AttributeDict(ckpt["hyper_parameters"])
    torch.save(ckpt, tmp_path / "l.ckpt")
    for name in ["lightning", "lightning.fabric", "lightning.fabric.utilities", "lightning.fabric.utilities.data"]:
        monkeypatch.delitem(sys.modules, name)
    loaded, network = load_model(tmp_path / "l.ckpt")
    assert network["num_filters"] == TINY_NETWORK["num_filters"]


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = _RunsCode()
    evil.marker = marker
    ckpt = lightning_checkpoint(build_simsiam(TINY_NETWORK), {"parameters": {"network": TINY_NETWORK}})
    ckpt["callbacks"] = evil
    torch.save(ckpt, tmp_path / "evil.ckpt")
    with pytest.raises(ModelError, match="refusing to load"):
        load_model(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_truncated_checkpoint(tmp_path):
    path = make_checkpoint(tmp_path / "m.ckpt")
    data = path.read_bytes()
    (tmp_path / "t.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        read_checkpoint(tmp_path / "t.ckpt")


def test_missing_and_mismatched_keys_are_named(tmp_path):
    model = build_simsiam(TINY_NETWORK)
    ckpt = lightning_checkpoint(model, {"parameters": {"network": TINY_NETWORK}})
    del ckpt["state_dict"]["_model.predictor.0.weight"]
    torch.save(ckpt, tmp_path / "missing.ckpt")
    with pytest.raises(ModelError, match="missing keys.*predictor.0.weight"):
        load_model(tmp_path / "missing.ckpt")
    other = dict(TINY_NETWORK, num_filters=[8, 8, 8, 16])
    ckpt = lightning_checkpoint(build_simsiam(other), {"parameters": {"network": TINY_NETWORK}})
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(ModelError, match="shape mismatches.*encoder.conv1.weight"):
        load_model(tmp_path / "other.ckpt")


def test_contrastive_false_reads_config_section(tmp_path):
    model = build_simsiam(TINY_NETWORK)
    ckpt = lightning_checkpoint(model, {"parameters": {"network": TINY_NETWORK}})
    del ckpt["hyper_parameters"]["backbone_config"]
    torch.save(ckpt, tmp_path / "c.ckpt")
    load_model(tmp_path / "c.ckpt", contrastive=False)
    del ckpt["hyper_parameters"]["config"]
    torch.save(ckpt, tmp_path / "none.ckpt")
    with pytest.raises(ModelError, match="hyper_parameters\\['config'\\]"):
        load_model(tmp_path / "none.ckpt", contrastive=False)


def test_old_monai_checkpoint_without_downsample_bias(tmp_path):
    model = build_simsiam(TINY_NETWORK, bias_downsample=False)
    ckpt = lightning_checkpoint(model, {"parameters": {"network": TINY_NETWORK}})
    assert not any("downsample.0.bias" in k for k in ckpt["state_dict"])
    torch.save(ckpt, tmp_path / "old.ckpt")
    load_model(tmp_path / "old.ckpt")


# --- issue 13 (bounded resources) and issue 14 item 6 (one set of defaults, the input contract) ---------


def _save(tmp_path, name, ckpt):
    torch.save(ckpt, tmp_path / name)
    return tmp_path / name


def _with_network(network, stored=None):
    ckpt = lightning_checkpoint(build_simsiam(network), {"parameters": {"network": stored or network}})
    return ckpt


def test_network_defaults_are_the_configs():
    from subtomo_embed.core.config import NetworkConfig
    from subtomo_embed.core.model import NETWORK_DEFAULTS

    assert NETWORK_DEFAULTS == NetworkConfig().model_dump() and NETWORK_DEFAULTS["dim"] == 1024
    with torch.device("meta"):
        model = build_simsiam({})
    assert model.encoder.fc[6].weight.shape[0] == 1024 and model.predictor[0].weight.shape[0] == 512


def test_dims_a_stored_config_leaves_out_are_read_from_the_weights(tmp_path):
    stored = {k: v for k, v in TINY_NETWORK.items() if k not in ("dim", "pred_dim", "in_channels")}
    model, network = load_model(_save(tmp_path, "m.ckpt", _with_network(TINY_NETWORK, stored)))
    assert network["dim"] == 16 and network["pred_dim"] == 8 and network["in_channels"] == 1
    assert model.embed(torch.randn(2, 1, 12, 12, 12)).shape == (2, 16)


def test_an_enormous_network_in_a_small_checkpoint_is_refused_without_building_it(tmp_path):
    huge = dict(TINY_NETWORK, num_filters=[2**16] * 4, dim=2**30)  # ~10^14 weights if it were built
    with pytest.raises(ModelError, match="shape mismatches"):  # a real build would fail on memory instead
        load_model(_save(tmp_path, "huge.ckpt", _with_network(TINY_NETWORK, huge)))
    deep = dict(TINY_NETWORK, num_layers=[10**7, 1, 1, 1])
    with pytest.raises(ModelError, match=r"asks for 10000003 residual blocks, the weights hold 4"):
        load_model(_save(tmp_path, "deep.ckpt", _with_network(TINY_NETWORK, deep)))
    with pytest.raises(ModelError, match=r"parameters\.network is not valid \(num_filters"):
        load_model(_save(tmp_path, "bad.ckpt", _with_network(TINY_NETWORK, dict(TINY_NETWORK, num_filters="x"))))


def test_weights_that_are_not_finite_or_not_float_are_refused(tmp_path):
    ckpt = _with_network(TINY_NETWORK)
    ckpt["state_dict"]["_model.encoder.conv1.weight"][0] = float("nan")
    with pytest.raises(ModelError, match=r"1 weights hold NaN or Inf values \(e\.g\. encoder\.conv1\.weight"):
        load_model(_save(tmp_path, "nan.ckpt", ckpt))
    ckpt = _with_network(TINY_NETWORK)
    ckpt["state_dict"]["_model.predictor.0.weight"] = ckpt["state_dict"]["_model.predictor.0.weight"].int()
    with pytest.raises(ModelError, match=r"wrong kind of number \(e\.g\. predictor\.0\.weight"):
        load_model(_save(tmp_path, "int.ckpt", ckpt))
    ckpt = _with_network(TINY_NETWORK)
    ckpt["state_dict"]["_model.predictor.0.weight"] = [1, 2]
    with pytest.raises(ModelError, match=r"not tensors \(e\.g\. predictor\.0\.weight"):
        load_model(_save(tmp_path, "list.ckpt", ckpt))


def test_half_precision_weights_load_as_float32_with_their_values(tmp_path):
    ckpt = _with_network(TINY_NETWORK)
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in ckpt["state_dict"].items()}
    ckpt["state_dict"] = half
    model, _ = load_model(_save(tmp_path, "half.ckpt", ckpt))
    weight = model.encoder.conv1.weight
    assert weight.dtype == torch.float32 and torch.equal(weight, half["_model.encoder.conv1.weight"].float())


def test_a_folder_or_device_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ModelError, match="is a folder, not a checkpoint file"):
        read_checkpoint(tmp_path)
    with pytest.raises(ModelError, match="not a regular file"):
        read_checkpoint("/dev/zero")


def _contract_config(**data):
    from subtomo_embed.core.config import config_from_dict

    overrides = [f"parameters.data.{k}={v}" for k, v in data.items()]
    return config_from_dict(
        {"parameters": {"data": {"patch_size": [12, 12, 12]}}, "masking_type": 1}, "run.yaml", overrides
    )


def _trained_with(tmp_path, data: dict, masking_type=1):
    config = {"parameters": {"network": TINY_NETWORK, "data": data}, "masking_type": masking_type}
    ckpt = lightning_checkpoint(build_simsiam(TINY_NETWORK), config)
    return _save(tmp_path, "trained.ckpt", ckpt)


def test_the_input_contract_is_compared_and_a_difference_warned(tmp_path, caplog):
    path = _trained_with(tmp_path, {"patch_size": [12, 12, 12], "min": 0, "max": 1, "mean": 0, "std": 1})
    with caplog.at_level("WARNING"):
        load_model(path, run_config=_contract_config())
    assert "differs" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_model(path, run_config=_contract_config(patch_size="[16,16,16]", std=0.5))
    assert "trained.ckpt: this run's input differs from what the model was trained on" in caplog.text
    assert (
        "parameters.data.patch_size [12, 12, 12] in training, [16, 16, 16] here "
        "(--set parameters.data.patch_size=[16,16,16])" in caplog.text
    )
    assert "parameters.data.std 1 in training, 0.5 here" in caplog.text and "data.mean" not in caplog.text


def test_masking_is_compared_only_where_the_run_masks_by_label(tmp_path, caplog):
    from subtomo_embed.core.model import check_input_contract, read_checkpoint

    path = _trained_with(tmp_path, {"patch_size": [12, 12, 12]}, masking_type=2)
    stored = read_checkpoint(path)["hyper_parameters"]["backbone_config"]
    with caplog.at_level("INFO"):
        assert check_input_contract(stored, _contract_config(), path) == [
            "masking_type 2 in training, 1 here (run.yaml)"
        ]
        assert check_input_contract(stored, _contract_config(), path, masking=False) == []
    assert "does not record parameters.data.min, parameters.data.max" in caplog.text


def test_a_dim_set_in_the_run_must_equal_the_checkpoints(tmp_path):
    from subtomo_embed.core.config import config_from_dict
    from subtomo_embed.core.errors import ConfigError

    path = make_checkpoint(tmp_path / "m.ckpt")
    with pytest.raises(
        ConfigError,
        match=r"^--set parameters\.network\.dim=1024: parameters\.network\.dim is 1024 "
        r"but the checkpoint m\.ckpt has dim 16",
    ):
        load_model(path, run_config=config_from_dict({}, "run.yaml", ["parameters.network.dim=1024"]))
    load_model(path, run_config=config_from_dict({}, "run.yaml"))  # not set: the checkpoint's


# --------------------------------------------------------------------------------------------
# embeddings averaged over a rotation group of the cube (embedding_rotations)


def _rotation_matrix(rotation) -> np.ndarray:
    axes, signs = rotation
    m = np.zeros((3, 3), int)
    m[range(3), axes] = signs
    return m


@pytest.mark.parametrize("order", [1, 4, 12, 24])
def test_cube_rotations_are_a_group_of_proper_rotations(order):
    from subtomo_embed.core.model import cube_rotations

    group = [_rotation_matrix(r) for r in cube_rotations(order)]
    keys = {m.tobytes() for m in group}
    assert len(group) == len(keys) == order
    assert all(round(np.linalg.det(m)) == 1 for m in group)
    assert all((a @ b).tobytes() in keys for a in group for b in group)  # closed under composition


def test_turned_patches_are_the_voxels_moved():
    """Each of the 24 turns gives a different arrangement of the same voxels; a half turn about z
    is the flip of y and x; one of them is the quarter turn torch.rot90 makes."""
    from subtomo_embed.core.model import cube_rotations, turned

    x = torch.randn(1, 1, 5, 5, 5)
    outs = [turned(x, r) for r in cube_rotations(24)]
    assert len({o.numpy().tobytes() for o in outs}) == 24
    assert all(torch.equal(o.flatten().sort().values, x.flatten().sort().values) for o in outs)
    torch.testing.assert_close(turned(x, ((0, 1, 2), (1, -1, -1))), x.flip((3, 4)))
    assert any(torch.equal(o, torch.rot90(x, 1, (3, 4))) for o in outs)


@pytest.mark.parametrize("order, contrastive", [(4, True), (24, True), (24, False)])
def test_an_averaged_embedding_is_the_same_for_every_turn_of_the_group(order, contrastive):
    from subtomo_embed.core.model import cube_rotations, turned

    torch.manual_seed(0)
    model = build_simsiam(TINY_NETWORK).eval()
    x = torch.randn(3, 1, 12, 12, 12)
    with torch.no_grad():
        plain = model.embed(x, contrastive)
        torch.testing.assert_close(model.embed(x, contrastive, 1), plain)
        averaged = model.embed(x, contrastive, order)
        assert not torch.allclose(averaged, plain, atol=1e-3)  # the tiny network is not invariant itself
        for r in cube_rotations(order):
            torch.testing.assert_close(model.embed(turned(x, r), contrastive, order), averaged, atol=2e-5, rtol=1e-4)
        if contrastive:
            torch.testing.assert_close(averaged.norm(dim=1), torch.ones(3))
        else:  # the plain mean of the turned patches' embeddings
            mean = torch.stack([model.embed(turned(x, r), False) for r in cube_rotations(order)]).mean(0)
            torch.testing.assert_close(averaged, mean)


def test_embedding_rotations_key_is_checked():
    from subtomo_embed.core.config import load_config
    from subtomo_embed.core.errors import ConfigError

    assert load_config(None, ["embedding_rotations=12"]).embedding_rotations == 12
    assert load_config(None, ["embedding_rotations=4", "parameters.data.patch_size=[8,16,16]"]).embedding_rotations
    with pytest.raises(ConfigError, match="1 \\(none\\), 4, 12 or 24"):
        load_config(None, ["embedding_rotations=8"])
    with pytest.raises(ConfigError, match="cubic"):
        load_config(None, ["embedding_rotations=24", "parameters.data.patch_size=[8,16,16]"])
