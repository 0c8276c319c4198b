"""Every row of docs/troubleshooting.md's bad-input table, driven through the real CLI.

Each row breaks one thing, runs the command, and checks: the exit code of its class
(3 config, 4 input data, 5 model, 6 resources), a one-line message naming the file and the
problem, no traceback, the output folder unchanged, and the inputs unchanged.

The CLI runs in this process (typer's CliRunner: the same app the executable runs); a row whose
point is the process (a file-size limit) runs the executable.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from synthetic import TINY_NETWORK, make_checkpoint, make_dataset, write_config, write_h5_mask, write_picks
from typer.testing import CliRunner

from subtomo_embed.cli import app
from subtomo_embed.core.model import build_simsiam, lightning_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHAPE = (32, 48, 40)


@dataclass
class Case:
    row: str  # the id in docs/troubleshooting.md
    setup: Callable[[dict], list[str] | None]  # breaks something; may return extra CLI args
    code: int
    message: str  # regex the one-line message must match
    command: str = "predict"
    subprocess: bool = False  # run the executable (the row is about the process)


def _set_config(ctx, **changes):
    raw = yaml.safe_load(ctx["config"].read_text())
    for key, value in changes.items():
        node = raw
        parts = key.split("__")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    ctx["config"].write_text(yaml.safe_dump(raw))


def _tomo(ctx):
    return ctx["data"] / "TS_01.mrc"


def _mask(ctx):
    return ctx["masks"] / "TS_01_instance_preds.h5"


def _only_ts01(ctx):
    _set_config(ctx, test_files=["TS_01.mrc"])


def _save_ckpt(ctx, ckpt):
    torch.save(ckpt, ctx["ckpt"])


def _ckpt(network=TINY_NETWORK):
    return lightning_checkpoint(build_simsiam(network), {"parameters": {"network": TINY_NETWORK}})


class _RunsCode:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(ctx):
    evil = _RunsCode()
    evil.marker = str(ctx["root"] / "pwned")
    ckpt = _ckpt()
    ckpt["callbacks"] = {"x": evil}
    _save_ckpt(ctx, ckpt)


def _missing_keys(ctx):
    ckpt = _ckpt()
    del ckpt["state_dict"]["_model.encoder.conv1.weight"]
    _save_ckpt(ctx, ckpt)


def _extra_keys(ctx):
    ckpt = _ckpt()
    ckpt["state_dict"]["_model.head.weight"] = torch.zeros(3)
    _save_ckpt(ctx, ckpt)


def _other_architecture(ctx):
    _save_ckpt(ctx, _ckpt(dict(TINY_NETWORK, num_filters=[8, 8, 16, 16])))


def _truncate(path: Path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _mask_values(ctx, mask):
    write_h5_mask(_mask(ctx), mask)
    _only_ts01(ctx)


def invoke(*args) -> tuple[int, str, BaseException | None]:
    """The CLI in this process: (exit code, stderr, the exception if one escaped the command)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    escaped = result.exception if not isinstance(result.exception, SystemExit) else None
    return result.exit_code, result.stderr, escaped


def _cli_ok(ctx, command="predict", *args):
    code, stderr, escaped = invoke(command, "-c", ctx["config"], *args)
    assert code == 0 and escaped is None, stderr[-2000:]


def _one_instance_kmeans(ctx):
    _cli_ok(ctx)
    with h5py.File(ctx["out"] / "TS_01_embeds.h5", "r+") as f:
        emb = f["embeddings"][()]
        del f["embeddings"]
        f["embeddings"] = emb[:, :1]
    (ctx["out"] / "TS_02_embeds.h5").unlink()
    import pandas as pd

    table = pd.read_csv(ctx["out"] / "TS_01_instance_regions.csv").iloc[:1]
    table.to_csv(ctx["out"] / "TS_01_instance_regions.csv", index=False)
    with h5py.File(ctx["out"] / "TS_01_instance_labels.h5", "r+") as f:
        labels = f["labels"][()]
        del f["labels"]
        f["labels"] = labels[:1]


def _predicted(ctx):
    _cli_ok(ctx)


def _different_dims(ctx):
    _predicted(ctx)
    with h5py.File(ctx["out"] / "TS_02_embeds.h5", "r+") as f:
        emb = f["embeddings"][()]
        del f["embeddings"]
        f["embeddings"] = emb[:8]


