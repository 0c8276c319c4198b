"""The pipeline's CPU step: tomogram + instance mask → ``<stem>_patches.h5`` (for ``embed``)."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..core import h5files, io, layout, volumes
from ..core.config import Config
from ..core.errors import ConfigError
from ..core.extract import Extraction, cut_patches_into_file, import_modules
from ..core.patch_contract import patch_contract
from . import tomograms as T

log = logging.getLogger(__name__)


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
    out = T.prepare_output_folder(
        output_dir or cfg.path("prediction_folder"), cfg, "--output-dir" if output_dir else "prediction_folder"
    )
    if tomogram is not None:
        if mask is None:
            raise ConfigError("--tomogram needs --mask")
        jobs: list[T.TomogramInputs | None] = [T.TomogramInputs(cfg.stem(tomogram.name), tomogram, mask, regions)]
    else:
        jobs = [T.locate_inputs(cfg, t) for t in T.list_tomograms(cfg, filename)]
    written = []
    for job in jobs:
        if job is None:  # no mask, skipped
            continue
        target = layout.patches_file(out, job.stem)
        stamp = io.fingerprint(job.files(), extraction=T.extraction_settings(cfg))
        if not overwrite and io.read_h5_attr(target, io.FINGERPRINT_ATTR) == stamp:
            log.info("%s: patches already extracted, skipped", job.stem)
            written.append(target)
            continue
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="subtomo-read") as reader:
            reading = reader.submit(T.load_tomogram_and_mask, job)
            import_modules(cfg.masking_type)  # meanwhile
            volume, mask_array = reading.result()
        plan = T.plan_tomogram(cfg, job, mask_array, processes=True)  # no torch here: forked workers are safe
        del mask_array
        write_patches(target, job.stem, volume, plan, cfg, stamp, str(job.tomogram))
        log.info("%s: %d patches in %.1f s → %s", job.stem, len(plan), time.perf_counter() - start, target)
        written.append(target)
    return written


def write_patches(
    path: Path, stem: str, volume: np.ndarray, plan: Extraction, cfg: Config, stamp: str, source: str
) -> None:
    """``<stem>_patches.h5``: the cutting workers write each patch straight into the file
    (see :func:`cut_patches_into_file`)."""
    contract = patch_contract(cfg)

    def cut_into(file: Path, offset: int | None) -> None:
        assert offset is not None  # the file has patches: their data block is allocated
        with io.progress(total=len(plan), desc=stem, unit="patch") as bar:
            cut_patches_into_file(volume, plan, contract, file, offset, source, progress=bar)

    attrs = {
        "stem": stem,
        "settings": json.dumps(T.extraction_settings(cfg)),
        "tomogram_shape": list(volume.shape),
        io.FINGERPRINT_ATTR: stamp,
    }
    voxel = volumes.mrc_voxel_size(source)
    if voxel is not None:  # else embed's STAR gets no Å coordinates, as predict's
        attrs["voxel_size"] = list(voxel)
    h5files.write_patches_file(path, (len(plan), *contract.patch_size), plan.columns, attrs, cut_into)
