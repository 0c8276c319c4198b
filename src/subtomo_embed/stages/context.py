"""The folders every analysis stage shares: where the embeddings come from, where merged and
cluster files go, and where figures and coordinates go (``--input-dir``, ``--output-dir``,
``--vis-dir`` and their config defaults)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core import layout
from ..core.config import Config
from ..core.errors import InputDataError


@dataclass
class Folders:
    input_dir: Path
    output_dir: Path
    vis_dir: Path


def resolve_folders(cfg: Config, input_dir: Path | None, output_dir: Path | None, vis_dir: Path | None) -> Folders:
    """``--input-dir`` (default ``prediction_folder``), ``--output-dir`` (default ``prediction_folder``),
    ``--vis-dir`` (default ``visualization.prediction_folder``, else ``<output-dir>/vis``)."""
    inp = Path(input_dir).absolute() if input_dir else cfg.path("prediction_folder")
    out = Path(output_dir).absolute() if output_dir else (cfg.optional_path("prediction_folder") or inp)
    if vis_dir:
        vis = Path(vis_dir).absolute()
    elif cfg.visualization.prediction_folder:
        vis = Path(os.path.expanduser(cfg.visualization.prediction_folder)).absolute()
    else:
        vis = layout.default_vis(out)
    if not inp.is_dir():
        raise InputDataError("input folder does not exist", inp)
    cfg.check_output_folder(out, "--output-dir" if output_dir else "prediction_folder")
    cfg.check_output_folder(vis, "--vis-dir" if vis_dir else "the visualization folder")
    return Folders(inp, out, vis)
