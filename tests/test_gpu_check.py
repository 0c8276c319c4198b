"""benchmarks/gpu_check.py (issue 30), proved on the CPU: `--tiny --device cpu` through its wrapper
writes a CSV and a Markdown table with every row measured or skipped with a reason, the fp32
baseline's embeddings equal to the network's, and a profiler trace.

torch.compile is left out here (`--skip torch_compile`): building its C++ kernels for the tiny network
took ~90 s on the 2-core development machine, where its row ran (compiled, min cos 1.000000)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"

# every row the check prints; batch_* and workers_* depend on the preset and the CPUs
FIXED_ROWS = [
    "fp32_baseline",
    "mixed_precision",
    "bf16_autocast",
    "channels_last_3d",
    "cudnn_benchmark",
    "pinned_non_blocking",
    "cuda_graph",
    "torch_compile",
    "best_combination",
    "training_step",
]
CUDA_ONLY = ["cudnn_benchmark", "pinned_non_blocking", "cuda_graph"]


def wrapper_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update(PYTHON=sys.executable, PYTHONUNBUFFERED="1", **extra)
    return env


@pytest.mark.slow  # ~1 min on 2 shared cores (the set-up alone imports the package and cuts patches)
def test_tiny_cpu_run_writes_every_row(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(out), "--tiny", "--device", "cpu", "--skip", "torch_compile"],
        capture_output=True,
        text=True,
        timeout=600,
        env=wrapper_env(),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no CUDA GPU used" in proc.stdout  # the device report says it is the CPU

    with open(out / "gpu_check.csv", newline="") as f:
        rows = {r["row"]: r for r in csv.DictReader(f)}
    markdown = (out / "gpu_check.md").read_text()

    names = set(rows)
    assert set(FIXED_ROWS) <= names, names
    assert any(n.startswith("batch_") for n in names), names
    assert any(n.startswith("workers") for n in names), names
    for name, r in rows.items():
        assert f"| {name} |" in markdown, name
        assert r["status"] in ("ok", "skipped"), r
        if r["status"] == "skipped":
            assert r["note"].strip(), f"{name} skipped without a reason"
            continue
        assert float(r["model_patches_per_s"]) > 0, r
        if name != "training_step":
            assert float(r["embed_patches_per_s"]) > 0, r
            assert -1.0 <= float(r["min_cos_vs_fp32"]) <= 1.0 + 1e-6, r

    base = rows["fp32_baseline"]
    assert base["status"] == "ok", base
    assert float(base["min_cos_vs_fp32"]) == pytest.approx(1.0, abs=1e-5)  # EMBED gives what the network gives
    for name in CUDA_ONLY:
        assert rows[name]["status"] == "skipped" and "needs CUDA" in rows[name]["note"], rows[name]
    assert rows["torch_compile"]["note"] == "skipped by --skip"
    precision = rows["mixed_precision"]
    if precision["status"] == "ok":  # bf16 on the CPU: close to fp32, not equal
        assert 0.9 < float(precision["min_cos_vs_fp32"]) <= 1.0 + 1e-6

    if "profile skipped" not in markdown:
        trace = json.loads((out / "profile_trace.json").read_text())
        assert any(e.get("cat") == "cpu_op" for e in trace["traceEvents"])
        assert "kernels" in markdown and "copies" in markdown and "Python" in markdown
        assert (out / "profile_ops.txt").stat().st_size > 0


def test_wrapper_needs_a_folder_or_out(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=wrapper_env(), cwd=tmp_path)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_wrapper_prefers_out_when_set(tmp_path):
    """$OUT (the device machine's output folder) wins over the folder argument; --help runs no check."""
    out = tmp_path / "from_env"
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "from_arg"), "--help"],
        capture_output=True,
        text=True,
        env=wrapper_env(OUT=str(out)),
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"writing into {out}" in proc.stderr and "--budget-s" in proc.stdout
    assert out.is_dir() and not (tmp_path / "from_arg").exists()


def _gpu_check():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return gpu_check


def test_profile_summary_of_a_cuda_trace():
    """The CUDA branch of the profile summary, on a hand-made Chrome trace (no GPU here): kernels and
    copies summed on the device, the GPU's idle time the wall minus their union (overlaps counted once)."""
    g = _gpu_check()
    events = [
        {"ph": "X", "cat": "kernel", "name": "conv", "ts": 0, "dur": 400},
        {"ph": "X", "cat": "kernel", "name": "bn", "ts": 300, "dur": 200},  # overlaps the first by 100
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD", "ts": 600, "dur": 100},
        {"ph": "X", "cat": "gpu_memset", "name": "Memset", "ts": 700, "dur": 50},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 0, "dur": 30},
        {"ph": "X", "cat": "cpu_op", "name": "aten::conv3d", "ts": 0, "dur": 35},
        {"ph": "i", "cat": "kernel", "name": "instant, not a span", "ts": 0},
    ]
    lines = g.summarise_trace({"traceEvents": events}, wall_us=1000.0, main_tid=1, cuda=True)
    text = "\n".join(lines)
    assert "GPU kernels: 0.6 ms (60 % of 1.0 ms), 2 launches" in text
    assert "copies (GPU memcpy/memset): 0.1 ms (15 % of 1.0 ms), 2 copies" in text
    assert "GPU idle (Python, host, data path, launch gaps): 0.3 ms (35 % of 1.0 ms)" in text  # 1000 - 650 busy
    assert "CUDA runtime calls (launches, syncs): 0.0 ms" in text


def test_cpu_trace_self_times_exclude_children():
    g = _gpu_check()
    ops = [
        {"ph": "X", "cat": "cpu_op", "name": "aten::conv3d", "ts": 0, "dur": 100, "tid": 1},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mkldnn_convolution", "ts": 10, "dur": 80, "tid": 1},
        {"ph": "X", "cat": "cpu_op", "name": "aten::copy_", "ts": 120, "dur": 20, "tid": 1},
        {"ph": "X", "cat": "cpu_op", "name": "aten::stack", "ts": 0, "dur": 50, "tid": 2},
    ]
    lines = "\n".join(g.summarise_trace({"traceEvents": ops}, wall_us=200.0, main_tid=1, cuda=False))
    assert "kernels (CPU ops computing, main thread): 0.1 ms (50 % of 0.2 ms)" in lines  # 20 + 80 µs
    assert "copies (copy/stack/cat ops, main thread): 0.0 ms (10 % of 0.2 ms)" in lines
    assert "main thread outside ops): 0.1 ms (40 % of 0.2 ms)" in lines
    assert g.union_us([(0, 10), (5, 20), (30, 40)]) == 30


def test_fixed_batch_padding_keeps_each_patch_embedding():
    """torch.compile and the CUDA graph run one batch shape, padding short batches with zero patches:
    in eval mode each patch's embedding does not depend on the others (checked here on the CPU)."""
    import torch

    g = _gpu_check()
    from subtomo_embed.core.model import build_simsiam

    torch.manual_seed(0)
    net = build_simsiam(g.NETWORKS["tiny"]).eval()
    lever = g.Lever(net, g.Variant("pad", 8, channels_last=True), torch.device("cpu"))
    x = torch.randn(3, 1, 16, 16, 16)
    with torch.inference_mode():
        padded = lever._padded(x)
        assert padded.shape[0] == 8 and padded.is_contiguous(memory_format=torch.channels_last_3d)
        alone = net.embed(x)
        together = net.embed(padded)[:3]
    assert torch.allclose(alone, together, atol=1e-5)
