"""Killed runs resume to byte-identical outputs; concurrent runs do not corrupt each other.

22 SIGKILL points in all: 14 across a whole `predict` run (start-up, extraction, inference,
writing), 4 in `extract` and 4 in `embed`."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from pathlib import Path

import pytest
from synthetic import make_checkpoint, make_dataset, write_config

# SIGKILL at these fractions of an uninterrupted run's time: during start-up, extraction, embedding, writing
FRACTIONS = [0.25, 0.35, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0]


def outputs(folder: Path) -> dict[str, str]:
    """Every output file's SHA-256 (the log and temporaries excluded)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*"))
            if p.is_file() and not p.name.endswith(".log")}


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    data, masks = make_dataset(root, n_tomograms=3, shape=(40, 64, 64), n_instances=25)
    ckpt = make_checkpoint(root / "model.ckpt")
    return root, data, masks, ckpt


def config_for(root: Path, workload, name: str) -> tuple[Path, Path]:
    _, data, masks, ckpt = workload
    out = root / name
    cfg = write_config(root / f"{name}.yaml", data_folder=data, instances_mask_folder=masks, prediction_folder=out,
                       trained_model=ckpt, parameters__data__patch_size=[16, 16, 16])
    return cfg, out


def timed(cmd, env) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def kill_after(cmd, env, seconds: float) -> bool:
    """Start ``cmd``, SIGKILL it after ``seconds``; True if it was still running."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


@pytest.mark.slow
def test_predict_killed_anywhere_resumes_to_identical_outputs(workload, cli_env, tmp_path):
    ref_cfg, ref_out = config_for(tmp_path, workload, "reference")
    duration = timed(["subtomo-embed", "predict", "-c", str(ref_cfg)], cli_env)
    reference = outputs(ref_out)
    assert len(reference) == 12
    killed = 0
    for i, fraction in enumerate(FRACTIONS):
        cfg, out = config_for(tmp_path, workload, f"killed_{i}")
        cmd = ["subtomo-embed", "predict", "-c", str(cfg)]
        killed += kill_after(cmd, cli_env, duration * fraction)
        # whatever the kill left, nothing half-written may look finished
        for p in out.glob("*_embeds.h5") if out.exists() else []:
            assert p.stat().st_size > 0
        subprocess.run(cmd, env=cli_env, check=True, capture_output=True)
        assert outputs(out) == reference, f"kill at {fraction:.2f} of the run"
        assert not list(out.glob(".subtomo-tmp-*"))
    assert killed >= len(FRACTIONS) - 2  # the kills landed while the run was going on


@pytest.mark.slow
def test_extract_and_embed_killed_resume_to_identical_outputs(workload, cli_env, tmp_path):
    cfg, ref_out = config_for(tmp_path, workload, "reference")
    extract = ["subtomo-embed", "extract", "-c", str(cfg)]
    embed = ["subtomo-embed", "embed", "-c", str(cfg), "--device", "cpu"]
    t_extract = timed(extract, cli_env)
    t_embed = timed(embed, cli_env)
    reference = outputs(ref_out)
    points = [(extract, f) for f in (0.4, 0.6, 0.8, 0.95)] + [(embed, f) for f in (0.4, 0.6, 0.8, 0.95)]
    for i, (cmd, fraction) in enumerate(points):
        run_cfg, out = config_for(tmp_path, workload, f"split_{i}")
        cmd = [c if c != str(cfg) else str(run_cfg) for c in cmd]
        if cmd[1] == "embed":
            subprocess.run([c if c != "embed" else "extract" for c in cmd[:4]], env=cli_env, check=True,
                           capture_output=True)
        kill_after(cmd, cli_env, (t_extract if cmd[1] == "extract" else t_embed) * fraction)
        for step in (extract, embed):
            subprocess.run([c if c != str(cfg) else str(run_cfg) for c in step], env=cli_env, check=True,
                           capture_output=True)
        assert outputs(out) == reference, f"{cmd[1]} killed at {fraction:.2f}"


def test_two_runs_on_one_folder_at_once(workload, cli_env, tmp_path):
    ref_cfg, ref_out = config_for(tmp_path, workload, "reference")
    subprocess.run(["subtomo-embed", "predict", "-c", str(ref_cfg)], env=cli_env, check=True, capture_output=True)
    cfg, out = config_for(tmp_path, workload, "shared")
    procs = [subprocess.Popen(["subtomo-embed", "predict", "-c", str(cfg)], env=cli_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        p.wait()
        assert p.returncode == 0, p.stderr.read()
    assert outputs(out) == outputs(ref_out)
    assert not list(out.glob(".subtomo-tmp-*"))


def test_only_temporaries_of_ended_runs_are_removed(tmp_path):
    """A second run must not delete what a live run is still writing."""
    import socket

    from subtomo_embed.core.io import TMP_MARK, remove_stale_temporaries

    host = socket.gethostname()
    live = subprocess.Popen(["sleep", "30"])
    ended = subprocess.Popen(["true"])
    ended.wait()
    try:
        keep = tmp_path / f"{TMP_MARK}{live.pid}@{host}~0000aaaa-TS_01_embeds.h5"
        gone = tmp_path / f"{TMP_MARK}{ended.pid}@{host}~0000bbbb-TS_01_embeds.h5"
        elsewhere = tmp_path / f"{TMP_MARK}{ended.pid}@another-node~0000cccc-TS_01_embeds.h5"
        for p in (keep, gone, elsewhere):
            p.write_bytes(b"partial")
        assert remove_stale_temporaries(tmp_path) == 1
        assert keep.exists() and not gone.exists() and elsewhere.exists()  # another node's: only when old
    finally:
        live.kill()
        live.wait()
