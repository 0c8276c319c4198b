"""The napari reader's tables on hostile files (issue 31, class 11): a projection CSV that is not one, or a
cluster HDF5 of another size, type or layout, is a one-line input error naming it (or is ignored with a
warning that names it), never a raw exception inside napari. No napari needed: the reader's data layer."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from real_run import small_run

from subtomo_embed.core.errors import InputDataError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return small_run(tmp_path_factory.mktemp("napari_hostile"))


@pytest.fixture
def folder(run, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(run["out"], copy)
    return copy


def features(folder):
    from subtomo_embed.napari import _data

    sources, stems = _data.sources_of(folder)
    return _data.instance_features(sources, stems[0]), stems[0]


def test_the_untouched_folder_reads(folder):
    table, _ = features(folder)
    assert {"kmeans_cluster", "umap_x", "umap_y"} <= set(table.columns)


@pytest.mark.parametrize(
    "text",
    [
        b"\x00\xff garbage \x00\n\x01,\x02\n",
        b"a,b\n1,2\n",  # not a projection table
        b"tomogram,label,x,y\nTS_01,[1],0.5,0.5\n",  # a label that is not a number
        b'tomogram,label,x,y\nTS_01,1,"{""a"": 1}",0.5\n',  # a coordinate that is not one
    ],
)
def test_a_hostile_projection_table_is_a_one_line_error_naming_it(folder, text):
    csv = folder / "vis" / "all_tomograms_umap.csv"
    csv.write_bytes(text)
    with pytest.raises(InputDataError) as err:
        features(folder)
    assert str(csv) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("layout", ["huge", "floats", "strings", "external link"])
def test_a_hostile_cluster_file_is_ignored_with_a_warning_naming_it(folder, layout, caplog, tmp_path):
    table, stem = features(folder)
    path = folder / f"{stem}_clusters_kmeans.h5"
    path.unlink()
    with h5py.File(path, "w") as f:
        if layout == "huge":  # a small file that declares 10^10 entries
            f.create_dataset("predictions", shape=(10**10,), dtype="i8", chunks=(1024,))
        elif layout == "floats":
            f["predictions"] = np.full(len(table), 0.5)
        elif layout == "strings":
            f["predictions"] = np.array([b"x"] * len(table))
        else:
            other = tmp_path / "other.h5"
            with h5py.File(other, "w") as g:
                g["predictions"] = np.zeros(len(table), np.int64)
            f["predictions"] = h5py.ExternalLink(str(other), "predictions")
    got, _ = features(folder)
    assert "kmeans_cluster" not in got.columns
    assert any(str(path) in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)
