"""`--device cuda` without a visible GPU is an error (exit 7), never a silent CPU run.

A GPU job whose container lost its GPU (Apptainer without `--nv`, Docker without `--gpus`, a
node without the driver) used to fall back to the CPU and run for hours until the scheduler's
time limit; the pipeline's errorStrategy does not retry exit 7 (conf/base.config).
"""

from __future__ import annotations

import subprocess

import pytest
import torch
from synthetic import make_checkpoint, make_dataset, write_config, write_picks

from subtomo_embed.core.embed import pick_device
from subtomo_embed.core.errors import DeviceError, SubtomoError


def test_device_error_has_its_own_exit_code():
    codes = {cls.exit_code for cls in SubtomoError.__subclasses__() if cls is not DeviceError}
    assert DeviceError.exit_code == 7 and 7 not in codes


def test_a_gpu_beyond_the_visible_ones_is_a_device_error():
    with pytest.raises(DeviceError, match=r"--device cuda:\d+ asked for"):
        pick_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA sees no GPU")
@pytest.mark.parametrize("requested", ["cuda", "CUDA", "cuda:0"])
def test_cuda_without_a_gpu_is_a_device_error(requested):
    with pytest.raises(DeviceError, match="no CUDA GPU is visible") as err:
        pick_device(requested)
    assert "\n" not in str(err.value)


def test_cpu_and_auto_still_run_on_the_cpu():
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert pick_device("auto", 0) == torch.device("cpu")  # auto: the documented CPU fallback


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA sees no GPU")
@pytest.mark.slow  # each starts the CLI as a process (~7 s)
@pytest.mark.parametrize("command", ["predict", "predict-centers"])
def test_cli_device_cuda_fails_in_one_line_with_exit_7_and_writes_nothing(command, tmp_path, cli_env):
    data, masks = make_dataset(tmp_path, n_tomograms=1, n_instances=4)
    out = tmp_path / "out"
    out.mkdir()
    config = write_config(
        tmp_path / "config.yaml",
        data_folder=data,
        instances_mask_folder=masks,
        prediction_folder=out,
        trained_model=make_checkpoint(tmp_path / "model.ckpt"),
        centers_file=write_picks(tmp_path / "picks.star", masks),
        centers_patch_size=9,
    )
    proc = subprocess.run(
        ["subtomo-embed", command, "-c", str(config), "--device", "cuda"], env=cli_env, capture_output=True, text=True
    )
    assert proc.returncode == 7, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if " error: " in line]
    assert len(errors) == 1 and errors[0].startswith("device error: --device cuda asked for"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(out.iterdir()) == []
