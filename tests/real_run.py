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


def inner_picks(path: Path, masks: Path, box: int, shape=(32, 48, 40), voxel_size: float = 10.0) -> Path:
    """RELION 5 picks at the mask instances' centroids (``synthetic.write_picks``), keeping those whose
    ``box`` fits inside the tomogram (a box across the border has a negative bbox start, which
    ``read_regions_csv`` refuses since the bbox checks; see the report)."""
    import numpy as np
    import starfile
    from synthetic import write_picks

    write_picks(path, masks, voxel_size)
    picks = starfile.read(path)
    inside = np.ones(len(picks), bool)
    for axis, name in enumerate("ZYX"):
        centre = picks[f"rlnCenteredCoordinate{name}Angst"].to_numpy() / voxel_size + shape[axis] / 2
        inside &= (np.round(centre) - box // 2 >= 0) & (np.round(centre) - box // 2 + box <= shape[axis])
    starfile.write({"particles": picks[inside].reset_index(drop=True)}, path, overwrite=True)
    return path


def small_run(root: Path) -> dict:
    data, masks = make_dataset(root, n_instances=9)
    out = root / "out"
    config = write_config(
        root / "config.yaml",
        data_folder=data,
        instances_mask_folder=masks,
        prediction_folder=out,
        trained_model=make_checkpoint(root / "model.ckpt"),
        clustering_spectral__num_clusters=2,
    )
    for command in ("predict", "kmeans", "spectral", "visualize"):
        run_cli(command, "--config_file", config)
    return {"root": root, "data": data, "masks": masks, "out": out, "config": config}
