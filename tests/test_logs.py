"""What a run leaves to read afterwards (issue 29 point 8): its error in the log file, progress lines
for every long step, the resolved config in every output folder; and the log is never written
through a planted link (issue 31 class 2)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest_analysis import make_prediction_folder
from synthetic import write_config
from typer.testing import CliRunner

from subtomo_embed.cli import app
from subtomo_embed.core.config import load_config
from subtomo_embed.core.progress import logged
from subtomo_embed.stages.provenance import resolved_config

LOG_NAME = "subtomo-embed.log"


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_a_failed_run_leaves_its_error_in_the_log_file(tmp_path):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    config = write_config(tmp_path / "config.yaml", prediction_folder=empty, log_dir=tmp_path / "logs")
    code, output = invoke("kmeans", "--config_file", config)
    assert code != 0
    error = [line for line in output.splitlines() if "no embeddings found" in line]
    assert len(error) == 1, output  # once on the terminal
    log = (tmp_path / "logs" / LOG_NAME).read_text()
    assert error[0] in log and " ERROR " in log


def test_the_log_is_never_written_through_a_planted_link(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("not a log\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / LOG_NAME).symlink_to(target)
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    config = write_config(tmp_path / "config.yaml", prediction_folder=empty, log_dir=logs)
    code, output = invoke("kmeans", "--config_file", config)
    assert code != 0
    assert output.strip().splitlines() == [
        f"resource error: {logs / LOG_NAME}: the log file is a symbolic link; remove it "
        "(the log is not written through links)"
    ]
    assert target.read_text() == "not a log\n"
    assert (logs / LOG_NAME).is_symlink()  # not ours to remove


def test_logged_says_how_far_a_long_step_is(caplog):
    ticks = iter(range(0, 1000, 2))  # every item takes 2 s
    log = logging.getLogger("subtomo_embed.test")
    with caplog.at_level(logging.INFO, logger="subtomo_embed.test"):
        assert list(logged(range(10), "galleries", log, every_s=5.0, clock=lambda: float(next(ticks)))) == list(
            range(10)
        )
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["galleries: 3 of 10 (6 s)", "galleries: 6 of 10 (12 s)", "galleries: 9 of 10 (18 s)"] + [
        "galleries: 10 done in 22.0 s"
    ]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    out = root / "out"
    make_prediction_folder(out, counts=(40, 50), volumes=root / "volumes")
    config = write_config(
        root / "config.yaml",
        data_folder=root / "volumes" / "tomograms",
        instances_mask_folder=root / "volumes" / "masks",
        prediction_folder=out,
        log_dir=root / "logs",
        clustering_kmeans__visualization=True,
    )
    for step in ("kmeans", "visualize"):
        code, output = invoke(step, "--config_file", config, "--set", "seed=3")
        assert code == 0, output
    return {"root": root, "out": out, "config": config, "log": (root / "logs" / LOG_NAME).read_text()}


def test_umap_galleries_and_the_explorer_log_their_progress(analysed):
    log = analysed["log"]
    for line in (
        "projecting 90 embeddings to 2D",
        "projected in",
        "KMeans cluster galleries: 3 done in",
        "per-tomogram projections: 2 done in",
        "explorer: cutting 90 thumbnails",
        "explorer thumbnails, by tomogram: 2 done in",
        "explorer: writing the page",
    ):
        assert line in log, line


def test_every_output_folder_keeps_the_config_it_was_made_with(analysed):
    out = analysed["out"]
    expected = resolved_config(load_config(analysed["config"], ["seed=3"]))
    for kept in (out / "kmeans_config.yaml", out / "vis" / "kmeans_config.yaml", out / "vis" / "visualize_config.yaml"):
        again = load_config(kept)
        assert resolved_config(again) == expected, kept
        assert again.seed == 3  # the --set override is in it
    # a step re-runs from the kept config alone
    code, output = invoke("visualize", "--config_file", out / "vis" / "visualize_config.yaml")
    assert code == 0, output
    assert Path(out / "vis" / "all_tomograms_umap.csv").is_file()