def _nan_embeddings(ctx):
    _predicted(ctx)
    with h5py.File(ctx["out"] / "TS_02_embeds.h5", "r+") as f:
        f["embeddings"][0, 0] = np.nan


def _unwritable_output(ctx):
    blocker = ctx["root"] / "a_file"
    blocker.write_text("not a folder")
    _set_config(ctx, prediction_folder=str(blocker / "out"))
    ctx["out"] = blocker  # nothing may appear there either


def _file_size_limit(ctx):
    ctx["fsize_limit"] = 3000  # bytes: the inputs exist already; the first outputs cannot be finished


def _alias_bomb(ctx):
    lines = ["laugh0: &l0 [ha, ha, ha, ha, ha, ha, ha, ha, ha, ha]"]
    lines += [f"laugh{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    ctx["config"].write_text(ctx["config"].read_text() + "\n".join(lines) + "\n")  # 10^9 values if expanded


def _enormous_network(ctx):
    ckpt = _ckpt()
    big = dict(TINY_NETWORK, num_filters=[2**16] * 4, dim=2**30)  # ~10^14 weights if it were built
    ckpt["hyper_parameters"] = {
        "config": {"parameters": {"network": big}},
        "backbone_config": {"parameters": {"network": big}},
    }
    _save_ckpt(ctx, ckpt)


def _too_many_blocks(ctx):
    ckpt = _ckpt()
    deep = dict(TINY_NETWORK, num_layers=[4_000_000, 1, 1, 1])
    ckpt["hyper_parameters"] = {
        "config": {"parameters": {"network": deep}},
        "backbone_config": {"parameters": {"network": deep}},
    }
    _save_ckpt(ctx, ckpt)


def _picks(ctx, coordinate=None, label=None, size=8):
    import pandas as pd

    rows = pd.DataFrame(
        {"x": [10.0, 20.0, 15.0], "y": [10.0, 20.0, 30.0], "z": [10.0, 12.0, 14.0], "label": ["1", "2", "3"]}
    ).astype(object)
    if coordinate is not None:
        rows.loc[1, "x"] = coordinate
    if label is not None:
        rows.loc[1, "label"] = label
    picks = ctx["root"] / "picks.csv"
    rows.to_csv(picks, index=False)
    _set_config(ctx, centers_file=str(picks), centers_patch_size=size, test_files=["TS_01.mrc"])


def _merged_with_folder_names(ctx):
    _predicted(ctx)
    _cli_ok(ctx, "merge")
    shared = ctx["root"] / "shared"
    shared.mkdir()
    (ctx["out"] / "embeddings.h5").rename(shared / "embeddings.h5")
    with h5py.File(shared / "embeddings.h5", "r+") as f:
        del f["tomograms"]
        f["tomograms"] = np.array([b"../../x/TS_01", b"/tmp/TS_02"])
    return ["--input-dir", shared, "--output-dir", ctx["out"]]


def _merged_table_of_another_merge(ctx):
    import pandas as pd

    _predicted(ctx)
    _cli_ok(ctx, "merge")
    shared = ctx["root"] / "shared"
    shared.mkdir()
    for name in ("embeddings.h5", "embeddings_table.csv"):
        (ctx["out"] / name).rename(shared / name)
    table = pd.read_csv(shared / "embeddings_table.csv")
    table["tomogram"] = table["tomogram"].map({"TS_01": "TS_02", "TS_02": "TS_01"})
    table.to_csv(shared / "embeddings_table.csv", index=False)
    return ["--input-dir", shared, "--output-dir", ctx["out"]]


def _picks_file(ctx, text):
    (ctx["root"] / "picks.csv").write_text(text)
    _set_config(ctx, centers_file=str(ctx["root"] / "picks.csv"), centers_patch_size=8)


def _tomogram_named(ctx, name):
    _tomo(ctx).rename(ctx["data"] / f"{name}.mrc")
    _mask(ctx).rename(ctx["masks"] / f"{name}_instance_preds.h5")
    _set_config(ctx, test_files=[f"{name}.mrc", "TS_02.mrc"])


def _folder_at_an_output(ctx):
    _predicted(ctx)
    _cli_ok(ctx, "merge")
    (ctx["out"] / "kmeans_particles.star").mkdir()


def _copick_with_a_list(ctx):
    import json

    picks = ctx["root"] / "picks.json"
    point = {"location": {"x": 200.0, "y": 240.0, "z": 160.0}, "score": [0.9, 0.1]}
    picks.write_text(json.dumps({"run_name": "TS_01", "points": [point]}))
    _set_config(ctx, centers_file=str(picks), centers_patch_size=8, test_files=["TS_01.mrc"])


def _hostile_truth(ctx):
    (ctx["root"] / "truth.csv").write_text("tomogram,label,class\nTS_01,1,ribosome\nTS_02,1,0\n")
    return ["--data", ctx["root"], "--model", ctx["ckpt"], "--device", "cpu"]


def _patches(ctx, stem=None, size=None):
    _cli_ok(ctx, "extract", "--filename", "TS_01.mrc")
    patches = ctx["out"] / "TS_01_patches.h5"
    if stem is not None:
        with h5py.File(patches, "r+") as f:
            f.attrs["stem"] = stem
    extra = ["--set", f"parameters.data.patch_size={size}".replace(" ", "")] if size else []
    return ["--patches", patches, *extra]


def _regions_csv(ctx, change):
    _predicted(ctx)
    table = pd.read_csv(ctx["out"] / "TS_01_instance_regions.csv")
    change(table).to_csv(ctx["masks"] / "TS_01_instance_regions.csv", index=False)
    _set_config(ctx, prediction_folder=str(ctx["root"] / "again"), test_files=["TS_01.mrc"])
    ctx["out"] = ctx["root"] / "again"


def _nan_voxel_picks(ctx):
    with mrcfile.open(_tomo(ctx), "r+") as m:
        m.voxel_size = (float("nan"),) * 3
    write_picks(ctx["root"] / "picks.star", ctx["masks"])
    _set_config(ctx, centers_file=str(ctx["root"] / "picks.star"), centers_patch_size=8, test_files=["TS_01.mrc"])


def _nan_weights(ctx):
    ckpt = _ckpt()
    ckpt["state_dict"]["_model.encoder.conv1.weight"][0] = float("nan")
    _save_ckpt(ctx, ckpt)


def _log_dir_file(ctx):
    blocker = ctx["root"] / "a_file"
    blocker.write_text("not a folder")
    _set_config(ctx, log_dir=str(blocker))


def _log_file_link(ctx):
    target = ctx["root"] / "precious.txt"
    target.write_text("not a log\n")
    logs = ctx["root"] / "logs"
    logs.mkdir()
    (logs / "subtomo-embed.log").symlink_to(target)
    _set_config(ctx, log_dir=str(logs))


def _mode(ctx, data):
    with mrcfile.new(_tomo(ctx), overwrite=True) as m:
        m.set_data(data)
    _only_ts01(ctx)


def _external_mask(ctx):
    elsewhere = ctx["root"] / "elsewhere.h5"
    with h5py.File(elsewhere, "w") as f:
        f["instances"] = np.ones(SHAPE, np.int32)
    with h5py.File(_mask(ctx), "w") as f:
        f["instances"] = h5py.ExternalLink(str(elsewhere), "instances")
    _only_ts01(ctx)


def _huge_mask(ctx):
    with h5py.File(_mask(ctx), "w") as f:  # 4 GiB declared, a few kB on disk
        f.create_dataset("instances", shape=(1024,) * 3, dtype=np.uint32, chunks=(64,) * 3, compression=1)
    _only_ts01(ctx)


def _poke_tomogram_header(ctx, offset, *values):
    data = bytearray(_tomo(ctx).read_bytes())
    struct.pack_into(f"<{len(values)}i", data, offset, *values)
    _tomo(ctx).write_bytes(bytes(data))
    _only_ts01(ctx)


CASES = [
    Case(
        "config-unknown-key",
        lambda c: c["config"].write_text(c["config"].read_text() + "masking_typ: 1\n"),
        3,
        r"config\.yaml: unknown key 'masking_typ'",
    ),
    Case("config-wrong-type", lambda c: _set_config(c, masking_type="hull"), 3, r"config\.yaml: key 'masking_type'"),
    Case(
        "config-nested-wrong-type",
        lambda c: _set_config(c, hyper_parameters__batch_size=2.5),
        3,
        r"key 'hyper_parameters\.batch_size'",
    ),
    Case("config-missing-key", lambda c: _set_config(c, trained_model=None, log_dir=None), 3, r"key 'trained_model'"),
    Case("config-file-missing", lambda c: c["config"].unlink(), 3, r"config\.yaml: config file does not exist"),
    Case("config-not-yaml", lambda c: c["config"].write_text("data_folder: [unclosed\n"), 3, r"not valid YAML"),
    Case("patch-size-zero", lambda c: _set_config(c, parameters__data__patch_size=[0, 12, 12]), 3, r"patch_size"),
    Case(
        "patch-size-larger-than-tomogram",
        lambda c: _set_config(c, parameters__data__patch_size=[64, 64, 64]),
        3,
        r"patch_size \[64, 64, 64\] is larger than the tomogram TS_01\.mrc",
    ),
    Case(
        "data-folder-missing",
        lambda c: _set_config(c, data_folder=str(c["root"] / "nowhere")),
        4,
        r"nowhere: data_folder does not exist",
    ),
    Case(
        "data-folder-empty",
        lambda c: [p.unlink() for p in c["data"].glob("*.mrc")] and None,
        4,
        r"data: no '\*\.mrc' tomograms found",
    ),
    Case(
        "tomogram-broken-link",
        lambda c: (_tomo(c).unlink(), _tomo(c).symlink_to(c["root"] / "gone.mrc"), _only_ts01(c)) and None,
        4,
        r"TS_01\.mrc: tomogram listed .* does not exist",
    ),
    Case(
        "mask-folder-missing",
        lambda c: _set_config(c, instances_mask_folder=str(c["root"] / "nomasks")),
        4,
        r"nomasks: instances_mask_folder does not exist",
    ),
    Case("mask-missing", lambda c: _mask(c).unlink(), 4, r"no instance mask for TS_01\.mrc"),
    Case(
        "mrc-corrupt-header",
        lambda c: (_tomo(c).write_bytes(os.urandom(2048)), _only_ts01(c)) and None,
        4,
        r"TS_01\.mrc: (not a readable MRC file|MRC)",
    ),
    Case(
        "mrc-truncated",
        lambda c: (_truncate(_tomo(c)), _only_ts01(c)) and None,
        4,
        r"TS_01\.mrc: .*(truncated|not a readable MRC)",
    ),
    Case(
        "mrc-wrong-mode", lambda c: _mode(c, np.zeros(SHAPE, np.complex64)), 4, r"TS_01\.mrc: unsupported MRC data type"
    ),
    Case("mrc-2d", lambda c: _mode(c, np.zeros(SHAPE[1:], np.float32)), 4, r"TS_01\.mrc: expected a 3D volume"),
    Case("mrc-nan-voxels", lambda c: _mode(c, np.full(SHAPE, np.nan, np.float32)), 4, r"TS_01\.mrc: .*NaN or Inf"),
    Case("mrc-inf-voxels", lambda c: _mode(c, np.full(SHAPE, np.inf, np.float32)), 4, r"TS_01\.mrc: .*NaN or Inf"),
    Case(
        "hdf5-truncated",
        lambda c: (_truncate(_mask(c), 0.3), _only_ts01(c)) and None,
        4,
        r"TS_01_instance_preds\.h5: not a readable HDF5 file",
    ),
    Case(
        "hdf5-no-instances",
        lambda c: (h5py.File(_mask(c), "w").create_dataset("labels", data=[1]), _only_ts01(c)) and None,
        4,
        r"TS_01_instance_preds\.h5: HDF5 mask has no dataset 'instances'",
    ),
    Case("mask-float", lambda c: _mask_values(c, np.zeros(SHAPE, np.float32)), 4, r"float data type"),
    Case("mask-negative-labels", lambda c: _mask_values(c, np.full(SHAPE, -1, np.int32)), 4, r"negative labels"),
    Case(
        "mask-shape-differs",
        lambda c: _mask_values(c, np.ones((5, 5, 5), np.int32)),
        4,
        r"TS_01_instance_preds\.h5: mask shape \(5, 5, 5\) differs from its tomogram's \(32, 48, 40\)",
    ),
    Case("mask-no-instances", lambda c: _mask_values(c, np.zeros(SHAPE, np.int32)), 4, r"mask has no instances"),
    Case("checkpoint-missing", lambda c: c["ckpt"].unlink(), 5, r"model\.ckpt: checkpoint file does not exist"),
    Case("checkpoint-truncated", lambda c: _truncate(c["ckpt"]), 5, r"model\.ckpt: not a readable PyTorch checkpoint"),
    Case("checkpoint-other-architecture", _other_architecture, 5, r"model\.ckpt: .*shape mismatches"),
    Case("checkpoint-missing-keys", _missing_keys, 5, r"model\.ckpt: .*missing keys \(e\.g\. encoder\.conv1\.weight"),
    Case("checkpoint-extra-keys", _extra_keys, 5, r"model\.ckpt: .*unexpected keys \(e\.g\. head\.weight"),
    Case("checkpoint-pickled-code", _evil, 5, r"model\.ckpt: checkpoint holds pickled objects .* refusing to load"),
    Case(
        "kmeans-more-clusters-than-instances",
        _one_instance_kmeans,
        4,
        r"1 instances cannot make 3 clusters",
        command="kmeans",
    ),
    Case(
        "embeddings-different-dimensions", _different_dims, 4, r"TS_02_embeds\.h5: .*(dimension|dim)", command="merge"
    ),
    Case("embeddings-nan", _nan_embeddings, 4, r"TS_02_embeds\.h5: .*(NaN|finite)", command="merge"),
    Case("output-folder-not-writable", _unwritable_output, 6, r"cannot create output folder"),
    Case("out-of-space-mid-write", _file_size_limit, 6, r"no space left on the device while writing", subprocess=True),
    # issue 13, class 2: small inputs that asked for unbounded resources
    Case("config-alias-bomb", _alias_bomb, 3, r"config\.yaml: the YAML expands to more than 100,000 values"),
    Case(
        "config-recursive-alias",
        lambda c: c["config"].write_text(c["config"].read_text() + "train_files: &a [*a]\n"),
        3,
        r"config\.yaml: a YAML alias at line \d+ refers to a value that contains it",
    ),
    Case(
        "checkpoint-enormous-network", _enormous_network, 5, r"model\.ckpt: state_dict does not fit .*shape mismatches"
    ),
    Case("checkpoint-too-many-blocks", _too_many_blocks, 5, r"model\.ckpt: .*num_layers .* asks for 4000003 residual"),
    # class 5: one-line errors instead of tracebacks
    Case("config-seed-out-of-range", lambda c: _set_config(c, seed=2**32), 3, r"config\.yaml: key 'seed'"),
    Case(
        "config-unknown-distance",
        lambda c: _set_config(c, visualization__distance="euclidian"),
        3,
        r"config\.yaml: key 'visualization\.distance': Input should be 'euclidean'",
    ),
    Case(
        "picks-text-coordinates",
        lambda c: _picks(c, coordinate="abc"),
        4,
        r"picks\.csv: picks column 'x' row 2 is not a finite number \('abc'\)",
        command="predict-centers",
    ),
    Case(
        "picks-empty-label",
        lambda c: _picks(c, label=""),
        4,
        r"picks\.csv: picks column 'label' row 2 is not an integer id",
        command="predict-centers",
    ),
    Case(
        "picks-label-beyond-int64",
        lambda c: _picks(c, label="9223372036854775808"),
        4,
        r"picks\.csv: picks column 'label' row 2 holds 9223372036854775808, beyond a 64-bit",
        command="predict-centers",
    ),
    # class 6: config strictness
    Case(
        "config-reserved-key",
        lambda c: c["config"].write_text(c["config"].read_text() + "source: x\n"),
        3,
        r"config\.yaml: unknown key 'source'",
    ),
    Case(
        "config-duplicate-key",
        lambda c: c["config"].write_text(c["config"].read_text() + "masking_type: 2\n"),
        3,
        r"config\.yaml: key 'masking_type' appears twice",
    ),
    # class 7: messages that name the right culprit
    Case(
        "config-set-wrong-type",
        lambda c: ["--set", "masking_type=hull"],
        3,
        r"^config error: --set masking_type=hull: key 'masking_type'",
    ),
    Case(
        "checkpoint-is-a-folder",
        lambda c: (c["ckpt"].unlink(), c["ckpt"].mkdir()) and None,
        5,
        r"model\.ckpt: is a folder, not a checkpoint file",
    ),
    Case("log-dir-is-a-file", _log_dir_file, 3, r"a_file: log_dir is a file, not a folder"),
    Case(
        "log-file-is-a-link",
        _log_file_link,
        6,
        r"logs/subtomo-embed\.log: the log file is a symbolic link; remove it \(the log is not written through links\)",
    ),
    # class 1: names that become paths
    Case(
        "config-gpu-negative",
        lambda c: _set_config(c, parameters__gpu_devices=-1),
        3,
        r"config\.yaml: key 'parameters\.gpu_devices': must be a GPU index",
    ),
    Case(
        "config-count-too-large",
        lambda c: _set_config(c, visualization__pca_components=10**30),
        3,
        r"config\.yaml: key 'visualization\.pca_components': Input should be less than or equal to 2147483647",
    ),
    Case(
        "filename-with-folder",
        lambda c: ["--filename", "../data/TS_01.mrc"],
        3,
        r"^config error: --filename '\.\./data/TS_01\.mrc': must be a tomogram file name",
    ),
    Case(
        "merged-names-with-folders",
        _merged_with_folder_names,
        4,
        r"shared/embeddings\.h5: tomogram name '\.\./\.\./x/TS_01' is not a plain file name",
        command="kmeans",
    ),
    Case(
        "patches-stem-with-folder",
        lambda c: _patches(c, stem="../../y"),
        4,
        r"TS_01_patches\.h5: tomogram name '\.\./\.\./y' is not a plain file name",
        command="embed",
    ),
    Case(
        "patches-other-size",
        lambda c: _patches(c, size=[8, 8, 8]),
        4,
        r"TS_01_patches\.h5: patches of 12×12×12 voxels, but parameters\.data\.patch_size is \[8, 8, 8\]",
        command="embed",
    ),
    Case(
        "regions-csv-text",
        lambda c: _regions_csv(
            c, lambda t: t.astype({"bbox-1": object}).assign(**{"bbox-1": ["x1"] + list(t["bbox-1"][1:])})
        ),
        4,
        r"TS_01_instance_regions\.csv: column 'bbox-1' row 1 is not an integer \('x1'\)",
    ),
    Case(
        "regions-csv-inverted-bbox",
        lambda c: _regions_csv(c, lambda t: t.assign(**{"bbox-2": t["bbox-5"]})),
        4,
        r"TS_01_instance_regions\.csv: label \d+ \(row 1\) has an empty or inverted bbox",
    ),
    Case(
        "regions-csv-label-not-in-mask",
        lambda c: _regions_csv(c, lambda t: t.assign(label=t["label"].where(t.index != 0, 999))),
        4,
        r"TS_01_instance_regions\.csv: label 999 has no voxel in its bbox",
    ),
    Case(
        "regions-csv-duplicate-row",
        lambda c: _regions_csv(c, lambda t: pd.concat([t, t.iloc[:1]])),
        4,
        r"TS_01_instance_regions\.csv: label \d+ appears twice",
    ),
    Case(
        "hdf5-group-not-dataset",
        lambda c: (
            (h5py.File(_mask(c), "w").create_group("instances").create_dataset("x", data=[1]), _only_ts01(c)) and None
        ),
        4,
        r"TS_01_instance_preds\.h5: 'instances' is an HDF5 group",
    ),
    Case(
        "mask-labels-beyond-int64",
        lambda c: _mask_values(c, np.full(SHAPE, 2**63 + 5, np.uint64)),
        4,
        r"mask has labels beyond a 64-bit signed integer",
    ),
    Case(
        "output-folder-is-data-folder",
        lambda c: _set_config(c, prediction_folder=str(c["data"])),
        3,
        r"config\.yaml: prediction_folder .*data is the data_folder",
    ),
    Case(
        "mrc-voxel-size-nan-picks",
        _nan_voxel_picks,
        4,
        r"TS_01\.mrc: the MRC header's voxel size is not a size .* set centers\.voxel_size",
        command="predict-centers",
    ),
    Case(
        "centers-patch-larger-than-tomogram",
        lambda c: _picks(c, size=64),
        3,
        r"config\.yaml: centers_patch_size 64 is larger than the tomogram TS_01\.mrc",
        command="predict-centers",
    ),
    Case("checkpoint-nan-weights", _nan_weights, 5, r"model\.ckpt: 1 weights hold NaN or Inf values"),
    Case(
        "mask-is-the-tomogram",
        lambda c: _set_config(c, instances_mask_folder=str(c["data"])),
        4,
        r"TS_0[12]\.mrc: the instance mask found for this tomogram is the tomogram itself",
    ),
    Case(
        "config-file-name-with-folder",
        lambda c: _set_config(c, test_files=["../TS_01.mrc"]),
        3,
        r"config\.yaml: key 'test_files': must be a tomogram file name \(in data_folder\) without a folder part",
    ),
    Case(
        "hdf5-reads-another-file",
        _external_mask,
        4,
        r"TS_01_instance_preds\.h5: HDF5 'instances' is an external link to .*elsewhere\.h5:instances: it would read "
        r"another file",
    ),
    Case(
        "mask-declares-huge-shape",
        _huge_mask,
        4,
        r"TS_01_instance_preds\.h5: mask shape \(1024, 1024, 1024\) differs from its tomogram's \(32, 48, 40\)",
    ),
    Case(
        "mrc-mode-disagrees-with-size",
        lambda c: _poke_tomogram_header(c, 12, 1),
        4,
        r"TS_01\.mrc: MRC file is \d+ bytes but its header \(mode 1, int16, 40x48x32 voxels\) describes \d+",
    ),
    Case(
        "mrc-invalid-axis-map",
        lambda c: _poke_tomogram_header(c, 64, 1, 1, 3),
        4,
        r"TS_01\.mrc: MRC axis map \(mapc, mapr, maps\) is 1, 1, 3, not a permutation of 1, 2, 3",
    ),
    Case(
        "merged-table-disagrees",
        _merged_table_of_another_merge,
        4,
        r"shared/embeddings_table\.csv: row 1 names tomogram 'TS_02' but embeddings\.h5 has 'TS_01' there",
        command="kmeans",
    ),
    Case(
        "picks-header-only",
        lambda c: _picks_file(c, "x,y,z\n"),
        4,
        r"picks\.csv: picks file holds no picks \(a header only\): nothing to embed",
        command="predict-centers",
    ),
    Case(
        "picks-name-no-selected-tomogram",
        lambda c: _picks_file(c, "x,y,z,rlnTomoName\n10,10,10,TS_9\n"),
        4,
        r"picks\.csv: picks name none of the 2 selected tomogram\(s\) \('TS_01', 'TS_02'\) in column 'rlnTomoName'",
        command="predict-centers",
    ),
    Case(
        "tomogram-name-is-an-output-name",
        lambda c: _tomogram_named(c, "all_tomograms"),
        4,
        r"all_tomograms\.mrc: tomogram name 'all_tomograms' is the name of one of our own outputs",
    ),
    Case(
        "tomogram-name-control-character",
        lambda c: _tomogram_named(c, "TS\t01"),
        4,
        r"TS.01\.mrc: tomogram name 'TS\\t01' holds the control character U\+0009",
    ),
    Case(
        "tomogram-name-spreadsheet-formula",
        lambda c: _tomogram_named(c, "=TS_01"),
        4,
        r"=TS_01\.mrc: tomogram name '=TS_01' starts with '=', which a spreadsheet runs as a formula",
    ),
    Case(
        "tomogram-name-reads-as-missing",
        lambda c: _tomogram_named(c, "NA"),
        4,
        r"NA\.mrc: tomogram name 'NA' reads as a missing value",
    ),
    Case(
        "tomogram-name-with-a-quote",
        lambda c: _tomogram_named(c, "TS_'01"),
        4,
        r"TS_'01\.mrc: tomogram name \"TS_'01\" holds \"'\", which STAR readers",
    ),
    Case(
        "tomogram-name-too-long",
        lambda c: _tomogram_named(c, "T" * 201),
        4,
        r"tomogram name 'T{59}\.\.\. \(201 characters\) is 201 bytes long; at most 120",
    ),
    Case(
        "training-diverges",
        lambda c: (
            _set_config(c, hyper_parameters__learning_rate=1e10, hyper_parameters__max_steps=40)
            or ["--from-data", "-o", c["root"] / "tuned.ckpt", "--device", "cpu", "--save-every", "1", "-q"]
        ),
        3,
        r"tuned\.ckpt: training diverged at step \d+ \(the loss is .*\): tuned\.ckpt keeps step \d+, the last good one",
        command="train",
    ),
    Case(
        "copick-list-values",
        _copick_with_a_list,
        4,
        r"picks\.json: copick point 0: 'score' is a list, not a number or a name",
        command="predict-centers",
    ),
    Case(
        "truth-csv-not-integer",
        _hostile_truth,
        4,
        r"truth\.csv: column 'class' row 1 is not an integer \('ribosome'\)",
        command="evaluate",
    ),
    Case(
        "output-name-is-a-folder",
        _folder_at_an_output,
        6,
        r"out/kmeans_particles\.star: cannot replace what is there with the output \(Is a directory\)",
        command="kmeans",
    ),
]


def _snapshot(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    if folder.is_file():
        return {folder.name: hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
        for p in sorted(folder.rglob("*"))
        if not p.is_symlink()
    }


@pytest.mark.parametrize("case", CASES, ids=[c.row for c in CASES])
def test_bad_input(case: Case, tmp_path, cli_env):
    data, masks = make_dataset(tmp_path, shape=SHAPE)
    ckpt = make_checkpoint(tmp_path / "model.ckpt")
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "config.yaml",
        data_folder=data,
        instances_mask_folder=masks,
        prediction_folder=out,
        trained_model=ckpt,
    )
    ctx = {"root": tmp_path, "data": data, "masks": masks, "ckpt": ckpt, "out": out, "config": config, "env": cli_env}
    extra = case.setup(ctx)
    extra = extra if isinstance(extra, list) else []  # a setup may return extra CLI args
    out = ctx["out"]
    if not out.exists() and case.command == "predict":
        out.mkdir()  # an existing, empty output folder must stay empty
    before_out = _snapshot(out)
    before_inputs = {k: _snapshot(ctx[k]) for k in ("data", "masks")}
    if case.subprocess:
        limit = ctx.get("fsize_limit")

        def limit_file_size():
            if limit:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        proc = subprocess.run(
            ["subtomo-embed", case.command, "-c", str(config), *extra],
            env=cli_env,
            capture_output=True,
            text=True,
            preexec_fn=limit_file_size,
        )
        code, stderr, escaped = proc.returncode, proc.stderr, None
    else:
        code, stderr, escaped = invoke(case.command, "-c", config, *extra)
    message = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    assert escaped is None, f"{type(escaped).__name__}: {escaped}"
    assert code == case.code, stderr[-2000:]
    assert re.search(case.message, message), message
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if re.match(r"^\w[\w ]* error: ", line)]
    assert len(errors) == 1, stderr
    assert _snapshot(out) == before_out
    assert {k: _snapshot(ctx[k]) for k in ("data", "masks")} == before_inputs
    assert not (tmp_path / "pwned").exists()


def test_debug_shows_the_traceback(dataset, cli_env):
    dataset["ckpt"].unlink()
    proc = subprocess.run(
        ["subtomo-embed", "predict", "-c", str(dataset["config"]), "--debug"],
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_table_in_the_docs_matches_these_rows():
    doc = (REPO / "docs" / "troubleshooting.md").read_text()
    rows = re.findall(r"^\|\s*`([a-z0-9-]+)`\s*\|", doc, flags=re.M)
    assert rows == [c.row for c in CASES]
    for case in CASES:
        line = next(row for row in doc.splitlines() if row.startswith(f"| `{case.row}`"))
        assert f"| {case.code} |" in line, case.row


def test_extract_of_a_missing_tomogram_path_is_an_input_error(dataset, tmp_path):
    code, stderr, escaped = invoke(
        "extract",
        "-c",
        dataset["config"],
        "--tomogram",
        tmp_path / "absent.mrc",
        "--mask",
        tmp_path / "absent.h5",
        "--output-dir",
        tmp_path / "patches",
    )
    assert code == 4 and escaped is None
    assert re.search(r"absent\.mrc: cannot read the file", stderr.strip().splitlines()[-1]), stderr
