"""The YAML config: CryoSiam's keys with their meaning, errors that name the key and the file."""

from pathlib import Path

import pytest
import yaml

from subtomo_embed.core.config import config_from_dict, load_config
from subtomo_embed.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_example_config_loads_unchanged():
    cfg = load_config(REPO / "configs" / "subtomo_embeddings.yaml")
    assert cfg.masking_type == 1 and cfg.expand_labels == 3 and cfg.min_particle_size == 10
    assert cfg.visualization.umap_3d is False and cfg.visualization.distance == "euclidean"
    assert cfg.parameters.data.patch_size == [64, 64, 64] and cfg.parameters.network.dim == 1024
    assert cfg.clustering_spectral.estimate_num_clusters is False and cfg.hyper_parameters.batch_size == 10


def test_every_seed_key_is_accepted():
    raw = yaml.safe_load((REPO / "configs" / "subtomo_embeddings.yaml").read_text())
    raw["visualization"]["3d_umap"] = True
    cfg = config_from_dict(raw)
    assert cfg.visualization.umap_3d is True
    assert yaml.safe_load(yaml.safe_dump(cfg.model_dump(by_alias=True)))["visualization"]["3d_umap"] is True


def test_unknown_and_nested_unknown_keys_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("masking_typ: 1\nparameters:\n  data:\n    patchsize: [1, 2, 3]\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    text = str(err.value)
    assert "c.yaml" in text and "unknown key 'masking_typ'" in text and "parameters.data.patchsize" in text
    assert "\n" not in text


@pytest.mark.parametrize("key,value,fragment", [
    ("masking_type", 3, "masking_type"),
    ("masking_type", "1", "masking_type"),
    ("min_particle_size", "ten", "min_particle_size"),
    ("contrastive", "yes", "contrastive"),
    ("test_files", "TS_01.mrc", "test_files"),
])
def test_wrong_types_named(key, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        config_from_dict({key: value})


@pytest.mark.parametrize("patch", [[0, 64, 64], [64, 64], [-1, 2, 3]])
def test_bad_patch_sizes(patch):
    with pytest.raises(ConfigError, match="patch_size"):
        config_from_dict({"parameters": {"data": {"patch_size": patch}}})


def test_overrides_use_the_same_rules():
    cfg = config_from_dict({}, overrides=["parameters.data.patch_size=[8,9,10]", "max_particle_size=null",
                                          "visualization.3d_umap=true"])
    assert cfg.parameters.data.patch_size == [8, 9, 10] and cfg.max_particle_size is None
    assert cfg.visualization.umap_3d is True
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        config_from_dict({}, overrides=["nope=1"])


def test_relative_paths_resolve_against_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config_from_dict({"data_folder": "data", "prediction_folder": "~/out"})
    assert cfg.path("data_folder") == tmp_path / "data"
    assert cfg.path("prediction_folder") == Path.home() / "out"
    with pytest.raises(ConfigError, match="trained_model"):
        cfg.path("trained_model")


def test_stem_and_particle_bounds():
    cfg = config_from_dict({"file_extension": "rec", "max_particle_size": 0, "min_particle_size": 0})
    assert cfg.file_extension == ".rec" and cfg.stem("TS_01.rec") == "TS_01"
    assert cfg.max_particle_bound is None and cfg.min_particle_bound is None
    assert config_from_dict({"instances": {"min_center_distance": 5, "max_center_distance": 20}}
                            ).instances_suffix == "_min-5_max-20"


def test_not_yaml_and_not_a_mapping(tmp_path):
    (tmp_path / "a.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "b.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
