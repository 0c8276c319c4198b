"""The per-tomogram stage: tomogram + instance mask + checkpoint → one embedding per instance.

Three entry points share every piece:

* :func:`run_predict` — CryoSiam's ``simsiam_embeddings_predict``: for each tomogram, cut the
  patches in a background thread while the model embeds the previous batch; no intermediate file.
* :func:`run_extract` — the pipeline's CPU step: tomogram + mask → ``<stem>_patches.h5``.
* :func:`run_embed` — the pipeline's GPU step: ``<stem>_patches.h5`` + checkpoint → outputs.

Outputs (CryoSiam's names): ``<stem>_embeds.h5`` (``embeddings`` [dim, N]),
``<stem>_instance_labels.h5`` (``labels`` int64 [N]), ``<stem>_instance_regions.csv`` and
``<stem>_instance_regions.star``; each written atomically, ``_embeds.h5`` last. A tomogram whose
outputs all exist and were made with the same inputs and settings is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from ..core import io
from ..core.config import Config
from ..core.errors import ConfigError, InputDataError, SubtomoError
from ..core.extract import (
    Extraction,
    Normalization,
    cut_patches_into_file,
    import_modules,
    iter_patches,
    plan_extraction,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

OUTPUT_SUFFIXES = ("_instance_labels.h5", "_instance_regions.csv", "_instance_regions.star", "_embeds.h5")
PATCHES_SUFFIX = "_patches.h5"
FINGERPRINT_ATTR = "subtomo_embed_fingerprint"


# --------------------------------------------------------------------------------------------
# inputs


@dataclass
class TomogramInputs:
    stem: str
    tomogram: Path
    mask: Path | None
    regions: Path | None = None  # CryoSiam's <stem>_instance_regions.csv beside the mask


def list_tomograms(cfg: Config, filename: str | None = None) -> list[Path]:
    """The tomograms to process: ``--filename``, else ``test_files`` (+ ``train_files``), else all."""
    folder = cfg.path("data_folder")
    if not folder.is_dir():
        raise InputDataError("data_folder does not exist or is not a folder", folder)
    if filename:
        names = [filename]
    elif cfg.test_files is not None:
        names = list(cfg.test_files) + list(cfg.train_files or [])
    else:
        names = sorted(
            p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(cfg.file_extension)
            and not p.name.startswith(".")
        ) + list(cfg.train_files or [])
        if not names:
            raise InputDataError(f"no '*{cfg.file_extension}' tomograms found (file_extension)", folder)
    paths = []
    for name in names:
        path = Path(name) if os.path.isabs(name) else folder / name
        if not path.is_file():
            raise InputDataError("tomogram listed for processing does not exist", path)
        paths.append(path)
    return paths


def locate_inputs(cfg: Config, tomogram: Path) -> TomogramInputs:
    stem = cfg.stem(tomogram.name)
    mask_folder = cfg.path("instances_mask_folder")
    if not mask_folder.is_dir():
        raise InputDataError("instances_mask_folder does not exist or is not a folder", mask_folder)
    mask = io.find_mask(mask_folder, stem, cfg.file_extension, cfg.instances_suffix)
    regions = mask_folder / f"{stem}_instance_regions{cfg.instances_suffix}.csv"
    return TomogramInputs(stem, tomogram, mask, regions if regions.is_file() else None)


def load_tomogram_and_mask(inputs: TomogramInputs) -> tuple[np.ndarray, np.ndarray]:
    volume, _ = io.open_mrc_volume(inputs.tomogram)
    mask = io.read_instance_mask(inputs.mask)
    if mask.shape != volume.shape:
        raise InputDataError(
            f"mask shape {tuple(mask.shape)} differs from its tomogram's {tuple(volume.shape)} ({inputs.tomogram.name})",
            inputs.mask,
        )
    if not mask.any():
        raise InputDataError("mask has no instances (all voxels are 0)", inputs.mask)
    return volume, mask


def check_patch_fits(cfg: Config, shape: tuple[int, ...], tomogram: Path) -> None:
    """A patch larger than the tomogram itself is a mistake in the config, not something to pad."""
    size = patch_size(cfg)
    if any(p > s for p, s in zip(size, shape)):
        raise ConfigError(
            f"parameters.data.patch_size {list(size)} is larger than the tomogram {tomogram.name} {list(shape)}",
            cfg.source,
        )


def plan_tomogram(cfg: Config, inputs: TomogramInputs, mask: np.ndarray, processes: bool = False) -> Extraction:
    table = io.read_regions_csv(inputs.regions) if inputs.regions is not None else None
    if table is not None:
        log.info("%s: boxes and areas from %s (CryoSiam's regions table)", inputs.stem, inputs.regions.name)
    check_patch_fits(cfg, mask.shape, inputs.tomogram)
    plan = plan_extraction(mask, cfg.expand_labels, cfg.min_particle_bound, cfg.max_particle_bound, table, processes)
    return plan


def normalization(cfg: Config) -> Normalization:
    d = cfg.parameters.data
    return Normalization(d.min, d.max, d.mean, d.std)


def patch_size(cfg: Config) -> tuple[int, int, int]:
    return tuple(int(s) for s in cfg.parameters.data.patch_size)


# --------------------------------------------------------------------------------------------
# fingerprints: what makes an output stale


def extraction_settings(cfg: Config) -> dict:
    d = cfg.parameters.data
    return {
        "min_particle_size": cfg.min_particle_bound,
        "max_particle_size": cfg.max_particle_bound,
        "masking_type": cfg.masking_type,
        "expand_labels": cfg.expand_labels,
        "patch_size": list(patch_size(cfg)),
        "normalization": [d.min, d.max, d.mean, d.std],
    }


def file_identity(path: Path | None) -> list | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError as err:
        raise InputDataError(f"cannot read the file ({err.strerror})", path) from None
    return [path.name, st.st_size, int(st.st_mtime)]


def checkpoint_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def outputs_of(folder: Path, stem: str) -> list[Path]:
    return [folder / f"{stem}{suffix}" for suffix in OUTPUT_SUFFIXES]


def is_done(folder: Path, stem: str, expected: str) -> bool:
    """True when every output exists and ``_embeds.h5`` records the same fingerprint."""
    paths = outputs_of(folder, stem)
    if not all(p.is_file() for p in paths):
        return False
    try:
        with h5py.File(paths[-1], "r") as f:
            found = f.attrs.get(FINGERPRINT_ATTR)
    except OSError:
        return False
    if found is None:
        log.info("%s: outputs made by another tool; keeping them (use --overwrite to redo)", stem)
        return True
    if isinstance(found, bytes):
        found = found.decode()
    if found != expected:
        log.info("%s: inputs or settings changed since the last run; redoing it", stem)
        return False
    return True


# --------------------------------------------------------------------------------------------
# outputs


@dataclass(frozen=True)
class TomogramGeometry:
    """What the regions STAR needs to give RELION 5 coordinates: size and voxel size (z, y, x, Å)."""

    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]

    @classmethod
    def of(cls, tomogram: Path, shape: tuple[int, ...]) -> "TomogramGeometry":
        return cls(tuple(int(n) for n in shape), io.mrc_voxel_size(tomogram))


def regions_star(stem: str, table: pd.DataFrame, geometry: TomogramGeometry | None) -> pd.DataFrame:
    """The ``<stem>_instance_regions.star`` table: CryoSiam's columns + rlnTomoName + Å coordinates."""
    if geometry is None:
        return io.regions_to_star_table(table, stem)
    return io.regions_to_star_table(table, stem, geometry.shape, geometry.voxel_size)


