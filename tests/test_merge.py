"""Merging per-tomogram embeddings: layout, tidy table, staleness, and bad input leaving nothing behind."""

from __future__ import annotations

import os
import time

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest_analysis import make_prediction_folder

from subtomo_embed.core import io, layout
from subtomo_embed.core import merge as M
from subtomo_embed.core.config import config_from_dict
from subtomo_embed.core.errors import InputDataError
from subtomo_embed.core.io import write_h5
from subtomo_embed.stages.context import Folders
from subtomo_embed.stages.merging import load_merged, merge_embeddings


def _cfg(**raw):
    return config_from_dict(raw, "test.yaml")


def _outputs(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(("embeddings", ".subtomo-tmp")))


# --------------------------------------------------------------------------------------------
# core


def test_embedding_rows_transposes_and_checks():
    emb = np.arange(12, dtype=np.float64).reshape(3, 4)  # [dim, N]
    rows = M.embedding_rows(emb)
    assert rows.shape == (4, 3) and rows.dtype == np.float32
    assert np.array_equal(rows[1], [1, 5, 9])
    with pytest.raises(M.MergeInputError, match="dimension 3 differs"):
        M.embedding_rows(emb, dim=8)
    emb[1, 2] = np.nan
    with pytest.raises(M.MergeInputError, match="NaN"):
        M.embedding_rows(emb)
    with pytest.raises(M.MergeInputError, match="2D"):
        M.embedding_rows(np.zeros(5))


def test_align_regions_follows_the_labels():
    regions = pd.DataFrame({"label": [5, 7, 9], "area": [50, 70, 90]})
    same = M.align_regions(regions, None, 3)
    assert same["label"].tolist() == [5, 7, 9]
    moved = M.align_regions(regions, np.array([9, 5, 7]), 3)
    assert moved["label"].tolist() == [9, 5, 7] and moved["area"].tolist() == [90, 50, 70]
    with pytest.raises(M.MergeInputError) as err:
        M.align_regions(regions, np.array([9, 5, 8]), 3)
    assert err.value.about == "regions"
    with pytest.raises(M.MergeInputError) as err:
        M.align_regions(regions, np.array([9, 5]), 3)
    assert err.value.about == "labels"


def test_tidy_table_rows_index_the_merged_embeddings():
    a = pd.DataFrame({"label": [3, 1], "area": [10, 20], "centroid-0": [1.5, 2.25]})
    b = pd.DataFrame({"label": [8], "area": [30], "centroid-0": [0.125]})
    table = M.tidy_table(["A", "B"], [a, b])
    assert list(table.columns[:3]) == ["tomogram", "label", "row"]
    assert table["row"].tolist() == [0, 1, 2]
    assert table["tomogram"].tolist() == ["A", "A", "B"]
    assert table["centroid-0"].tolist() == [1.5, 2.25, 0.125]  # not truncated


def test_fingerprint_changes_with_any_input_or_setting(tmp_path):
    x = tmp_path / "x_embeds.h5"
    x.write_bytes(b"1234")
    a = io.fingerprint([x], stems=["x"])
    assert a == io.fingerprint([x], stems=["x"])
    assert a != io.fingerprint([x], stems=["y"])
    assert a != io.fingerprint([x, None], stems=["x"])
    os.utime(x, ns=(1, x.stat().st_mtime_ns + 1))  # 1 ns later, same size
    b = io.fingerprint([x], stems=["x"])
    assert b != a
    x.write_bytes(b"12345")
    os.utime(x, ns=(1, x.stat().st_mtime_ns - 1))
    assert io.fingerprint([x], stems=["x"]) not in (a, b)


# --------------------------------------------------------------------------------------------
# files


def test_merge_writes_layout_and_table(tmp_path):
    truth = make_prediction_folder(tmp_path, counts=(5, 7, 3), dim=8)
    path = merge_embeddings(_cfg(), tmp_path, tmp_path)
    with h5py.File(path) as f:
        emb = f["embeddings"][()]
        assert emb.shape == (15, 8)
        assert f["number_of_samples"][()].tolist() == [5, 7, 3]
        assert [s.decode() for s in f["tomograms"][()]] == ["TS_00", "TS_01", "TS_02"]
        assert np.array_equal(f["labels"][()], truth["labels"])
        assert f.attrs[io.FINGERPRINT_ATTR]
    assert np.allclose(emb, truth["embeddings"])
    table = pd.read_csv(tmp_path / layout.MERGED_TABLE_NAME)
    assert list(table.columns) == [
        "tomogram",
        "label",
        "row",
        "area",
        *[f"bbox-{i}" for i in range(6)],
        "centroid-0",
        "centroid-1",
        "centroid-2",
        "hull_area",
    ]
    assert table["row"].tolist() == list(range(15))
    assert np.array_equal(table["label"], truth["labels"])
    regions = pd.read_csv(tmp_path / "TS_01_instance_regions.csv")
    assert np.allclose(table.loc[table.tomogram == "TS_01", "centroid-1"], regions["centroid-1"])


def test_merge_follows_instance_labels_order(tmp_path):
    make_prediction_folder(tmp_path, counts=(6,), dim=4)
    regions = pd.read_csv(tmp_path / "TS_00_instance_regions.csv")
    regions.iloc[::-1].to_csv(tmp_path / "TS_00_instance_regions.csv", index=False)  # rows in another order
    merge_embeddings(_cfg(), tmp_path, tmp_path)
    table = pd.read_csv(tmp_path / layout.MERGED_TABLE_NAME)
    assert table["label"].tolist() == regions["label"].tolist()  # embedding order, from the labels file


