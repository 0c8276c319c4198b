"""The YAML config: CryoSiam's keys with their meaning, errors that name the key and the file."""

import re
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


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("masking_type", 3, "masking_type"),
        ("masking_type", "1", "masking_type"),
        ("min_particle_size", "ten", "min_particle_size"),
        ("contrastive", "yes", "contrastive"),
        ("test_files", "TS_01.mrc", "test_files"),
    ],
)
def test_wrong_types_named(key, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        config_from_dict({key: value})


@pytest.mark.parametrize("patch", [[0, 64, 64], [64, 64], [-1, 2, 3]])
def test_bad_patch_sizes(patch):
    with pytest.raises(ConfigError, match="patch_size"):
        config_from_dict({"parameters": {"data": {"patch_size": patch}}})


def test_overrides_use_the_same_rules():
    cfg = config_from_dict(
        {}, overrides=["parameters.data.patch_size=[8,9,10]", "max_particle_size=null", "visualization.3d_umap=true"]
    )
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
    assert (
        config_from_dict({"instances": {"min_center_distance": 5, "max_center_distance": 20}}).instances_suffix
        == "_min-5_max-20"
    )


def test_not_yaml_and_not_a_mapping(tmp_path):
    (tmp_path / "a.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "b.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


# --- issue 13: hostile configs -----------------------------------------------------------------


def _load_text(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path)


def test_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    lines = ["l0: &l0 [a, a, a, a, a, a, a, a, a, a]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10^9 values expanded
    with pytest.raises(ConfigError, match=r"c\.yaml: the YAML expands to more than 100,000 values"):
        _load_text(tmp_path, "\n".join(lines) + "\n")


def test_a_few_aliases_within_the_bound_still_work(tmp_path):
    cfg = _load_text(
        tmp_path,
        "parameters:\n  data:\n    patch_size: &p [8, 8, 8]\n"
        "clustering_kmeans: &k {num_clusters: 4}\nclustering_spectral: *k\n",
    )
    assert cfg.parameters.data.patch_size == [8, 8, 8] and cfg.clustering_spectral.num_clusters == 4


@pytest.mark.parametrize(
    "text,message",
    [
        ("test_files: &a [*a]\n", r"alias at line 1 refers to a value that contains it"),
        ("masking_type: 0\nexpand_labels: 1\nmasking_type: 2\n", r"key 'masking_type' appears twice .*lines 1 and 3"),
        ("test_files: " + "[" * 3000 + "]" * 3000 + "\n", r"nested too deeply"),
        ("source: somewhere.yaml\n", r"unknown key 'source'"),
        ("visualization:\n  umap_3d: true\n", r"unknown key 'visualization\.umap_3d'"),
        ("seed: -1\n", r"key 'seed'"),
        ("hyper_parameters:\n  contrast_weight: -1\n", r"key 'hyper_parameters\.contrast_weight'"),
        ("hyper_parameters:\n  contrast_temperature: 0\n", r"key 'hyper_parameters\.contrast_temperature'"),
        ("seed: 4294967296\n", r"key 'seed'"),
        ("visualization:\n  distance: euclidian\n", r"key 'visualization\.distance'"),
        ("file_extension: /../x.mrc\n", r"key 'file_extension': must be a file extension without a folder part"),
        ("test_files: ['../../TS_01.mrc']\n", r"key 'test_files': must be a tomogram file name"),
        ("clustering_files: [..]\n", r"key 'clustering_files'"),
        ("visualization:\n  visualization_suffix: ../x.csv\n", r"key 'visualization\.visualization_suffix'"),
        (
            "instances:\n  min_center_distance: ../../x\n  max_center_distance: 2\n",
            r"key 'instances\.min_center_distance': must be a number or null",
        ),
        ('data_folder: "a\\0b"\n', r"key 'data_folder': a path cannot hold a NUL character"),
        ("centers:\n  voxel_size: .nan\n", r"key 'centers\.voxel_size': must be a positive number"),
        ("centers:\n  picks_voxel_size: [1, 2]\n", r"key 'centers\.picks_voxel_size'"),
        ("parameters:\n  network:\n    num_layers: [1, 1]\n", r"key 'parameters\.network\.num_layers': must be four"),
    ],
)
def test_hostile_values_are_config_errors_naming_key_and_file(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as err:
        _load_text(tmp_path, text)
    assert "c.yaml" in str(err.value) and "\n" not in str(err.value)


def test_every_accepted_distance_is_computed_by_umap_and_scikit_learn():
    import numpy as np
    import umap.distances
    from sklearn.metrics import pairwise_distances

    from subtomo_embed.core.config import DISTANCES

    x = np.random.default_rng(0).normal(size=(5, 4))
    for metric in DISTANCES:
        assert config_from_dict({"visualization": {"distance": metric}}).visualization.distance == metric
        assert np.isfinite(pairwise_distances(x, metric=metric)).all(), metric
        assert metric in umap.distances.named_distances or metric in ("sqeuclidean", "cityblock"), metric


def test_ignored_cryosiam_keys_warn_and_are_listed_in_the_docs(tmp_path, caplog):
    from subtomo_embed.core.config import IGNORED_CRYOSIAM_KEYS

    with caplog.at_level("WARNING"):
        cfg = _load_text(
            tmp_path, "visualization:\n  visualize_3d_mask: true\n  3d_mask_extension: '.mrc'\n  distance: cosine\n"
        )
    assert cfg.visualization.distance == "cosine"
    assert "ignoring CryoSiam's key 'visualization.visualize_3d_mask'" in caplog.text
    doc = (REPO / "docs" / "config.md").read_text()
    for section, key in IGNORED_CRYOSIAM_KEYS:
        assert f"`{section}.{key}`" in doc


def test_overrides_are_blamed_on_set_not_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("masking_typ: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["masking_type=hull"])
    text = str(err.value)
    assert text.startswith("c.yaml: unknown key 'masking_typ'") or "c.yaml: unknown key 'masking_typ'" in text
    assert "--set masking_type=hull: key 'masking_type'" in text
    with pytest.raises(
        ConfigError,
        match=r"^--set parameters\.data\.max=-1: key 'parameters\.data\.max'|"
        r"with --set parameters\.data\.max=-1: key 'parameters\.data'",
    ):
        config_from_dict({}, "c.yaml", ["parameters.data.max=-1"])
    cfg = config_from_dict({"trained_model": None}, "c.yaml", ["parameters.data.patch_size=[8,8,8]", "data_folder=x"])
    assert cfg.origin("parameters.data.patch_size") == "--set parameters.data.patch_size=[8,8,8]"
    assert cfg.origin("masking_type") == "c.yaml" and cfg.source == "c.yaml"
    with pytest.raises(ConfigError, match=r"^c\.yaml: key 'trained_model' must be set"):
        cfg.path("trained_model")
    with pytest.raises(ConfigError, match=r"--set trained_model=: key 'trained_model' must be set"):
        config_from_dict({}, "c.yaml", ["trained_model="]).path("trained_model")


def test_set_values_are_read_by_the_bounded_loader():
    levels = ["&l0 [" + ", ".join(["x"] * 10) + "]"]
    levels += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]
    with pytest.raises(ConfigError, match=r"^--set test_files=.*: the YAML expands to more than 100,000 values"):
        config_from_dict({}, "c.yaml", ["test_files=[" + ", ".join(levels) + "]"])
    assert config_from_dict({}, "c.yaml", ["parameters.data.patch_size=[&a 8, *a, *a]"]).parameters.data.patch_size == [
        8,
        8,
        8,
    ]


def test_config_path_that_is_a_folder_or_too_big(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        load_config(tmp_path)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (4 * 2**20 + 1))
    with pytest.raises(ConfigError, match="larger than 4 MiB"):
        load_config(big)
    (tmp_path / "latin1.yaml").write_bytes("data_folder: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "latin1.yaml")


@pytest.mark.parametrize("value", [-1, [0, -2], "0", True, 1.5])
def test_gpu_devices_are_indices_or_null(value):
    with pytest.raises(ConfigError, match=r"key 'parameters\.gpu_devices': must be a GPU index"):
        config_from_dict({"parameters": {"gpu_devices": value}})
    for ok in (None, 0, 3, [1, 0], []):
        assert config_from_dict({"parameters": {"gpu_devices": ok}}).parameters.gpu_devices == ok


def test_an_output_folder_may_not_be_an_input_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    cfg = config_from_dict(
        {"data_folder": str(tmp_path / "data"), "instances_mask_folder": str(tmp_path / "masks")}, "c.yaml"
    )
    for same in (tmp_path / "data", tmp_path / "link", tmp_path / "data" / ".." / "data"):
        with pytest.raises(ConfigError, match=r"^c\.yaml: prediction_folder .* is the data_folder"):
            cfg.check_output_folder(same)
    with pytest.raises(ConfigError, match=r"--output-dir .* is the instances_mask_folder"):
        cfg.check_output_folder(tmp_path / "masks", "--output-dir")
    for apart in (tmp_path / "out", tmp_path / "data" / "out", tmp_path):  # beside, inside, around: fine
        cfg.check_output_folder(apart)


@pytest.mark.parametrize(
    "key",
    [
        "hyper_parameters.batch_size",
        "expand_labels",
        "centers_patch_size",
        "clustering_kmeans.num_clusters",
        "clustering_spectral.n_neighbors",
        "visualization.pca_components",
        "visualization.max_plot_points",
        "parameters.network.dim",
        "min_particle_size",
    ],
)
def test_sizes_and_counts_beyond_what_numpy_takes_are_config_errors(key):
    huge = str(10**30)
    with pytest.raises(ConfigError, match=rf"^--set {re.escape(key)}={huge}: key '{re.escape(key)}'"):
        config_from_dict({}, "c.yaml", [f"{key}={huge}"])
    with pytest.raises(ConfigError, match=r"patch_size"):
        config_from_dict({}, "c.yaml", [f"parameters.data.patch_size=[8, 8, {huge}]"])


def test_is_set_tells_given_keys_from_defaults():
    cfg = config_from_dict({"parameters": {"data": {"min": 0}}}, "c.yaml", ["hyper_parameters.batch_size=3"])
    assert cfg.is_set("parameters.data.min") and cfg.is_set("hyper_parameters.batch_size")
    assert not cfg.is_set("parameters.data.patch_size") and not cfg.is_set("parameters.network.dim")
    assert not cfg.is_set("seed")
