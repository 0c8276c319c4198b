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


def outputs(folder: Path) -> dict[str, str]:
    """Every output file's SHA-256 (the log, the kept config, which names its own folder, and
    temporaries excluded)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.glob("*"))
        if p.is_file() and not p.name.endswith((".log", "_config.yaml"))
    }


def finished(folder: Path) -> list[Path]:
    """The final (renamed into place) output files in ``folder``: no temporaries, no log."""
    if not folder.exists():
        return []
    return [p for p in folder.iterdir() if not p.name.startswith(".") and not p.name.endswith(".log")]


def finished_files(folder: Path) -> int:
    return len(finished(folder))


def temporaries(folder: Path) -> list[Path]:
    return list(folder.glob(".subtomo-tmp-*")) if folder.exists() else []


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    data, masks = make_dataset(root, n_tomograms=3, shape=(40, 64, 64), n_instances=25)
    ckpt = make_checkpoint(root / "model.ckpt")
    return root, data, masks, ckpt


def config_for(root: Path, workload, name: str) -> tuple[Path, Path]:
    _, data, masks, ckpt = workload
    out = root / name
    cfg = write_config(
        root / f"{name}.yaml",
        data_folder=data,
        instances_mask_folder=masks,
        prediction_folder=out,
        trained_model=ckpt,
        parameters__data__patch_size=[16, 16, 16],
    )
    return cfg, out


def run(cmd, env) -> None:
    subprocess.run(cmd, env=env, check=True, capture_output=True)


def startup_seconds(cmd, env, out: Path) -> float:
    """Run ``cmd`` to the end; return how long it took to write its first file (imports, reading, model)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    while proc.poll() is None:
        if first is None and (finished_files(out) or temporaries(out)):
            first = time.perf_counter() - start
        time.sleep(0.002)
    assert proc.returncode == 0
    return first if first is not None else time.perf_counter() - start


def kill_at(cmd, env, out: Path, *, files: int | None = None, temporary: bool = False, after: float = 0.0) -> bool:
    """Start ``cmd`` and SIGKILL it at a point of its own progress: ``after`` seconds past the moment
    ``out`` first holds a temporary (``temporary``) or ``files`` finished output files (or past the
    start, when neither is given). Returns True if the process was still running when killed."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.perf_counter()
    reached = files is None and not temporary
    while proc.poll() is None:
        if not reached:
            reached = (temporary and bool(temporaries(out))) or (files is not None and finished_files(out) >= files)
            if reached:
                start = time.perf_counter()
        if reached and time.perf_counter() - start >= after:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.001)
    return False


@pytest.mark.slow
def test_predict_killed_anywhere_resumes_to_identical_outputs(workload, cli_env, tmp_path):
    ref_cfg, ref_out = config_for(tmp_path, workload, "reference")
    startup = startup_seconds(["subtomo-embed", "predict", "-c", str(ref_cfg)], cli_env, ref_out)
    reference = outputs(ref_out)
    assert len(reference) == 12  # 4 files for each of 3 tomograms
    # 14 kill points, each at a point of the run's own progress, so they land wherever the machine's speed:
    # three times during start-up (imports, reading, model), at the first temporary, right after each of the
    # first 9 finished files (mid-write of the next one, or extracting/embedding the next tomogram) and
    # 50 ms into the second tomogram. (After the 10th file the last two are renamed within a millisecond.)
    points = [dict(after=startup * f) for f in (0.2, 0.4, 0.6)] + [dict(temporary=True)]
    points += [dict(files=k) for k in range(1, 10)] + [dict(files=4, after=0.05)]
    complete_after_kill = []
    for i, point in enumerate(points):
        cfg, out = config_for(tmp_path, workload, f"killed_{i}")
        cmd = ["subtomo-embed", "predict", "-c", str(cfg)]
        assert kill_at(cmd, cli_env, out, **point), f"the run ended before the kill at {point}"
        # whatever the kill left, nothing half-written may look finished
        assert all(p.stat().st_size > 0 for p in finished(out))
        if out.exists() and outputs(out) == reference:
            complete_after_kill.append(point)
        run(cmd, cli_env)
        assert outputs(out) == reference, f"kill at {point}"
        assert not temporaries(out)
    assert not complete_after_kill, "these kills came after the run had written everything"


@pytest.mark.slow
def test_extract_and_embed_killed_resume_to_identical_outputs(workload, cli_env, tmp_path):
    cfg, ref_out = config_for(tmp_path, workload, "reference")
    extract = ["subtomo-embed", "extract", "-c", str(cfg)]
    embed = ["subtomo-embed", "embed", "-c", str(cfg), "--device", "cpu"]
    run(extract, cli_env)
    extracted = finished_files(ref_out)
    run(embed, cli_env)
    reference = outputs(ref_out)
    # 4 kills in each step: at its first temporary, and after each finished tomogram but the last
    # (extract writes 1 file per tomogram, embed 4)
    step_points = {
        "extract": [dict(temporary=True), dict(files=1), dict(files=2), dict(files=2, after=0.02)],
        "embed": [
            dict(temporary=True),
            dict(files=extracted + 4),
            dict(files=extracted + 8),
            dict(files=extracted + 8, after=0.02),
        ],
    }
    for i, (step, point) in enumerate((s, p) for s, ps in step_points.items() for p in ps):
        run_cfg, out = config_for(tmp_path, workload, f"split_{i}")
        commands = {
            name: [str(run_cfg) if c == str(cfg) else c for c in cmd]
            for name, cmd in (("extract", extract), ("embed", embed))
        }
        if step == "embed":
            run(commands["extract"], cli_env)
        assert kill_at(commands[step], cli_env, out, **point), f"{step} ended before the kill at {point}"
        assert outputs(out) != reference
        for name in ("extract", "embed"):
            run(commands[name], cli_env)
        assert outputs(out) == reference, f"{step} killed at {point}"
        assert not temporaries(out)


@pytest.mark.slow  # three predict processes (their being separate processes is the point)
def test_two_runs_on_one_folder_at_once(workload, cli_env, tmp_path):
    ref_cfg, ref_out = config_for(tmp_path, workload, "reference")
    subprocess.run(["subtomo-embed", "predict", "-c", str(ref_cfg)], env=cli_env, check=True, capture_output=True)
    cfg, out = config_for(tmp_path, workload, "shared")
    procs = [
        subprocess.Popen(
            ["subtomo-embed", "predict", "-c", str(cfg)], env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
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
