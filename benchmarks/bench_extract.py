#!/usr/bin/env python3
"""Time `subtomo-embed extract` against CryoSiam's per-instance whole-volume method, in one run.

Builds a synthetic tomogram (default 200×512×512 float32) with N instances (default 400), writes
it as MRC + CryoSiam HDF5 mask, then runs, each as its own process so that wall time and peak
memory (ru_maxrss from wait4) are those of that process alone:

* baseline — CryoSiam's algorithm as in ``simsiam_prediction/extract_patches_embeddings.py``:
  read the whole tomogram, normalize it, ``expand_labels`` over the whole mask,
  ``regionprops_table``, then per instance a whole-volume comparison ``mask == label``, the box,
  convex-hull masking and MONAI's SpatialPad + CenterSpatialCrop;
* ours — the real ``subtomo-embed extract`` command, start-up and I/O included, run ``--repeat``
  times (3) into fresh folders; the median counts (this machine's timings vary by ±30 %).

It checks that both produce identical patches, and prints seconds, peak memory and the ratio.

    .venv/bin/python benchmarks/bench_extract.py [--shape 200 512 512] [--instances 400]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_data(folder: Path, shape, n, seed=0, patch=64):
    import h5py
    import mrcfile

    rng = np.random.default_rng(seed)
    volume = rng.normal(0.0, 1.0, shape).astype(np.float32)
    mask = np.zeros(shape, np.int32)
    label = 0
    tries = 0
    while label < n and tries < n * 50:
        tries += 1
        r = rng.integers(3, 13, 3)
        c = [int(rng.integers(r[i], shape[i] - r[i])) for i in range(3)]
        box = tuple(slice(c[i] - r[i], c[i] + r[i] + 1) for i in range(3))
        if mask[box].any():
            continue
        zz, yy, xx = np.ogrid[-r[0] : r[0] + 1, -r[1] : r[1] + 1, -r[2] : r[2] + 1]
        inside = (zz / r[0]) ** 2 + (yy / r[1]) ** 2 + (xx / r[2]) ** 2 <= 1
        label += 1
        mask[box][inside] = label
        volume[box][inside] += 1.5
    data = folder / "data"
    masks = folder / "masks"
    data.mkdir()
    masks.mkdir()
    with mrcfile.new(data / "TS_01.mrc") as mrc:
        mrc.set_data(volume)
    with h5py.File(masks / "TS_01_instance_preds.h5", "w") as f:
        f.create_dataset("instances", data=mask)
    return data / "TS_01.mrc", masks / "TS_01_instance_preds.h5", label


def baseline(tomogram: str, mask_path: str, out: str, patch: int, expand: int, masking: int) -> None:
    """CryoSiam's per-instance whole-volume method (the steps of its predict script)."""
    import h5py
    import mrcfile
    from monai.transforms import CenterSpatialCrop, NormalizeIntensity, ScaleIntensityRange, SpatialPad
    from skimage.measure import regionprops_table
    from skimage.morphology import convex_hull_image
    from skimage.segmentation import expand_labels

    image = mrcfile.read(tomogram).astype(np.float32)
    image = np.asarray(ScaleIntensityRange(a_min=-3, a_max=3, b_min=0, b_max=1, clip=True)(image[None]))
    image = np.asarray(NormalizeIntensity(subtrahend=0.5, divisor=0.2)(image))[0]
    with h5py.File(mask_path) as f:
        mask = f["instances"][()]
    mask = expand_labels(mask, distance=expand)
    regions = regionprops_table(mask, properties=["label", "area", "bbox", "centroid"])
    size = (patch,) * 3
    patches = []
    for i in range(len(regions["label"])):
        if regions["area"][i] < 10:
            continue
        sub_mask_full = mask == regions["label"][i]
        sl = tuple(slice(regions[f"bbox-{k}"][i], regions[f"bbox-{k + 3}"][i]) for k in range(3))
        p = image[sl].copy()
        if masking == 1:
            p[convex_hull_image(sub_mask_full[sl]) == 0] = 0
        elif masking == 2:
            p[sub_mask_full[sl] == 0] = 0
        patches.append(np.asarray(CenterSpatialCrop(roi_size=size)(SpatialPad(size)(p[None])))[0])
    np.save(out, np.stack(patches))


