#!/usr/bin/env python3
"""Does the model wait on the data? Throughput of `predict` vs the model alone, in one process.

Section ``run`` (the issue-15 figure): N small synthetic tomograms (tests/synthetic.py), embedded
by predict's own loop (``stages.embedding.embed_tomograms``: read, grow labels, cut, embed, write
four files per tomogram), against the model alone on the same patches already in memory, with the
same batches:

* model alone   — ``embed_patches`` on each tomogram's patches, cut beforehand (the ceiling);
* overlap off   — the loop one tomogram after the other (``Run.overlap = False``): the model
                  waits while each tomogram is read, its labels grown and its first patches cut;
* overlap on    — the next tomogram prepared on a background thread while the model runs.

Section ``tomogram``: one larger tomogram, within which patches are cut on threads while the
model runs (model alone / cut all then embed, CryoSiam's order / ours).

Prints patches/s and the ratio to the model alone (1.0 = the model never waits), with the
network, patch size, batch size, device and precision; ``--repeat`` runs alternate the variants
and the median counts. On a 2-core CPU the data path and the network share the cores, so the
ratio is bounded by that; on a GPU node the network runs elsewhere and the ratio shows whether
the data path keeps up. GPU levers to measure one at a time: ``--mixed-precision``,
``--channels-last``, ``--cudnn-benchmark``, ``--batch-size``.

    .venv/bin/python benchmarks/bench_predict.py [--section run|tomogram|both] [--network small|cryosiam]
        [--device cpu|cuda] [--tomograms 12] [--tomogram-shape 64 128 128] [--tomogram-instances 40]
        [--patch 32] [--batch-size 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

NETWORKS = {
    "tiny": {  # a CPU stand-in, for a model fast enough that the data path matters as on a GPU
        "block_type": "basic",
        "num_layers": [1, 1, 1, 1],
        "num_filters": [8, 16, 32, 64],
        "dim": 128,
        "pred_dim": 32,
    },
    "small": {
        "block_type": "basic",
        "num_layers": [1, 1, 1, 1],
        "num_filters": [16, 32, 64, 128],
        "dim": 256,
        "pred_dim": 64,
    },
    "cryosiam": {
        "block_type": "bottleneck",
        "num_layers": [1, 1, 1, 1],
        "num_filters": [64, 128, 256, 512],
        "dim": 1024,
        "pred_dim": 512,
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--section", choices=["run", "tomogram", "both"], default="run")
    ap.add_argument("--network", choices=NETWORKS, default="small")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--mixed-precision", action="store_true", help="autocast (fp16 on CUDA, bf16 on the CPU)")
    ap.add_argument("--channels-last", action="store_true", help="network and input in channels_last_3d")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each variant (alternating); the median counts")
    ap.add_argument("--tomograms", type=int, default=12, help="run: how many tomograms")
    ap.add_argument("--tomogram-shape", type=int, nargs=3, default=[64, 128, 128], help="run: each tomogram's shape")
    ap.add_argument("--tomogram-instances", type=int, default=40, help="run: instances drawn per tomogram")
    ap.add_argument("--instances", type=int, default=200, help="tomogram: instances")
    ap.add_argument("--shape", type=int, nargs=3, default=[200, 400, 400], help="tomogram: its shape")
    args = ap.parse_args()

    import logging
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    sys.path[:0] = [str(here), str(here.parent / "tests")]  # bench_extract's and the tests' data makers
    logging.basicConfig(level=logging.WARNING)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    device = torch.device(args.device)
    if args.section in ("run", "both"):
        many_tomograms(args, device)
    if args.section in ("tomogram", "both"):
        one_tomogram(args, device)


def describe(args, device: torch.device, patches: int, what: str) -> str:
    precision = "fp32"
    if args.mixed_precision:
        precision = "mixed precision (" + ("fp16" if device.type == "cuda" else "bf16") + " autocast)"
    levers = [
        name for name, on in (("channels_last_3d", args.channels_last), ("cudnn.benchmark", args.cudnn_benchmark)) if on
    ]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return (
        f"{what}: {args.network} network, {patches} patches of {args.patch}³, batch {args.batch_size}, {where}, "
        f"{precision}{''.join(', ' + lever for lever in levers)}"
    )


def timed(fn) -> float:
    """Seconds ``fn()`` took (the device's queue drained before and after)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def many_tomograms(args, device: torch.device) -> None:
    """predict's loop over N tomograms, overlap off and on, against the model alone on the same patches."""
    import statistics
    import tempfile
    from functools import partial
    from pathlib import Path

    from synthetic import make_checkpoint, make_dataset, write_config

    from subtomo_embed.core.config import load_config
    from subtomo_embed.stages import embedding
    from subtomo_embed.stages.embedding import (
        embed_prepared,
        embed_tomograms,
        embed_with_config,
        predict_job,
        prepare,
        start_run,
    )
    from subtomo_embed.stages.tomograms import list_tomograms

    network = {**NETWORKS[args.network], "spatial_dims": 3, "in_channels": 1}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, masks = make_dataset(
            root, args.tomograms, tuple(args.tomogram_shape), args.tomogram_instances, mask_format="h5"
        )
        config = write_config(
            root / "config.yaml",
            data_folder=data,
            instances_mask_folder=masks,
            prediction_folder=root / "out",
            trained_model=make_checkpoint(root / "model.ckpt", network),
            mixed_precision=args.mixed_precision,
            parameters__data__patch_size=[args.patch] * 3,
            parameters__network__dim=network["dim"],
            hyper_parameters__batch_size=args.batch_size,
        )
        cfg = load_config(config)
        (root / "out").mkdir()
        run = start_run("predict", cfg, root / "out", None, str(device), overwrite=True, keep_going=False)
        if args.channels_last:  # the pipeline's input follows the weights' memory format
            run.model.model.to(memory_format=torch.channels_last_3d)
        jobs = [(cfg.stem(t.name), partial(predict_job, run, t)) for t in list_tomograms(cfg)]
        cut = []
        for stem, make_job in jobs:
            instances = prepare(run, stem, make_job).instances
            assert instances is not None
            cut.append(list(instances.patches))
        count = sum(len(p) for p in cut)

        def model_alone():
            for patches in cut:
                embed_with_config(run.model, iter(patches), len(patches), run.device, cfg, None)

        # the loop's time inside embed_prepared (model, copies, writing): the rest it waited for a
        # tomogram to be prepared (a figure less at the mercy of other load than patches/s)
        busy: list[float] = []
        waited: dict[str, list[float]] = {"overlap off": [], "overlap on": []}

        def embed_prepared_timed(*a):
            start = time.perf_counter()
            try:
                return embed_prepared(*a)
            finally:
                busy.append(time.perf_counter() - start)

        embedding.embed_prepared = embed_prepared_timed

        def pipeline(overlap: bool):
            run.overlap = overlap
            busy.clear()
            start = time.perf_counter()
            assert embed_tomograms(run, jobs).done == [stem for stem, _ in jobs]
            total = time.perf_counter() - start
            waited["overlap on" if overlap else "overlap off"].append((total - sum(busy), total))

        model_alone()  # warm-up (allocator, cuDNN autotuning, threads)
        variants = {
            "model alone": model_alone,
            "overlap off": partial(pipeline, False),
            "overlap on": partial(pipeline, True),
        }
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        for i in range(args.repeat):
            names = list(variants)[i % 3 :] + list(variants)[: i % 3]  # alternate the order against drift
            for name in names:
                seconds[name].append(timed(variants[name]))

    rate = {name: count / statistics.median(s) for name, s in seconds.items()}
    print(describe(args, device, count, f"{len(cut)} tomograms {'×'.join(map(str, args.tomogram_shape))}"))
    for name, s in seconds.items():
        runs = ", ".join(f"{count / x:.1f}" for x in s)
        if name == "model alone":
            print(f"  {name:12s}: {rate[name]:8.1f} patches/s                          (runs: {runs})")
            continue
        ratio = rate[name] / rate["model alone"]
        wait = statistics.median(w / t for w, t in waited[name])
        seconds_waited = ", ".join(f"{w:.2f}/{t:.1f}" for w, t in waited[name])
        print(
            f"  {name:12s}: {rate[name]:8.1f} patches/s  {ratio:.2f} of the model alone  (runs: {runs})\n"
            f"                loop waiting for a tomogram to be prepared: {100 * wait:.1f} % of the run "
            f"(median; s waited/s in all: {seconds_waited})"
        )
    print(f"  overlap on / overlap off = {rate['overlap on'] / rate['overlap off']:.2f}")


def one_tomogram(args, device: torch.device) -> None:
    """Within one tomogram: patches cut on threads while the model runs."""
    import tempfile
    from pathlib import Path

    from bench_extract import make_data

    from subtomo_embed.core import volumes
    from subtomo_embed.core.embed import embed_patches
    from subtomo_embed.core.extract import iter_patches, plan_extraction
    from subtomo_embed.core.model import build_simsiam
    from subtomo_embed.core.patch_contract import Normalization, PatchContract

    size = (args.patch,) * 3
    with tempfile.TemporaryDirectory() as tmp:
        tomogram, mask_path, n = make_data(Path(tmp), tuple(args.shape), args.instances)
        volume, _ = volumes.open_mrc_volume(tomogram)
        mask = volumes.read_instance_mask(mask_path)
        model = build_simsiam(NETWORKS[args.network]).eval().to(device)
        dim = NETWORKS[args.network]["dim"]
        contract = PatchContract(size, 1, norm=Normalization(-3, 3, 0.5, 0.2))

        def plan():
            return plan_extraction(mask, 3, 10, None)

        def run(patches, count):
            return embed_patches(
                model,
                patches,
                count,
                dim,
                device,
                args.batch_size,
                True,
                args.mixed_precision,
                None,
                args.channels_last,
            )

        # warm-up (cuDNN autotune, allocator)
        warm = [np.zeros(size, np.float32)] * args.batch_size
        run(iter(warm), len(warm))

        p = plan()
        patches = [x for _, x in iter_patches(volume, p, contract)]
        model_only = len(patches) / timed(lambda: run(iter(patches), len(patches)))

        def cut_then_embed():
            cut = [x for _, x in iter_patches(volume, plan(), contract, workers=1)]
            run(iter(cut), len(cut))

        sequential = len(patches) / timed(cut_then_embed)

        def overlapped():
            p = plan()
            run((x for _, x in iter_patches(volume, p, contract)), len(p))

        ours = len(patches) / timed(overlapped)

    print(describe(args, device, len(patches), f"one tomogram {'×'.join(map(str, args.shape))}"))
    print(f"  model alone : {model_only:8.1f} patches/s")
    print(f"  sequential  : {sequential:8.1f} patches/s   (cut all, then embed: CryoSiam's order)")
    print(f"  overlapped  : {ours:8.1f} patches/s   (ours)")
    print(f"  overlapped / model alone = {ours / model_only:.2f};  overlapped / sequential = {ours / sequential:.2f}")


if __name__ == "__main__":
    main()