def test_clustering_files_select_tomograms(tmp_path):
    make_prediction_folder(tmp_path, counts=(5, 7, 3), dim=8)
    path = merge_embeddings(_cfg(clustering_files=["TS_02.mrc", "TS_00.mrc"]), tmp_path, tmp_path)
    with h5py.File(path) as f:
        assert [s.decode() for s in f["tomograms"][()]] == ["TS_00", "TS_02"]
        assert f["number_of_samples"][()].tolist() == [5, 3]


def test_up_to_date_merge_is_reused_and_stale_one_rebuilt(tmp_path):
    make_prediction_folder(tmp_path, counts=(5, 7), dim=8)
    path = merge_embeddings(_cfg(), tmp_path, tmp_path)
    first = os.stat(path).st_mtime_ns
    merge_embeddings(_cfg(), tmp_path, tmp_path)
    assert os.stat(path).st_mtime_ns == first  # reused

    # one tomogram re-embedded: new values, new file
    new = np.full((8, 5), 3.0, dtype=np.float32)
    time.sleep(0.01)
    write_h5(tmp_path / "TS_00_embeds.h5", {"embeddings": new})
    merge_embeddings(_cfg(), tmp_path, tmp_path)
    with h5py.File(path) as f:
        assert np.allclose(f["embeddings"][:5], 3.0)

    # a new tomogram appears
    make_prediction_folder(tmp_path / "more", counts=(4,), dim=8)
    for suffix in ("_embeds.h5", "_instance_labels.h5", "_instance_regions.csv"):
        os.replace(tmp_path / "more" / f"TS_00{suffix}", tmp_path / f"TS_09{suffix}")
    merge_embeddings(_cfg(), tmp_path, tmp_path)
    with h5py.File(path) as f:
        assert f["number_of_samples"][()].tolist() == [5, 7, 4]


def test_cryosiam_merge_without_fingerprint_is_rebuilt(tmp_path):
    make_prediction_folder(tmp_path, counts=(5, 7), dim=8)
    with h5py.File(tmp_path / "embeddings.h5", "w") as f:  # what CryoSiam leaves (maybe stale)
        f.create_dataset("embeddings", data=np.zeros((3, 8)))
        f.create_dataset("number_of_samples", data=[3])
    (tmp_path / layout.MERGED_TABLE_NAME).write_text("tomogram,label,row\n")
    merge_embeddings(_cfg(), tmp_path, tmp_path)
    with h5py.File(tmp_path / "embeddings.h5") as f:
        assert f["embeddings"].shape == (12, 8)


def test_load_merged_from_staged_files_only(tmp_path):
    """The pipeline stages only embeddings.h5 + regions CSVs: no per-tomogram embeddings."""
    src = tmp_path / "pred"
    truth = make_prediction_folder(src, counts=(5, 7), dim=8)
    merge_embeddings(_cfg(), src, src)
    staged = tmp_path / "staged"
    staged.mkdir()
    for name in ("embeddings.h5", "TS_00_instance_regions.csv", "TS_01_instance_regions.csv"):
        os.symlink(src / name, staged / name)
    merged = load_merged(_cfg(), Folders(staged, tmp_path / "out", tmp_path / "vis"))
    assert merged.stems == ["TS_00", "TS_01"] and merged.n == 12
    assert np.array_equal(merged.table["label"], truth["labels"])  # table rebuilt from the regions CSVs
    assert not (tmp_path / "out").exists()  # nothing merged again


@pytest.mark.parametrize(
    "damage, culprit, message",
    [
        ("dim", "TS_01_embeds.h5", "dimension"),
        ("nan", "TS_01_embeds.h5", "NaN"),
        ("rows", "TS_01_instance_regions.csv", "rows"),
        ("labels", "TS_01_instance_labels.h5", "entries but there are"),
    ],
)
def test_bad_input_names_the_file_and_writes_nothing(tmp_path, damage, culprit, message):
    make_prediction_folder(tmp_path, counts=(5, 7, 3), dim=8)
    if damage == "dim":
        write_h5(tmp_path / "TS_01_embeds.h5", {"embeddings": np.zeros((6, 7), np.float32)})
    elif damage == "nan":
        emb = np.ones((8, 7), np.float32)
        emb[2, 4] = np.nan
        write_h5(tmp_path / "TS_01_embeds.h5", {"embeddings": emb})
    elif damage == "rows":
        regions = pd.read_csv(tmp_path / "TS_01_instance_regions.csv")
        regions.iloc[:4].to_csv(tmp_path / "TS_01_instance_regions.csv", index=False)
        os.remove(tmp_path / "TS_01_instance_labels.h5")
    elif damage == "labels":
        write_h5(tmp_path / "TS_01_instance_labels.h5", {"labels": np.arange(3)})
    with pytest.raises(InputDataError, match=message) as err:
        merge_embeddings(_cfg(), tmp_path, tmp_path)
    assert culprit in str(err.value)
    assert "\n" not in str(err.value)
    assert _outputs(tmp_path) == []


def test_no_embeddings_found(tmp_path):
    with pytest.raises(InputDataError, match="no embeddings found"):
        merge_embeddings(_cfg(), tmp_path, tmp_path)
    with pytest.raises(InputDataError, match="no embeddings found"):
        load_merged(_cfg(), Folders(tmp_path, tmp_path, tmp_path / "vis"))
    assert list(tmp_path.iterdir()) == []


def test_missing_listed_file(tmp_path):
    make_prediction_folder(tmp_path, counts=(5,), dim=8)
    with pytest.raises(InputDataError, match="TS_07_embeds.h5"):
        merge_embeddings(_cfg(clustering_files=["TS_00.mrc", "TS_07.mrc"]), tmp_path, tmp_path)
