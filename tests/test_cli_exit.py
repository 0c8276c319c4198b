"""The process end of ``cli.main``: after the command, Python's exit handlers run and the process
ends without tearing down its modules (``os._exit``). Safe only if nothing is lost on the way:
the log file, piped stdout, exit handlers and the outputs must all be complete. Each test runs a
real process, since what happens at its end is the point."""

from __future__ import annotations

import subprocess
import sys

import h5py
import pandas as pd
from conftest_analysis import make_prediction_folder
from synthetic import write_config


def test_log_file_and_outputs_are_complete_when_the_process_ends(tmp_path, cli_env):
    truth = make_prediction_folder(tmp_path / "pred", counts=(40, 30), dim=8)
    config = write_config(tmp_path / "c.yaml", prediction_folder=tmp_path / "pred", log_dir=tmp_path / "logs")
    proc = subprocess.run(["subtomo-embed", "merge", "-c", str(config)], env=cli_env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "logs" / "subtomo-embed.log").read_text()
    assert log.endswith("\n")
    last = log.splitlines()[-1]
    assert "wrote" in last and "embeddings_table.csv" in last  # the command's last record
    with h5py.File(tmp_path / "pred" / "embeddings.h5") as f:
        assert f["embeddings"].shape == (70, 8)
        assert (f["embeddings"][()] == truth["embeddings"]).all()
    assert len(pd.read_csv(tmp_path / "pred" / "embeddings_table.csv")) == 70


def test_exit_handlers_run_and_piped_stdout_is_flushed(tmp_path):
    marker = tmp_path / "atexit.txt"
    code = (
        "import atexit, sys\n"
        "from pathlib import Path\n"
        f"atexit.register(lambda: Path({str(marker)!r}).write_text('ran'))\n"
        "from subtomo_embed.cli import main\n"
        "print('before the command', end='')\n"  # left in stdout's buffer: the pipe is not a terminal
        "main(['--version'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("before the command") and "subtomo-embed" in proc.stdout
    assert marker.read_text() == "ran"


def test_a_failing_command_keeps_its_exit_code_and_its_log(tmp_path, cli_env):
    config = write_config(tmp_path / "c.yaml", prediction_folder=tmp_path / "missing", log_dir=tmp_path / "logs")
    proc = subprocess.run(["subtomo-embed", "merge", "-c", str(config)], env=cli_env, capture_output=True, text=True)
    assert proc.returncode == 4, proc.stderr
    assert "input folder does not exist" in proc.stderr.strip().splitlines()[-1]
