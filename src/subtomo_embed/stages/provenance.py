"""What a run leaves beside its outputs so that it can be repeated: the config it was made with.

Every output folder keeps ``<step>_config.yaml``: the config as the step resolved it (the file's
keys, ``--set`` overrides applied, defaults filled in, path keys absolute), so the step can be re-run
on that folder, or on a copy of it, with ``--config_file <folder>/<step>_config.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from ..core import io, layout
from ..core.config import Config

log = logging.getLogger(__name__)

PATH_KEYS = ("data_folder", "instances_mask_folder", "log_dir", "prediction_folder", "trained_model", "centers_file")


def resolved_config(cfg: Config) -> dict:
    """The config's every key (YAML names), path keys absolute."""
    data = cfg.model_dump(mode="json", by_alias=True)
    for key in PATH_KEYS:
        if data.get(key):
            data[key] = str(cfg.path(key))
    return data


def keep_config(cfg: Config, folder: Path, step: str) -> Path:
    """Write ``<folder>/<step>_config.yaml`` (atomically): the config this step ran with."""
    path = layout.config_record(folder, step)
    header = (
        f"# the config `subtomo-embed {step}` made this folder's outputs with: {cfg.source},\n"
        "# any --set overrides applied and defaults filled in.\n"
        f"# Re-run: subtomo-embed {step} --config_file <this file>\n"
    )
    with io.atomic_output(path) as tmp:
        tmp.write_text(header + yaml.safe_dump(resolved_config(cfg), sort_keys=False), encoding="utf-8")
    log.info("the resolved config is kept in %s", path)
    return path
