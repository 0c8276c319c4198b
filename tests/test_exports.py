"""Exports: every STAR file a run writes has RELION 5's blocks and names (``data_optics`` then
``data_particles``, checked by tests/relion_labels.py against RELION's own labels), and the clusters
export as a copick project that copick itself reads back (``export-copick``).

The explorer's download (tests/test_explorer.py, in chromium) and napari's widget (tests/test_napari.py)
are checked with the same helper.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import starfile
from inprocess import run_cli
from real_run import small_run
from relion_labels import RELION_LABELS, check_relion_star
from tools import require_module

from subtomo_embed.core import star


def test_relion_blocks_one_optics_group_per_pixel_size_and_the_class_for_relion():
    particles = pd.DataFrame(
        {
            "rlnTomoName": ["TS_01", "TS_01", "TS_02"],
            "rlnCoordinateX": [1.0, 2.0, 3.0],
            "rlnOpticsGroup": [1, 1, 1],  # as two files of one group each, concatenated
            "rlnOpticsGroupName": ["opticsGroup1"] * 3,
            "rlnImagePixelSize": [5.4, 5.4, 10.8],
            "rlnClass": [0, 3, 0],
        }
    )
    optics, rows = star.relion_blocks(particles)
    assert optics.to_dict("list") == {
        "rlnOpticsGroup": [1, 2],
        "rlnOpticsGroupName": ["opticsGroup1", "opticsGroup2"],  # the names were not one per group
        "rlnImagePixelSize": [5.4, 10.8],
    }
    assert list(rows.columns) == ["rlnTomoName", "rlnCoordinateX", "rlnOpticsGroup", "rlnClass", "rlnClassNumber"]
    assert rows["rlnOpticsGroup"].tolist() == [1, 1, 2] and rows["rlnClassNumber"].tolist() == [0, 3, 0]
    # no optics columns: one group, with the pixel size given; no rows: still one group
    optics, rows = star.relion_blocks(particles[["rlnTomoName", "rlnCoordinateX"]], pixel_size=4.0)
    assert optics.to_dict("list") == {
        "rlnOpticsGroup": [1],
        "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnImagePixelSize": [4.0],
    }
    assert rows["rlnOpticsGroup"].tolist() == [1, 1, 1]
    optics, rows = star.relion_blocks(particles.iloc[:0][["rlnTomoName"]])
    assert optics["rlnOpticsGroup"].tolist() == [1] and list(rows.columns) == ["rlnTomoName", "rlnOpticsGroup"]


def test_the_writers_optics_labels_are_relions():
    assert set(star.OPTICS_LABELS) <= RELION_LABELS
    assert "rlnClass" not in RELION_LABELS and "rlnClassNumber" in RELION_LABELS  # hence both columns


def test_read_particles_gives_back_what_write_star_moved(tmp_path):
    particles = pd.DataFrame(
        {"rlnTomoName": ["a", "b"], "rlnCoordinateX": [1.5, 2.5], "rlnImagePixelSize": [5.4, 10.8], "rlnClass": [0, 1]}
    )
    star.write_star(tmp_path / "p.star", particles, exact=True)
    back = star.read_particles(tmp_path / "p.star")
    assert back["rlnImagePixelSize"].tolist() == [5.4, 10.8]
    assert back["rlnOpticsGroupName"].tolist() == ["opticsGroup1", "opticsGroup2"]
    # written again (a selection of a selection): the same text
    assert star.star_text(back, exact=True) == (tmp_path / "p.star").read_text()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return small_run(tmp_path_factory.mktemp("exports_run"))


@pytest.mark.slow  # a small real run: predict, kmeans, spectral, visualize (~1 min)
def test_every_star_file_of_a_run_has_relion5_blocks_and_names(run):
    out = run["out"]
    voxel = 10.0  # the synthetic tomograms' MRC header
    for stem in ("TS_01", "TS_02"):
        _, predicted = check_relion_star(out / f"{stem}_instance_regions.star", clustered=False, pixel_size=voxel)
        assert "rlnCenteredCoordinateXAngst" in predicted.columns
        for method in ("kmeans", "spectral"):
            _, rows = check_relion_star(
                out / f"{stem}_instance_regions_{method}_clustered.star", clustered=True, pixel_size=voxel
            )
            assert rows["rlnLabel"].tolist() == predicted["rlnLabel"].tolist()
    for method in ("kmeans", "spectral"):
        _, every = check_relion_star(out / f"{method}_particles.star", clustered=True, pixel_size=voxel)
        names = sorted(out.glob(f"{method}_cluster_*_particles.star"))
        assert len(names) == every["rlnClass"].nunique() >= 2
        for path in names:
            _, one = check_relion_star(path, clustered=True, pixel_size=voxel)
            assert one["rlnClass"].nunique() == 1
        # the same header and column order in every file of a clustering (RELION joins them as they are)
        headers = {
            path.read_text().split("\n\n\ndata_particles")[0] for path in [out / f"{method}_particles.star", *names]
        }
        assert len(headers) == 1


@pytest.mark.slow  # a copy of the small real run, clustered again
def test_one_optics_table_for_every_file_of_a_clustering(run, tmp_path):
    """Tomograms of two voxel sizes: the particles file and every cluster's file have the same optics
    block (a group keeps its number and name whichever tomograms a cluster holds)."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(run["root"], root)
    config = root / "config.yaml"
    config.write_text(config.read_text().replace(str(run["root"]), str(root)))
    predicted = root / "out" / "TS_02_instance_regions.star"
    star.write_star(predicted, star.read_particles(predicted).assign(rlnImagePixelSize=5.0), exact=True)
    assert run_cli(["kmeans", "--config_file", config]).returncode == 0
    out = root / "out"
    optics, every = check_relion_star(out / "kmeans_particles.star", clustered=True)
    assert optics["rlnImagePixelSize"].tolist() == [10.0, 5.0]
    group_of = dict(zip(every["rlnTomoName"], every["rlnOpticsGroup"]))
    assert group_of == {"TS_01": 1, "TS_02": 2}
    for path in sorted(out.glob("kmeans_cluster_*_particles.star")):
        its_optics, rows = check_relion_star(path, clustered=True)
        pd.testing.assert_frame_equal(its_optics, optics)
        assert all(group_of[t] == g for t, g in zip(rows["rlnTomoName"], rows["rlnOpticsGroup"]))


