"""A small real run for the explorer and napari tests: two synthetic tomograms through the CLI
(in-process): predict, kmeans (k=3), spectral (k=2), visualize."""

from __future__ import annotations

from pathlib import Path

from synthetic import make_checkpoint, make_dataset, write_config


def run_cli(*args) -> str:
    """Run ``subtomo-embed ARGS`` in this process; returns its output, fails the test on a non-zero exit."""
    from typer.testing import CliRunner

    from subtomo_embed.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def small_run(root: Path) -> dict:
    data, masks = make_dataset(root, n_instances=9)
    out = root / "out"
    config = write_config(root / "config.yaml", data_folder=data, instances_mask_folder=masks, prediction_folder=out,
                          trained_model=make_checkpoint(root / "model.ckpt"),
                          clustering_spectral__num_clusters=2)
    for command in ("predict", "kmeans", "spectral", "visualize"):
        run_cli(command, "--config_file", config)
    return {"root": root, "data": data, "masks": masks, "out": out, "config": config}