def write_outputs(folder: Path, stem: str, table: pd.DataFrame, embeddings: np.ndarray, stamp: str,
                  star: pd.DataFrame | None = None, exact_floats: bool = False) -> list[Path]:
    """Write the four per-tomogram outputs (``_embeds.h5`` last, so it marks completion)."""
    labels_path, csv_path, star_path, embeds_path = paths = outputs_of(folder, stem)
    labels = table["label"].to_numpy(dtype=np.int64)
    star = io.regions_to_star_table(table, stem) if star is None else star
    writes = [
        lambda: io.write_h5(labels_path, {"labels": labels}),
        lambda: io.write_regions_csv(csv_path, table),
        lambda: io.write_star(star_path, star, exact_floats),
        lambda: io.write_h5(embeds_path, {"embeddings": np.ascontiguousarray(embeddings.T)},
                            {FINGERPRINT_ATTR: stamp, "tomogram": stem}),
    ]
    done: list[Path] = []
    try:
        for path, write in zip(paths, writes):
            write()
            done.append(path)
    except BaseException:
        for path in done:  # all four or none: never a half-written tomogram
            path.unlink(missing_ok=True)
        raise
    return paths


def progress_bar(total: int, desc: str):
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: extract forks its workers while a bar is open
    return tqdm(total=total, desc=desc, unit="patch", leave=False, disable=None, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------
# model


@dataclass
class LoadedModel:
    model: object
    network: dict
    digest: str
    path: Path

    @property
    def dim(self) -> int:
        return int(self.network["dim"])


def load_checkpoint_for(cfg: Config, checkpoint: Path | None = None) -> LoadedModel:
    from ..core.model import load_model

    if checkpoint is None:
        checkpoint = cfg.optional_path("trained_model")
        if checkpoint is None:
            log_dir = cfg.optional_path("log_dir")
            if log_dir is None:
                raise ConfigError("key 'trained_model' must be set (or log_dir with model/last.ckpt)", cfg.source)
            checkpoint = log_dir / "model" / "last.ckpt"
    model, network = load_model(checkpoint, cfg.contrastive)
    net_cfg = cfg.parameters.network
    if "dim" in net_cfg.model_fields_set and net_cfg.dim != network["dim"]:
        raise ConfigError(
            f"parameters.network.dim is {net_cfg.dim} but the checkpoint {checkpoint.name} has dim {network['dim']}",
            cfg.source,
        )
    return LoadedModel(model, network, checkpoint_digest(checkpoint), checkpoint)


def embed_with_config(loaded: LoadedModel, patches, count: int, device, cfg: Config, progress) -> np.ndarray:
    """Embeddings [count, dim] of ``patches`` with the config's batch size, head and precision."""
    from ..core.embed import embed_patches

    return embed_patches(loaded.model, patches, count, loaded.dim, device, cfg.hyper_parameters.batch_size,
                         cfg.contrastive, cfg.mixed_precision, progress)


# --------------------------------------------------------------------------------------------
# entry points


@dataclass
class RunSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def report(self, what: str, folder: Path) -> None:
        log.info(
            "%s: %d tomogram(s) done, %d already complete, %d failed; outputs in %s",
            what, len(self.done), len(self.skipped), len(self.failed), folder,
        )
        for stem, reason in self.failed:
            log.error("  failed: %s: %s", stem, reason)

    @contextmanager
    def attempt(self, stem: str, keep_going: bool):
        """One tomogram's work: with ``keep_going`` its error is recorded and logged, not raised."""
        try:
            yield
        except SubtomoError as err:
            if not keep_going:
                raise
            self.failed.append((stem, str(err)))
            log.error("%s", err)


def run_predict(
    cfg: Config,
    filename: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
    keep_going: bool = False,
) -> RunSummary:
    """Embed every selected tomogram (CryoSiam's ``simsiam_embeddings_predict``)."""
    from ..core.embed import pick_device

    out = io.check_writable_folder(cfg.path("prediction_folder"))
    io.remove_stale_temporaries(out)
    tomograms = list_tomograms(cfg, filename)
    loaded = load_checkpoint_for(cfg)
    torch_device = pick_device(device, cfg.parameters.gpu_devices)
    log.info("embedding %d tomogram(s) on %s, batch size %d", len(tomograms), torch_device,
             cfg.hyper_parameters.batch_size)
    settings = extraction_settings(cfg)
    summary = RunSummary()
    for tomogram in tomograms:
        stem = cfg.stem(tomogram.name)
        with summary.attempt(stem, keep_going):
            inputs = locate_inputs(cfg, tomogram)
            if inputs.mask is None:
                message = f"no instance mask for {tomogram.name} in instances_mask_folder"
                if cfg.skip_missing_masks:
                    log.warning("%s: skipped (%s)", stem, message)
                    summary.skipped.append(stem)
                    continue
                raise InputDataError(message, cfg.path("instances_mask_folder"))
            stamp = fingerprint(settings, cfg.contrastive, loaded.digest, file_identity(inputs.tomogram),
                                file_identity(inputs.mask), file_identity(inputs.regions))
            if not overwrite and is_done(out, stem, stamp):
                log.info("%s: already complete, skipped", stem)
                summary.skipped.append(stem)
                continue
            start = time.perf_counter()
            volume, mask = load_tomogram_and_mask(inputs)
            plan = plan_tomogram(cfg, inputs, mask)
            del mask
            with progress_bar(len(plan), stem) as bar:
                patches = (p for _, p in iter_patches(volume, plan, patch_size(cfg), cfg.masking_type,
                                                      normalization(cfg), str(inputs.tomogram)))
                embeddings = embed_with_config(loaded, patches, len(plan), torch_device, cfg, bar.update)
            geometry = TomogramGeometry.of(inputs.tomogram, volume.shape)
            table = plan.table
            written = write_outputs(out, stem, table, embeddings, stamp, regions_star(stem, table, geometry))
            seconds = time.perf_counter() - start
            log.info("%s: %d instances embedded in %.1f s (%.1f/s) → %s", stem, len(plan), seconds,
                     len(plan) / max(seconds, 1e-9), written[-1])
            summary.done.append(stem)
    summary.report("predict", out)
    return summary


def run_extract(
    cfg: Config,
    tomogram: Path | None = None,
    mask: Path | None = None,
    regions: Path | None = None,
    output_dir: Path | None = None,
    filename: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Cut the patches of one or more tomograms into ``<stem>_patches.h5`` files."""
    out = io.check_writable_folder(output_dir or cfg.path("prediction_folder"))
    io.remove_stale_temporaries(out)
    if tomogram is not None:
        if mask is None:
            raise ConfigError("--tomogram needs --mask")
        jobs = [TomogramInputs(cfg.stem(tomogram.name), tomogram, mask, regions)]
    else:
        jobs = [locate_inputs(cfg, t) for t in list_tomograms(cfg, filename)]
    written = []
    for job in jobs:
        if job.mask is None:
            if cfg.skip_missing_masks:
                log.warning("%s: skipped (no instance mask)", job.stem)
                continue
            raise InputDataError(f"no instance mask for {job.tomogram.name}", cfg.path("instances_mask_folder"))
        target = out / f"{job.stem}{PATCHES_SUFFIX}"
        stamp = fingerprint(extraction_settings(cfg), file_identity(job.tomogram), file_identity(job.mask),
                            file_identity(job.regions))
        if not overwrite and _patches_done(target, stamp):
            log.info("%s: patches already extracted, skipped", job.stem)
            written.append(target)
            continue
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="subtomo-read") as reader:
            reading = reader.submit(load_tomogram_and_mask, job)
            import_modules(cfg.masking_type)  # meanwhile
            volume, mask_array = reading.result()
        plan = plan_tomogram(cfg, job, mask_array, processes=True)  # no torch here: forked workers are safe
        del mask_array
        write_patches(target, job.stem, volume, plan, cfg, stamp, str(job.tomogram))
        log.info("%s: %d patches in %.1f s → %s", job.stem, len(plan), time.perf_counter() - start, target)
        written.append(target)
    return written


def _patches_done(path: Path, stamp: str) -> bool:
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get(FINGERPRINT_ATTR) == stamp
    except OSError:
        return False


def write_patches(path: Path, stem: str, volume: np.ndarray, plan: Extraction, cfg: Config, stamp: str,
                  source: str) -> None:
    """``<stem>_patches.h5``: ``patches`` [N, z, y, x] float32 (contiguous) + ``regions/*``.

    The dataset's space is allocated up front, so the cutting workers write each patch straight
    to its place in the file (see :func:`cut_patches_into_file`)."""
    size = patch_size(cfg)
    with io.atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            offset = io.create_contiguous_dataset(f, "patches", (len(plan), *size), np.float32)
            if len(plan):
                f.flush()
                with progress_bar(len(plan), stem) as bar:
                    cut_patches_into_file(volume, plan, size, cfg.masking_type, normalization(cfg), tmp, offset,
                                          source, progress=bar)
            group = f.create_group("regions")
            for column, values in plan.columns.items():
                group.create_dataset(column, data=values)
            f.attrs["columns"] = json.dumps(list(plan.columns))
            f.attrs["stem"] = stem
            f.attrs["settings"] = json.dumps(extraction_settings(cfg))
            f.attrs["tomogram_shape"] = list(volume.shape)
            f.attrs["voxel_size"] = list(io.mrc_voxel_size(source))
            f.attrs[FINGERPRINT_ATTR] = stamp


@dataclass
class PatchesFile:
    stem: str
    table: pd.DataFrame
    count: int
    stamp: str  # the extraction's fingerprint
    geometry: TomogramGeometry | None


def read_patches_table(path: Path) -> PatchesFile:
    """What a patches file holds, but the patches themselves."""
    import pandas as pd

    if not path.is_file():
        raise InputDataError("patches file does not exist", path)
    try:
        with h5py.File(path, "r") as f:
            if "patches" not in f or "regions" not in f:
                raise InputDataError("not a patches file (needs datasets 'patches' and group 'regions')", path)
            columns = json.loads(f.attrs["columns"])
            table = pd.DataFrame({c: f["regions"][c][()] for c in columns})
            stem = f.attrs["stem"]
            geometry = None
            if "tomogram_shape" in f.attrs and "voxel_size" in f.attrs:
                geometry = TomogramGeometry(tuple(int(n) for n in f.attrs["tomogram_shape"]),
                                            tuple(float(v) for v in f.attrs["voxel_size"]))
            return PatchesFile((stem.decode() if isinstance(stem, bytes) else str(stem)), table,
                               f["patches"].shape[0], str(f.attrs.get(FINGERPRINT_ATTR, "")), geometry)
    except InputDataError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise InputDataError(f"not a readable patches file ({err})", path) from None


def iter_patch_file(path: Path, chunk: int = 32):
    """Yield the patches of a patches file in order, reading ``chunk`` at a time."""
    with h5py.File(path, "r") as f:
        ds = f["patches"]
        for start in range(0, ds.shape[0], chunk):
            yield from ds[start:start + chunk]


def run_embed(
    cfg: Config,
    patches_files: list[Path] | None = None,
    checkpoint: Path | None = None,
    output_dir: Path | None = None,
    device: str = "auto",
    filename: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Embed patches files (from :func:`run_extract`) and write the per-tomogram outputs."""
    from ..core.embed import pick_device

    out = io.check_writable_folder(output_dir or cfg.path("prediction_folder"))
    io.remove_stale_temporaries(out)
    if not patches_files:
        folder = cfg.path("prediction_folder")
        stems = [cfg.stem(t.name) for t in list_tomograms(cfg, filename)]
        patches_files = [folder / f"{s}{PATCHES_SUFFIX}" for s in stems]
    loaded = load_checkpoint_for(cfg, checkpoint)
    torch_device = pick_device(device, cfg.parameters.gpu_devices)
    written = []
    for path in patches_files:
        patches = read_patches_table(path)
        stem, table, count = patches.stem, patches.table, patches.count
        stamp = fingerprint(patches.stamp, cfg.contrastive, loaded.digest)
        if not overwrite and is_done(out, stem, stamp):
            log.info("%s: already complete, skipped", stem)
            continue
        start = time.perf_counter()
        with progress_bar(count, stem) as bar:
            embeddings = embed_with_config(loaded, iter_patch_file(path), count, torch_device, cfg, bar.update)
        files = write_outputs(out, stem, table, embeddings, stamp, regions_star(stem, table, patches.geometry))
        log.info("%s: %d instances embedded on %s in %.1f s → %s", stem, count, torch_device,
                 time.perf_counter() - start, files[-1])
        written.extend(files)
    return written
