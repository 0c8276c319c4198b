"""The SimSiam network and the safe loading of CryoSiam Lightning checkpoints."""

import os
import sys
import types

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
    for k in ["encoder.conv1.weight", "encoder.bn1.running_mean", "encoder.layer1.0.conv1.weight",
              "encoder.layer2.0.downsample.0.weight", "encoder.fc.0.weight", "encoder.fc.6.weight",
              "encoder.fc.6.bias", "predictor.0.weight", "predictor.3.bias"]:
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
