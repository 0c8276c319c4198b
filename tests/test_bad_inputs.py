"""Every row of docs/troubleshooting.md's bad-input table, driven through the real CLI.

Each row breaks one thing, runs the command, and checks: the exit code of its class
(3 config, 4 input data, 5 model, 6 resources), a one-line message naming the file and the
problem, no traceback, the output folder unchanged, and the inputs unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import mrcfile
import numpy as np
import pytest
import torch
import yaml
from synthetic import TINY_NETWORK, make_checkpoint, make_dataset, write_config, write_h5_mask, write_mrc

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


def _one_instance_kmeans(ctx):
    subprocess.run(["subtomo-embed", "predict", "-c", str(ctx["config"])], env=ctx["env"], check=True,
                   capture_output=True)
    with h5py.File(ctx["out"] / "TS_01_embeds.h5", "r+") as f:
        emb = f["embeddings"][()]
        del f["embeddings"]
        f["embeddings"] = emb[:, :1]
    for stem in ("TS_01", "TS_02"):
        pass
    (ctx["out"] / "TS_02_embeds.h5").unlink()
    import pandas as pd

    table = pd.read_csv(ctx["out"] / "TS_01_instance_regions.csv").iloc[:1]
    table.to_csv(ctx["out"] / "TS_01_instance_regions.csv", index=False)
    with h5py.File(ctx["out"] / "TS_01_instance_labels.h5", "r+") as f:
        labels = f["labels"][()]
        del f["labels"]
        f["labels"] = labels[:1]


def _predicted(ctx):
    subprocess.run(["subtomo-embed", "predict", "-c", str(ctx["config"])], env=ctx["env"], check=True,
                   capture_output=True)


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


def _mode(ctx, data):
    with mrcfile.new(_tomo(ctx), overwrite=True) as m:
        m.set_data(data)
    _only_ts01(ctx)


CASES = [
    Case("config-unknown-key", lambda c: c["config"].write_text(c["config"].read_text() + "masking_typ: 1\n"),
         3, r"config\.yaml: unknown key 'masking_typ'"),
    Case("config-wrong-type", lambda c: _set_config(c, masking_type="hull"), 3, r"config\.yaml: key 'masking_type'"),
    Case("config-nested-wrong-type", lambda c: _set_config(c, hyper_parameters__batch_size=2.5), 3,
         r"key 'hyper_parameters\.batch_size'"),
    Case("config-missing-key", lambda c: _set_config(c, trained_model=None, log_dir=None), 3, r"key 'trained_model'"),
    Case("config-file-missing", lambda c: c["config"].unlink(), 3, r"config\.yaml: config file does not exist"),
    Case("config-not-yaml", lambda c: c["config"].write_text("data_folder: [unclosed\n"), 3, r"not valid YAML"),
    Case("patch-size-zero", lambda c: _set_config(c, parameters__data__patch_size=[0, 12, 12]), 3, r"patch_size"),
    Case("patch-size-larger-than-tomogram", lambda c: _set_config(c, parameters__data__patch_size=[64, 64, 64]), 3,
         r"patch_size \[64, 64, 64\] is larger than the tomogram TS_01\.mrc"),
    Case("data-folder-missing", lambda c: _set_config(c, data_folder=str(c["root"] / "nowhere")), 4,
         r"nowhere: data_folder does not exist"),
    Case("data-folder-empty", lambda c: [p.unlink() for p in c["data"].glob("*.mrc")] and None, 4,
         r"data: no '\*\.mrc' tomograms found"),
    Case("tomogram-broken-link", lambda c: (_tomo(c).unlink(), _tomo(c).symlink_to(c["root"] / "gone.mrc"),
                                            _only_ts01(c)) and None, 4, r"TS_01\.mrc: tomogram listed .* does not exist"),
    Case("mask-folder-missing", lambda c: _set_config(c, instances_mask_folder=str(c["root"] / "nomasks")), 4,
         r"nomasks: instances_mask_folder does not exist"),
    Case("mask-missing", lambda c: _mask(c).unlink(), 4, r"no instance mask for TS_01\.mrc"),
    Case("mrc-corrupt-header", lambda c: (_tomo(c).write_bytes(os.urandom(2048)), _only_ts01(c)) and None, 4,
         r"TS_01\.mrc: (not a readable MRC file|MRC)"),
    Case("mrc-truncated", lambda c: (_truncate(_tomo(c)), _only_ts01(c)) and None, 4,
         r"TS_01\.mrc: .*(truncated|not a readable MRC)"),
    Case("mrc-wrong-mode", lambda c: _mode(c, np.zeros(SHAPE, np.complex64)), 4, r"TS_01\.mrc: unsupported MRC data type"),
    Case("mrc-2d", lambda c: _mode(c, np.zeros(SHAPE[1:], np.float32)), 4, r"TS_01\.mrc: expected a 3D volume"),
    Case("mrc-nan-voxels", lambda c: _mode(c, np.full(SHAPE, np.nan, np.float32)), 4, r"TS_01\.mrc: .*NaN or Inf"),
    Case("mrc-inf-voxels", lambda c: _mode(c, np.full(SHAPE, np.inf, np.float32)), 4, r"TS_01\.mrc: .*NaN or Inf"),
    Case("hdf5-truncated", lambda c: (_truncate(_mask(c), 0.3), _only_ts01(c)) and None, 4,
         r"TS_01_instance_preds\.h5: not a readable HDF5 file"),
    Case("hdf5-no-instances", lambda c: (h5py.File(_mask(c), "w").create_dataset("labels", data=[1]), _only_ts01(c))
         and None, 4, r"TS_01_instance_preds\.h5: HDF5 mask has no dataset 'instances'"),
    Case("mask-float", lambda c: _mask_values(c, np.zeros(SHAPE, np.float32)), 4, r"float data type"),
    Case("mask-negative-labels", lambda c: _mask_values(c, np.full(SHAPE, -1, np.int32)), 4, r"negative labels"),
    Case("mask-shape-differs", lambda c: _mask_values(c, np.ones((5, 5, 5), np.int32)), 4,
         r"TS_01_instance_preds\.h5: mask shape \(5, 5, 5\) differs from its tomogram's \(32, 48, 40\)"),
    Case("mask-no-instances", lambda c: _mask_values(c, np.zeros(SHAPE, np.int32)), 4, r"mask has no instances"),
    Case("checkpoint-missing", lambda c: c["ckpt"].unlink(), 5, r"model\.ckpt: checkpoint file does not exist"),
    Case("checkpoint-truncated", lambda c: _truncate(c["ckpt"]), 5, r"model\.ckpt: not a readable PyTorch checkpoint"),
    Case("checkpoint-other-architecture", _other_architecture, 5, r"model\.ckpt: .*shape mismatches"),
    Case("checkpoint-missing-keys", _missing_keys, 5, r"model\.ckpt: .*missing keys \(e\.g\. encoder\.conv1\.weight"),
    Case("checkpoint-extra-keys", _extra_keys, 5, r"model\.ckpt: .*unexpected keys \(e\.g\. head\.weight"),
    Case("checkpoint-pickled-code", _evil, 5, r"model\.ckpt: checkpoint holds pickled objects .* refusing to load"),
    Case("kmeans-more-clusters-than-instances", _one_instance_kmeans, 4, r"1 instances cannot make 3 clusters",
         command="kmeans"),
    Case("embeddings-different-dimensions", _different_dims, 4, r"TS_02_embeds\.h5: .*(dimension|dim)", command="merge"),
    Case("embeddings-nan", _nan_embeddings, 4, r"TS_02_embeds\.h5: .*(NaN|finite)", command="merge"),
    Case("output-folder-not-writable", _unwritable_output, 6, r"cannot create output folder"),
    Case("out-of-space-mid-write", _file_size_limit, 6, r"no space left on the device while writing"),
]


def _snapshot(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    if folder.is_file():
        return {folder.name: hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*")) if not p.is_symlink()}


@pytest.mark.parametrize("case", CASES, ids=[c.row for c in CASES])
def test_bad_input(case: Case, tmp_path, cli_env):
    data, masks = make_dataset(tmp_path, shape=SHAPE)
    ckpt = make_checkpoint(tmp_path / "model.ckpt")
    out = tmp_path / "out"
    config = write_config(tmp_path / "config.yaml", data_folder=data, instances_mask_folder=masks,
                          prediction_folder=out, trained_model=ckpt)
    ctx = {"root": tmp_path, "data": data, "masks": masks, "ckpt": ckpt, "out": out, "config": config,
           "env": cli_env}
    case.setup(ctx)
    out = ctx["out"]
    if not out.exists() and case.command == "predict":
        out.mkdir()  # an existing, empty output folder must stay empty
    before_out = _snapshot(out)
    before_inputs = {k: _snapshot(ctx[k]) for k in ("data", "masks")}
    limit = ctx.get("fsize_limit")

    def limit_file_size():
        if limit:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(["subtomo-embed", case.command, "-c", str(config)], env=cli_env, capture_output=True,
                          text=True, preexec_fn=limit_file_size)
    message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    assert proc.returncode == case.code, proc.stderr[-2000:]
    assert re.search(case.message, message), message
    assert "Traceback" not in proc.stderr
    errors = [l for l in proc.stderr.splitlines() if re.match(r"^\w[\w ]* error: ", l)]
    assert len(errors) == 1, proc.stderr
    assert _snapshot(out) == before_out
    assert {k: _snapshot(ctx[k]) for k in ("data", "masks")} == before_inputs
    assert not (tmp_path / "pwned").exists()


def test_debug_shows_the_traceback(dataset, cli_env):
    dataset["ckpt"].unlink()
    proc = subprocess.run(["subtomo-embed", "predict", "-c", str(dataset["config"]), "--debug"], env=cli_env,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_table_in_the_docs_matches_these_rows():
    doc = (REPO / "docs" / "troubleshooting.md").read_text()
    rows = re.findall(r"^\|\s*`([a-z0-9-]+)`\s*\|", doc, flags=re.M)
    assert rows == [c.row for c in CASES]
    for case in CASES:
        line = next(l for l in doc.splitlines() if l.startswith(f"| `{case.row}`"))
        assert f"| {case.code} |" in line, case.row


def test_extract_of_a_missing_tomogram_path_is_an_input_error(dataset, cli_env, tmp_path):
    proc = subprocess.run(["subtomo-embed", "extract", "-c", str(dataset["config"]), "--tomogram",
                           str(tmp_path / "absent.mrc"), "--mask", str(tmp_path / "absent.h5"), "--output-dir",
                           str(tmp_path / "patches")], env=cli_env, capture_output=True, text=True)
    assert proc.returncode == 4 and "Traceback" not in proc.stderr
    assert re.search(r"absent\.mrc: cannot read the file", proc.stderr.strip().splitlines()[-1]), proc.stderr
