import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("OMP_NUM_THREADS", "2")

from synthetic import make_checkpoint, make_dataset, write_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def dataset(tmp_path):
    """Two small tomograms with CryoSiam HDF5 masks, a tiny checkpoint and a config file."""
    data, masks = make_dataset(tmp_path)
    ckpt = make_checkpoint(tmp_path / "model.ckpt")
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "config.yaml",
        data_folder=data,
        instances_mask_folder=masks,
        prediction_folder=out,
        trained_model=ckpt,
    )
    return {"root": tmp_path, "data": data, "masks": masks, "ckpt": ckpt, "out": out, "config": config}


@pytest.fixture
def cli_env():
    env = dict(os.environ)
    env["PATH"] = f"{REPO / 'bin'}{os.pathsep}{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env