@pytest.mark.slow  # a small real run, then copick itself
def test_export_copick_reads_back_with_copick_one_object_per_cluster(run, tmp_path):
    require_module("copick")
    import copick

    out = run["out"]
    particles = starfile.read(out / "kmeans_particles.star")["particles"]
    project = tmp_path / "copick"
    result = run_cli(["export-copick", out / "kmeans_particles.star", "--output", project])
    assert result.returncode == 0, result.stderr
    root = copick.from_file(str(project / "copick_config.json"))
    clusters = sorted(particles["rlnClass"].unique())
    assert [o.name for o in root.pickable_objects] == [f"cluster-{c}" for c in clusters]
    assert all(o.is_particle for o in root.pickable_objects)
    assert sorted(r.name for r in root.runs) == ["TS_01", "TS_02"]
    seen = 0
    for r in root.runs:
        mine = particles[particles["rlnTomoName"] == r.name]
        for c in clusters:
            picks = r.get_picks(object_name=f"cluster-{c}", user_id="subtomo-embed", session_id="0")
            rows = mine[mine["rlnClass"] == c]
            if rows.empty:
                assert picks == []
                continue
            assert len(picks) == 1
            points = picks[0].points
            assert len(points) == len(rows)  # the right count per cluster and tomogram
            got = np.array([[p.location.x, p.location.y, p.location.z] for p in points])
            want = (
                rows[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(np.float64) * 10.0
            )  # Å: 10 Å voxels
            np.testing.assert_allclose(got, want)
            seen += len(points)
    assert seen == len(particles)

    # Å, not voxels: another voxel size scales every location; a re-export of one cluster (same
    # user, session and prefix) leaves no file of the earlier export's other clusters behind
    first = out / f"kmeans_cluster_{clusters[0]}_particles.star"
    result = run_cli(["export-copick", first, "--output", project, "--pixel-size", "5.4"])
    assert result.returncode == 0, result.stderr
    left = sorted(p.name for p in project.glob("ExperimentRuns/*/Picks/*.json"))
    assert left and all(name == f"subtomo-embed_0_cluster-{clusters[0]}.json" for name in left)
    one = starfile.read(first)["particles"]
    root = copick.from_file(str(project / "copick_config.json"))
    got = np.array([[p.location.x, p.location.y, p.location.z] for r in root.runs for pk in r.picks for p in pk.points])
    by_run = pd.concat([one[one["rlnTomoName"] == r.name] for r in root.runs])
    np.testing.assert_allclose(got, by_run[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy() * 5.4)


def test_export_copick_refuses_what_copick_cannot_take(tmp_path):
    from subtomo_embed.core.copick_export import write_copick
    from subtomo_embed.core.errors import InputDataError

    rows = pd.DataFrame(
        {"rlnTomoName": ["TS_01"], "rlnCoordinateX": [1.0], "rlnCoordinateY": [2.0], "rlnCoordinateZ": [3.0]}
    )
    with pytest.raises(InputDataError, match="voxel size of the coordinates is not known"):
        write_copick(rows.assign(rlnClass=[0]), tmp_path / "p")
    with pytest.raises(ValueError, match="not a copick name"):
        write_copick(rows, tmp_path / "p", user="my_name", pixel_size=1.0)
    with pytest.raises(InputDataError, match="not a plain file name"):
        write_copick(rows.assign(rlnTomoName=["../x"]), tmp_path / "p", pixel_size=1.0)
    with pytest.raises(InputDataError, match="no rlnCoordinateZ"):
        write_copick(rows.drop(columns=["rlnCoordinateZ"]), tmp_path / "p", pixel_size=1.0)
    assert not (tmp_path / "p").exists()
    # a selection without clusters (the explorer's, before any clustering): one object, the prefix
    done = write_copick(rows, tmp_path / "p", pixel_size=2.0, prefix="ribosome")
    config = json.loads(done.config.read_text())
    assert [o["name"] for o in config["pickable_objects"]] == ["ribosome"] and done.counts == {"ribosome": 1}
    doc = json.loads(done.picks[0].read_text())
    assert doc["points"][0]["location"] == {"x": 2.0, "y": 4.0, "z": 6.0} and doc["unit"] == "angstrom"


def test_export_copick_command_errors_are_one_line(tmp_path):
    particles = pd.DataFrame({"rlnTomoName": ["TS_01"], "rlnCoordinateX": [1.0], "rlnClass": [0]})
    star.write_star(tmp_path / "p.star", particles)
    result = run_cli(["export-copick", tmp_path / "p.star", "--output", tmp_path / "c"])
    assert result.returncode == 4, result.stderr
    assert "no rlnCoordinateY, rlnCoordinateZ" in result.stderr
    result = run_cli(["export-copick", tmp_path / "p.star", "--output", tmp_path / "c", "--user", "a b"])
    assert result.returncode == 3 and "not a copick name" in result.stderr


def test_a_clustered_star_class_is_this_clusterings_for_relion_too(tmp_path):
    """Picks from an earlier RELION classification carry their rlnClassNumber: the clustered STAR's
    rlnClassNumber is this clustering's (as its rlnClass), not theirs; their pixel size is kept."""
    from subtomo_embed.stages.clustering import clustered_star

    picks = pd.DataFrame(
        {
            "rlnTomoName": ["TS_01"] * 3,
            "rlnCoordinateX": [1.0, 2.0, 3.0],
            "rlnCoordinateY": [1.0, 2.0, 3.0],
            "rlnCoordinateZ": [1.0, 2.0, 3.0],
            "rlnClassNumber": [7, 7, 8],
            "rlnLabel": [11, 12, 13],
            "rlnImagePixelSize": [5.4] * 3,
        }
    )
    star.write_star(tmp_path / "TS_01_instance_regions.star", picks)
    regions = pd.DataFrame({"label": [13, 11, 12]})
    rows = clustered_star(tmp_path / "TS_01_instance_regions.star", regions, np.array([2, 0, 1]))
    assert rows["rlnLabel"].tolist() == [13, 11, 12] and rows["rlnClass"].tolist() == [2, 0, 1]
    star.write_star(tmp_path / "clustered.star", rows)
    _, back = check_relion_star(tmp_path / "clustered.star", clustered=True, pixel_size=5.4)
    assert back["rlnClassNumber"].tolist() == [2, 0, 1]