def run_measured(cmd: list[str], env=None) -> tuple[float, float, str]:
    """(seconds, peak RSS in GB, stderr) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return seconds, usage.ru_maxrss / 1024 / 1024, err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[200, 512, 512])
    ap.add_argument("--instances", type=int, default=400)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--expand", type=int, default=3)
    ap.add_argument("--masking", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="runs of ours (each into a fresh folder); the median counts")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--_baseline", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._baseline:
        baseline(*args._baseline, args.patch, args.expand, args.masking)
        return

    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        tomogram, mask, n = make_data(tmp, tuple(args.shape), args.instances)
        print(
            f"data: {tuple(args.shape)} float32 ({tomogram.stat().st_size / 1e9:.2f} GB), {n} instances, "
            f"patch {args.patch}³, expand_labels {args.expand}, masking_type {args.masking} "
            f"(made in {time.perf_counter() - t0:.1f} s)"
        )
        overrides = [
            "--set",
            f"parameters.data.patch_size=[{args.patch},{args.patch},{args.patch}]",
            "--set",
            f"expand_labels={args.expand}",
            "--set",
            f"masking_type={args.masking}",
            "--set",
            "min_particle_size=10",
            "--set",
            "parameters.data.min=-3",
            "--set",
            "parameters.data.max=3",
            "--set",
            "parameters.data.mean=0.5",
            "--set",
            "parameters.data.std=0.2",
        ]
        runs = [
            run_measured(
                [
                    str(bin_dir / "subtomo-embed"),
                    "extract",
                    "--tomogram",
                    str(tomogram),
                    "--mask",
                    str(mask),
                    "--output-dir",
                    str(tmp / f"ours_{i}"),
                    "--quiet",
                    *overrides,
                ]
            )
            for i in range(args.repeat)
        ]
        ours_s = float(np.median([r[0] for r in runs]))
        ours_gb = max(r[1] for r in runs)
        print(
            f"subtomo-embed extract : {ours_s:7.2f} s  peak {ours_gb:5.2f} GB  ({n / ours_s:.0f} instances/s; "
            f"median of {args.repeat}: {', '.join(f'{r[0]:.2f}' for r in runs)} s)"
        )
        if args.skip_baseline:
            return
        base_s, base_gb, _ = run_measured(
            [
                sys.executable,
                __file__,
                "--patch",
                str(args.patch),
                "--expand",
                str(args.expand),
                "--masking",
                str(args.masking),
                "--_baseline",
                str(tomogram),
                str(mask),
                str(tmp / "baseline.npy"),
            ]
        )
        print(f"CryoSiam method       : {base_s:7.2f} s  peak {base_gb:5.2f} GB")
        import h5py

        with h5py.File(tmp / "ours_0" / "TS_01_patches.h5") as f:
            ours = f["patches"][()]
        ref = np.load(tmp / "baseline.npy")
        identical = ours.shape == ref.shape and np.array_equal(ours, ref)
        max_diff = float(np.abs(ours - ref).max()) if ours.shape == ref.shape else float("nan")
        print(f"patches identical     : {identical} ({ours.shape[0]} patches, max |diff| {max_diff:.2g})")
        print(f"speed-up              : {base_s / ours_s:.1f}x   memory ratio {base_gb / ours_gb:.1f}x")
        print(
            json.dumps(
                {
                    "ours_s": round(ours_s, 2),
                    "baseline_s": round(base_s, 2),
                    "speedup": round(base_s / ours_s, 1),
                    "ours_peak_gb": round(ours_gb, 2),
                    "baseline_peak_gb": round(base_gb, 2),
                    "identical": identical,
                }
            )
        )


if __name__ == "__main__":
    main()
