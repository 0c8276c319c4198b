"""The per-tomogram stage's inputs: which tomograms, their masks and regions tables, and the
settings that shape their patches (the same for ``predict``, ``extract`` and ``predict-centers``)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import io, layout, tables, volumes
from ..core.config import Config, plain_name
from ..core.errors import ConfigError, InputDataError
from ..core.extract import Extraction, plan_extraction
from ..core.patch_contract import patch_contract

log = logging.getLogger(__name__)


@dataclass
class TomogramInputs:
    stem: str
    tomogram: Path
    mask: Path | None
    regions: Path | None = None  # CryoSiam's <stem>_instance_regions.csv beside the mask

    def files(self) -> list[Path | None]:
        """What the outputs are made of (for their fingerprint)."""
        return [self.tomogram, self.mask, self.regions]


@dataclass(frozen=True)
class TomogramGeometry:
    """What the regions STAR needs to give RELION 5 coordinates: size and voxel size (z, y, x, Å)."""

    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]

    @classmethod
    def of(cls, tomogram: Path, shape: tuple[int, ...]) -> TomogramGeometry | None:
        """None when the header has no valid voxel size (the STAR then has no Å coordinates)."""
        z, y, x = (int(n) for n in shape)
        voxel = volumes.mrc_voxel_size(tomogram)
        return None if voxel is None else cls((z, y, x), voxel)


def prepare_output_folder(folder: Path, cfg: Config | None = None, what: str = "prediction_folder") -> Path:
    """Checked writable (created if needed) and cleared of an interrupted run's temporaries; with
    ``cfg``, first refused if it is an input folder (:meth:`Config.check_output_folder`)."""
    if cfg is not None:
        cfg.check_output_folder(folder, what)
    folder = io.check_writable_folder(folder)
    io.remove_stale_temporaries(folder)
    return folder


def list_tomograms(cfg: Config, filename: str | None = None) -> list[Path]:
    """The tomograms to process: ``--filename``, else ``test_files`` (+ ``train_files``), else all."""
    folder = cfg.path("data_folder")
    if not folder.is_dir():
        raise InputDataError("data_folder does not exist or is not a folder", folder)
    if filename:
        try:
            names = [plain_name(filename, "a tomogram file name (in data_folder)")]
        except ValueError as err:
            raise ConfigError(f"--filename {filename!r}: {err}") from None
    elif cfg.test_files is not None:
        names = list(cfg.test_files) + list(cfg.train_files or [])
    else:
        names = sorted(
            p.name
            for p in folder.iterdir()
            if p.is_file() and p.name.endswith(cfg.file_extension) and not p.name.startswith(".")
        ) + list(cfg.train_files or [])
        if not names:
            raise InputDataError(f"no '*{cfg.file_extension}' tomograms found (file_extension)", folder)
    paths = []
    for name in names:
        path = Path(name) if os.path.isabs(name) else folder / name
        if not path.is_file():
            raise InputDataError("tomogram listed for processing does not exist", path)
        layout.safe_stem(cfg.stem(path.name), path)  # the one name rule, before any work (core/names.py)
        paths.append(path)
    return paths


def locate_inputs(cfg: Config, tomogram: Path) -> TomogramInputs | None:
    """A tomogram's mask (and CryoSiam's regions table beside it). A missing mask is an error, or
    with ``skip_missing_masks`` a warning and None (the tomogram is skipped)."""
    stem = cfg.stem(tomogram.name)
    mask_folder = cfg.path("instances_mask_folder")
    if not mask_folder.is_dir():
        raise InputDataError("instances_mask_folder does not exist or is not a folder", mask_folder)
    mask = volumes.find_mask(mask_folder, stem, cfg.file_extension, cfg.instances_suffix)
    if mask is None:
        message = f"no instance mask for {tomogram.name} in instances_mask_folder"
        if not cfg.skip_missing_masks:
            raise InputDataError(message, mask_folder)
        log.warning("%s: skipped (%s)", stem, message)
        return None
    if mask.resolve() == tomogram.resolve():  # instances_mask_folder = data_folder with MRC masks
        raise InputDataError(
            "the instance mask found for this tomogram is the tomogram itself (instances_mask_folder is data_folder?)",
            tomogram,
        )
    regions = layout.cryosiam_regions(mask_folder, stem, cfg.instances_suffix)
    return TomogramInputs(stem, tomogram, mask, regions if regions.is_file() else None)


def load_tomogram_and_mask(inputs: TomogramInputs) -> tuple[np.ndarray, np.ndarray]:
    assert inputs.mask is not None
    volume, _ = volumes.open_mrc_volume(inputs.tomogram)
    mask = volumes.read_instance_mask(inputs.mask, (volume.shape, inputs.tomogram))
    if not mask.any():
        raise InputDataError("mask has no instances (all voxels are 0)", inputs.mask)
    return volume, mask


def check_patch_fits(cfg: Config, shape: tuple[int, ...], tomogram: Path) -> None:
    """A patch larger than the tomogram itself is a mistake in the config, not something to pad."""
    size = patch_contract(cfg).patch_size
    if any(p > s for p, s in zip(size, shape)):
        raise ConfigError(
            f"parameters.data.patch_size {list(size)} is larger than the tomogram {tomogram.name} {list(shape)}",
            cfg.source,
        )


def plan_tomogram(cfg: Config, inputs: TomogramInputs, mask: np.ndarray, processes: bool = False) -> Extraction:
    table = tables.read_regions_csv(inputs.regions) if inputs.regions is not None else None
    if inputs.regions is not None:
        log.info("%s: boxes and areas from %s (CryoSiam's regions table)", inputs.stem, inputs.regions.name)
    check_patch_fits(cfg, mask.shape, inputs.tomogram)
    return plan_extraction(
        mask, cfg.expand_labels, cfg.min_particle_bound, cfg.max_particle_bound, table, processes, inputs.regions
    )


def extraction_settings(cfg: Config) -> dict:
    """The settings that shape a tomogram's patches (part of every output's fingerprint): the size
    filter and the patch contract's :meth:`~..core.patch_contract.PatchContract.patch_record`."""
    return {
        "min_particle_size": cfg.min_particle_bound,
        "max_particle_size": cfg.max_particle_bound,
        **patch_contract(cfg).patch_record(),
    }
