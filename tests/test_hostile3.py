"""Issue 31: hostile files, round 3. Files travel between labs and results folders are shared, so
every file read (our own tables and caches included) is untrusted: each test crafts one such file
(real HDF5, MRC, CSV and STAR files), runs the CLI as users do, and checks that the command refuses
it with a one-line error naming it (nothing read or written outside the named folders, nothing
partial left), or does the right thing.
"""

from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import test_hostile
from test_hostile import invoke, last_line, snapshot

predicted, run = test_hostile.predicted, test_hostile.run  # the same fixtures: a predicted dataset, a copy per test

# --- class 3: HDF5 files that read other files ----------------------------------------------------------------


def _foreign(kind: str, target, elsewhere, name: str, data: np.ndarray) -> None:
    """Rewrite ``target`` so its dataset ``name`` gets ``data`` from a file outside every folder."""
    with h5py.File(elsewhere, "w") as f:
        f.create_dataset(name, data=data)
    raw = elsewhere.with_suffix(".raw")
    data.tofile(raw)
    with h5py.File(target, "r+") as f:
        del f[name]
        if kind == "external link":
            f[name] = h5py.ExternalLink(str(elsewhere), name)
        elif kind == "virtual dataset":
            layout = h5py.VirtualLayout(shape=data.shape, dtype=data.dtype)
            layout[...] = h5py.VirtualSource(str(elsewhere), name, shape=data.shape)
            f.create_virtual_dataset(name, layout)
        elif kind == "external storage":
            f.create_dataset(name, shape=data.shape, dtype=data.dtype, external=[(str(raw), 0, data.nbytes)])
        elif kind == "soft link to an external link":
            f["hidden"] = h5py.ExternalLink(str(elsewhere), name)
            f[name] = h5py.SoftLink("/hidden")


KINDS = ["external link", "virtual dataset", "external storage", "soft link to an external link"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_mask_that_reads_another_file_is_refused(run, tmp_path, kind):
    root, config, set_config = run
    mask = root / "masks" / "TS_01_instance_preds.h5"
    with h5py.File(mask) as f:
        labels = f["instances"][()]
    _foreign(kind, mask, tmp_path / "elsewhere.h5", "instances", labels)
    set_config(test_files=["TS_01.mrc"], prediction_folder=str(root / "o2"))
    code, stderr = invoke("predict", "-c", config)
    assert code == 4, stderr
    assert re.search(r"masks/TS_01_instance_preds\.h5: HDF5 .* would read another file", last_line(stderr)), stderr
    assert not (root / "o2").exists() or not any((root / "o2").glob("TS_01*"))


@pytest.mark.parametrize("kind", KINDS)
def test_merged_embeddings_that_read_another_file_are_refused(run, tmp_path, kind):
    root, config, _ = run
    shared = root / "shared"
    shared.mkdir()
    for name in ("embeddings.h5", "embeddings_table.csv"):
        shutil.copy(root / "out" / name, shared / name)
    with h5py.File(shared / "embeddings.h5") as f:
        rows = f["embeddings"][()]
    _foreign(kind, shared / "embeddings.h5", tmp_path / "elsewhere.h5", "embeddings", rows)
    code, stderr = invoke("kmeans", "-c", config, "--input-dir", shared, "--output-dir", root / "k")
    assert code == 4, stderr
    assert re.search(r"shared/embeddings\.h5: HDF5 .* would read another file", last_line(stderr)), stderr
    assert not (root / "k").exists() or not any((root / "k").iterdir())


def test_per_tomogram_embeddings_that_read_another_file_are_refused(run, tmp_path):
    root, config, _ = run
    embeds = root / "out" / "TS_02_embeds.h5"
    with h5py.File(embeds) as f:
        rows = f["embeddings"][()]
    _foreign("virtual dataset", embeds, tmp_path / "e.h5", "embeddings", rows)
    code, stderr = invoke("merge", "-c", config, "--output-dir", root / "m")
    assert code == 4 and re.search(r"TS_02_embeds\.h5: HDF5 .* would read another file", last_line(stderr)), stderr
    assert not (root / "m").exists() or not any((root / "m").iterdir())


def test_hdf5_policy_finds_nothing_in_our_own_files(run):
    from subtomo_embed.core import io

    root, _, _ = run
    for path in [*root.joinpath("out").glob("*.h5"), *root.joinpath("masks").glob("*.h5")]:
        with io.open_h5(path) as f:
            assert io.foreign_storage(f) is None, path


# --- class 4: a small mask that declares a huge shape -------------------------------------------------------


def test_a_small_mask_declaring_a_huge_volume_is_refused_before_reading(run, monkeypatch):
    root, config, set_config = run
    mask = root / "masks" / "TS_01_instance_preds.h5"
    with h5py.File(mask, "w") as f:  # 4 GiB declared, a few kB on disk (never written: the fill value)
        f.create_dataset("instances", shape=(1024, 1024, 1024), dtype=np.uint32, chunks=(64, 64, 64), compression=1)
    assert mask.stat().st_size < 100_000
    reads = []
    real = h5py.Dataset.__getitem__

    def spy(self, key):
        if self.size * self.dtype.itemsize > 2**28:
            reads.append(self.name)
            raise AssertionError(f"read {self.name} of {self.shape} whole")
        return real(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    set_config(test_files=["TS_01.mrc"], prediction_folder=str(root / "o2"))
    code, stderr = invoke("predict", "-c", config)
    assert reads == []
    assert code == 4 and re.search(
        r"TS_01_instance_preds\.h5: mask shape \(1024, 1024, 1024\) differs from its tomogram's \(32, 48, 40\)",
        last_line(stderr),
    ), stderr


def _huge(f, name: str) -> None:
    del f[name]
    f.create_dataset(name, shape=(2**30,), dtype=np.int64, chunks=(2**16,), compression=1)  # 8 GiB, a few kB


def _no_huge_reads(monkeypatch) -> list:
    reads: list = []
    real = h5py.Dataset.__getitem__

    def spy(self, key):
        if self.size * self.dtype.itemsize > 2**28:
            reads.append(self.name)
            raise AssertionError(f"read {self.name} of {self.shape} whole")
        return real(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    return reads


@pytest.mark.parametrize("target", ["labels", "merged labels", "merged tomograms", "patches regions"])
def test_small_files_declaring_huge_datasets_are_refused_before_reading(run, monkeypatch, target):
    root, config, _ = run
    if target == "labels":
        with h5py.File(root / "out" / "TS_01_instance_labels.h5", "r+") as f:
            _huge(f, "labels")
        args = ["merge", "-c", config, "--output-dir", root / "m"]
        message = r"TS_01_instance_labels\.h5: dataset 'labels' has 1073741824 entries but there are \d+ embeddings"
    elif target.startswith("merged"):
        shared = _shared_merge(root)
        name = target.split()[1]
        with h5py.File(shared / "embeddings.h5", "r+") as f:
            _huge(f, name)
        args = ["kmeans", "-c", config, "--input-dir", shared, "--output-dir", root / "k"]
        message = rf"embeddings\.h5: dataset '{name}' has 1073741824 entries but there are \d+ "
    else:
        assert invoke("extract", "-c", config, "--filename", "TS_01.mrc", "--output-dir", root / "p")[0] == 0
        with h5py.File(root / "p" / "TS_01_patches.h5", "r+") as f:
            _huge(f, "regions/label")
        args = ["embed", "-c", config, "--patches", root / "p" / "TS_01_patches.h5", "--output-dir", root / "e"]
        message = r"TS_01_patches\.h5: regions column 'label' does not have one value per patch"
    reads = _no_huge_reads(monkeypatch)
    code, stderr = invoke(*args)
    assert reads == [] and code == 4 and re.search(message, last_line(stderr)), stderr


# --- class 10: MRC files whose header disagrees with their bytes ---------------------------------------------


def _poke_header(path, offset: int, *values: int) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into(f"<{len(values)}i", data, offset, *values)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "offset,values,message",
    [
        (12, (1,), r"MRC file is \d+ bytes but its header \(mode 1, int16, 40x48x32 voxels\) describes \d+"),
        (12, (6,), r"MRC file is \d+ bytes but its header \(mode 6"),
        (64, (1, 1, 3), r"MRC axis map \(mapc, mapr, maps\) is 1, 1, 3, not a permutation of 1, 2, 3"),
        (64, (0, 0, 0), r"MRC axis map .* is 0, 0, 0"),
    ],
    ids=["mode-int16-for-float-data", "mode-uint16-for-float-data", "axis-map-repeated", "axis-map-zero"],
)
def test_an_mrc_whose_header_disagrees_with_its_bytes_is_refused(run, offset, values, message):
    root, config, set_config = run
    _poke_header(root / "data" / "TS_01.mrc", offset, *values)
    set_config(test_files=["TS_01.mrc"], prediction_folder=str(root / "o2"))
    code, stderr = invoke("predict", "-c", config)
    assert code == 4 and re.search(r"data/TS_01\.mrc: " + message, last_line(stderr)), stderr
    assert not (root / "o2").exists() or not any((root / "o2").glob("TS_01*"))


def test_an_mrc_with_another_valid_axis_order_and_an_extended_header_still_reads(tmp_path):
    import mrcfile

    from subtomo_embed.core import volumes

    path = tmp_path / "v.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.zeros((4, 5, 6), np.float32))
        m.set_extended_header(np.zeros(16, dtype="V8"))
        m.header.mapc, m.header.mapr, m.header.maps = 3, 2, 1
    data, _ = volumes.open_mrc_volume(path)
    assert data.shape == (4, 5, 6)


# --- class 5: tables trusted without checks ----------------------------------------------------------------------


def _shared_merge(root):
    shared = root / "shared"
    shared.mkdir()
    for name in ("embeddings.h5", "embeddings_table.csv"):
        shutil.copy(root / "out" / name, shared / name)
    return shared


@pytest.mark.parametrize(
    "change,message",
    [
        (
            lambda t: t.assign(tomogram=t["tomogram"].map({"TS_01": "TS_02", "TS_02": "TS_01"})),
            r"row 1 names tomogram 'TS_02' but embeddings\.h5 has 'TS_01' there",
        ),
        (
            lambda t: t.assign(label=t.groupby("tomogram")["label"].transform(lambda s: s[::-1].to_numpy())),
            r"row 1 has label '\d+' but embeddings\.h5 has 1 there",
        ),
    ],
    ids=["tomograms-swapped", "labels-reversed"],
)
def test_a_merged_table_that_disagrees_with_its_embeddings_is_refused(run, change, message):
    import pandas as pd

    root, config, _ = run
    shared = _shared_merge(root)
    table = pd.read_csv(shared / "embeddings_table.csv")
    change(table).to_csv(shared / "embeddings_table.csv", index=False)
    code, stderr = invoke("kmeans", "-c", config, "--input-dir", shared, "--output-dir", root / "k")
    assert code == 4 and re.search(r"shared/embeddings_table\.csv: " + message, last_line(stderr)), stderr
    assert not (root / "k").exists() or not any((root / "k").iterdir())


def _picks_csv(path, tomogram: str | None, rows: int = 3) -> None:
    lines = ["x,y,z" + (",rlnTomoName" if tomogram else "")]
    lines += [f"{20 + i},{24},{16}" + (f",{tomogram}" if tomogram else "") for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")


def _picks_config(root, set_config, centers_file, **more):
    set_config(centers_file=str(centers_file), centers_patch_size=8, prediction_folder=str(root / "pc"), **more)


def test_a_picks_folder_never_gives_a_tomogram_another_tomograms_file(run):
    root, config, set_config = run
    folder = root / "picks"
    folder.mkdir()
    _picks_csv(folder / "TS_01_b.csv", "TS_01_b")  # TS_01_* by name, but its own column says TS_01_b
    _picks_csv(folder / "TS_02_particles.csv", "TS_02")
    _picks_config(root, set_config, folder)
    code, stderr = invoke("predict-centers", "-c", config)
    assert code == 0, stderr
    assert "TS_01_b.csv: its column 'rlnTomoName' names 'TS_01_b', not TS_01: not used for TS_01" in stderr
    assert sorted(p.name for p in (root / "pc").glob("*_embeds.h5")) == ["TS_02_embeds.h5"]


def test_a_picks_folder_rows_of_other_tomograms_are_not_embedded(run):
    import pandas as pd

    root, config, set_config = run
    folder = root / "picks"
    folder.mkdir()
    _picks_csv(folder / "TS_01.csv", "TS_01", rows=2)
    with (folder / "TS_01.csv").open("a") as fh:
        fh.write("30,30,30,TS_02\n")
    _picks_config(root, set_config, folder, test_files=["TS_01.mrc"])
    code, stderr = invoke("predict-centers", "-c", config)
    assert code == 0, stderr
    table = pd.read_csv(root / "pc" / "TS_01_instance_regions.csv")
    assert len(table) == 2 and set(table["pick:rlnTomoName"]) == {"TS_01"}


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda f: f.write_text("x,y,z,rlnTomoName\n"), r"picks\.csv: picks file holds no picks \(a header only\)"),
        (
            lambda f: _picks_csv(f, "TS_9"),
            r"picks\.csv: picks name none of the 2 selected tomogram\(s\) \('TS_01', 'TS_02'\) in column "
            r"'rlnTomoName': they name 'TS_9'",
        ),
    ],
    ids=["header-only", "unknown-tomogram"],
)
def test_picks_that_give_nothing_to_embed_are_an_error(run, make, message):
    root, config, set_config = run
    make(root / "picks.csv")
    _picks_config(root, set_config, root / "picks.csv")
    code, stderr = invoke("predict-centers", "-c", config)
    assert code == 4 and re.search(message, last_line(stderr)), stderr
    assert not (root / "pc").exists()


def test_a_picks_folder_with_nothing_for_any_tomogram_is_an_error(run):
    root, config, set_config = run
    folder = root / "picks"
    folder.mkdir()
    for stem in ("TS_01", "TS_02"):
        (folder / f"{stem}.csv").write_text("x,y,z\n")
    _picks_config(root, set_config, folder)
    code, stderr = invoke("predict-centers", "-c", config)
    assert code == 4 and re.search(
        r"picks: no picks for any of the 2 selected tomogram\(s\): nothing embedded", last_line(stderr)
    ), stderr
    _picks_csv(folder / "TS_02.csv", None)  # one tomogram with picks: the other is skipped, said so
    code, stderr = invoke("predict-centers", "-c", config)
    assert code == 0 and "TS_01: no picks, skipped" in stderr


# --- class 6: one rule for names, one STAR writer ---------------------------------------------------------------

ACCEPTED = ["TS #1", "TS $x$ 2", "data_x", "_rlnLabel", "loop_", "a b c", "007", "TS ü 01", "x" * 100, "nan-ish"]
REFUSED = {
    "all_tomograms": r"is the name of one of our own outputs",
    "kmeans_clusters": r"is the name of one of our own outputs",
    "NA": r"reads as a missing value",
    "None": r"reads as a missing value",
    "null": r"reads as a missing value",
    "=HYPERLINK(1)": r"starts with '=', which a spreadsheet runs as a formula",
    "+1": r"starts with '\+'",
    "@x": r"starts with '@'",
    "-x": r"starts with '-'",
    "TS\tA": r"holds the control character U\+0009",
    "TS\nA": r"holds the control character U\+000A",
    "TS_'q": r"""holds "'", which STAR readers""",
    'TS_"q': r"""holds '"', which STAR readers""",
    "<b>x": r"holds '<'",
    "x" * 201: r"is 201 bytes long; at most 120",
    ".subtomo-tmp-x": r"starts with '\.'",
}


@pytest.mark.parametrize("name", list(REFUSED), ids=[repr(n)[:20] for n in REFUSED])
def test_a_tomogram_name_that_breaks_a_format_is_refused_before_any_work(run, name):
    root, config, set_config = run
    (root / "data" / "TS_01.mrc").rename(root / "data" / f"{name}.mrc")
    (root / "masks" / "TS_01_instance_preds.h5").rename(root / "masks" / f"{name}_instance_preds.h5")
    set_config(prediction_folder=str(root / "o2"), test_files=[f"{name}.mrc", "TS_02.mrc"])
    code, stderr = invoke("predict", "-c", config)
    assert code == 4, stderr
    line = last_line(stderr)
    assert re.search(r"data/.*\.mrc: tomogram name .* " + REFUSED[name], line), stderr
    assert not (root / "o2").exists() or not any((root / "o2").iterdir())


def test_names_that_are_hostile_to_formats_round_trip_through_every_writer(run):
    import pandas as pd
    import starfile

    root, config, set_config = run
    names = {"TS_01": "TS #1 $a^b^c$", "TS_02": "data_x"}  # '#', bad mathtext, spaces; a STAR word
    for old, new in names.items():
        (root / "data" / f"{old}.mrc").rename(root / "data" / f"{new}.mrc")
        (root / "masks" / f"{old}_instance_preds.h5").rename(root / "masks" / f"{new}_instance_preds.h5")
    set_config(prediction_folder=str(root / "o2"), clustering_kmeans__visualization=True)
    for command in ("predict", "kmeans", "visualize"):
        code, stderr = invoke(command, "-c", config)
        assert code == 0, (command, stderr)
    out = root / "o2"
    for new in names.values():
        star = starfile.read(out / f"{new}_instance_regions.star")["particles"]
        assert set(star["rlnTomoName"]) == {new}
        clustered = starfile.read(out / f"{new}_instance_regions_kmeans_clustered.star")["particles"]
        assert set(clustered["rlnTomoName"]) == {new}
    particles = starfile.read(out / "kmeans_particles.star")["particles"]
    assert set(particles["rlnTomoName"]) == set(names.values())
    table = pd.read_csv(out / "embeddings_table.csv", keep_default_na=False)
    assert set(table["tomogram"]) == set(names.values())
    with h5py.File(out / "embeddings.h5") as f:
        assert {t.decode() for t in f["tomograms"][()]} == set(names.values())


def test_the_star_writer_round_trips_every_accepted_name_and_numbers_exactly(tmp_path):
    import pandas as pd
    import starfile

    from subtomo_embed.core import names, star

    assert all(names.why_refused(n) is None for n in ACCEPTED)
    particles = pd.DataFrame(
        {
            "rlnTomoName": ACCEPTED,
            "rlnCenteredCoordinateXAngst": np.linspace(-33.123456789, 1e-7, len(ACCEPTED)),
            "rlnLabel": np.arange(len(ACCEPTED), dtype=np.int64) + 2**60,
        }
    )
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"]})
    star.write_star(tmp_path / "p.star", particles, optics=optics, exact=True)
    back = starfile.read(tmp_path / "p.star", parse_as_string=["rlnTomoName"])
    assert list(back) == ["optics", "particles"]
    assert back["particles"]["rlnTomoName"].tolist() == ACCEPTED
    assert (
        back["particles"]["rlnCenteredCoordinateXAngst"].tolist() == particles["rlnCenteredCoordinateXAngst"].tolist()
    )
    assert back["particles"]["rlnLabel"].tolist() == particles["rlnLabel"].tolist()
    assert star.read_star(tmp_path / "p.star")["particles"]["rlnTomoName"].tolist() == ACCEPTED  # '007' stays text
    star.write_star(tmp_path / "one.star", particles)  # no optics given: one optics group (RELION 5), 6 decimals
    text = (tmp_path / "one.star").read_text()
    assert "data_optics" in text and "data_particles" in text and "-33.123457" in text
    assert list(starfile.read(tmp_path / "one.star")) == ["optics", "particles"]
    assert star.star_text(particles) == text  # the text the explorer and napari exports can offer
    with pytest.raises(ValueError, match="cannot hold a TAB"):
        star.star_text(pd.DataFrame({"rlnTomoName": ["a\tb"]}))


# --- class 2: outputs never follow a planted link -------------------------------------------------------------


def test_outputs_replace_planted_links_and_never_write_through_them(run, tmp_path):
    root, config, set_config = run
    set_config(clustering_kmeans__visualization=True)
    assert invoke("kmeans", "-c", config)[0] == 0
    out = root / "out"
    outputs = sorted(p for p in [*out.glob("*kmeans*"), *(out / "vis").glob("*kmeans*")] if p.is_file())
    assert len(outputs) > 8
    victims = []
    for i, path in enumerate(outputs):
        victim = tmp_path / f"victim_{i}"
        victim.write_text("keep me")
        path.unlink()
        path.symlink_to(victim)
        victims.append(victim)
    code, stderr = invoke("kmeans", "-c", config)
    assert code == 0, stderr
    assert all(v.read_text() == "keep me" for v in victims)
    assert all(p.is_file() and not p.is_symlink() for p in outputs)


@pytest.mark.parametrize("writer", ["h5", "star", "mrc", "csv"])
def test_a_link_planted_at_the_temporary_name_is_never_written_through(tmp_path, monkeypatch, writer):
    import uuid

    import pandas as pd

    from subtomo_embed.core import errors, io, star, tables, volumes

    class Fixed:
        hex = "0123456789abcdef"

    monkeypatch.setattr(uuid, "uuid4", lambda: Fixed())
    path = tmp_path / "out" / f"result.{writer}"
    path.parent.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    planted = path.with_name(f"{io.TMP_MARK}{io._WRITER}~01234567-{path.name}")
    planted.symlink_to(victim)
    table = pd.DataFrame({"rlnTomoName": ["TS_01"], "label": [1]})
    write = {
        "h5": lambda: io.write_h5(path, {"x": np.arange(3)}),
        "star": lambda: star.write_star(path, table),
        "mrc": lambda: volumes.write_mrc(path, np.zeros((2, 2, 2), np.float32)),
        "csv": lambda: tables.write_regions_csv(path, table),
    }[writer]
    with pytest.raises(errors.ResourceError, match="the temporary name is taken"):
        write()
    assert victim.read_text() == "keep me" and not path.exists()


def test_a_folder_where_an_output_goes_is_a_one_line_error(run):
    root, config, _ = run
    (root / "out" / "kmeans_particles.star").mkdir()
    (root / "out" / "kmeans_particles.star" / "x").write_text("mine")
    code, stderr = invoke("kmeans", "-c", config)
    assert code == 6 and re.search(
        r"out/kmeans_particles\.star: cannot replace what is there with the output \(Is a directory\)",
        last_line(stderr),
    ), stderr
    assert (root / "out" / "kmeans_particles.star" / "x").read_text() == "mine"


# --- class 7: a re-run's outputs are all new or all old -----------------------------------------------------------


@pytest.mark.parametrize("method", ["kmeans", "spectral"])
def test_a_clustering_rerun_that_fails_midway_leaves_all_the_old_outputs(run, monkeypatch, method):
    import errno

    import mrcfile

    root, config, set_config = run
    section = f"clustering_{method}"
    set_config(**{f"{section}__num_clusters": 2, f"{section}__visualization": True})
    assert invoke(method, "-c", config)[0] == 0
    out = root / "out"
    before = snapshot(out)
    assert any(name.endswith(f"_clusters_{method}.mrc") for name in before)
    real_new = mrcfile.new

    def full_disk(*args, **kwargs):  # the disk fills when the label volumes are written (after the tables)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mrcfile, "new", full_disk)
    set_config(**{f"{section}__num_clusters": 3})
    code, stderr = invoke(method, "-c", config)
    assert code == 6 and "no space left on the device while writing" in last_line(stderr), stderr
    assert snapshot(out) == before  # all old: not one new cluster file beside the old volumes and record
    monkeypatch.setattr(mrcfile, "new", real_new)
    code, stderr = invoke(method, "-c", config)
    assert code == 0, stderr
    first = 1 if method == "spectral" else 0
    assert sorted(p.name for p in out.glob(f"{method}_cluster_*_particles.star")) == [
        f"{method}_cluster_{c}_particles.star" for c in range(first, first + 3)
    ]
    assert not (out / f".{method}_replacing.json").exists()
    assert not list(out.rglob(".subtomo-tmp-*"))


def test_a_run_stopped_while_putting_outputs_in_place_is_said_so(run):
    root, config, _ = run
    (root / "out" / ".kmeans_replacing.json").write_text('["x"]')
    code, stderr = invoke("kmeans", "-c", config)
    assert code == 0 and "the previous kmeans run was stopped while putting its outputs in place" in stderr
    assert not (root / "out" / ".kmeans_replacing.json").exists()


# --- class 8: training that diverges; SIGTERM saves like Ctrl-C ---------------------------------------------------


def test_training_that_diverges_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    import torch
    from synthetic import TINY_POOLED_NETWORK

    from subtomo_embed.core.config import load_config
    from subtomo_embed.core.errors import ConfigError
    from subtomo_embed.core.model import read_checkpoint
    from subtomo_embed.core.patch_contract import Normalization, PatchContract
    from subtomo_embed.core.simulated_views import ViewSettings
    from subtomo_embed.core.train import Sitting, TrainingSettings, train

    views = ViewSettings(PatchContract((16, 16, 16), 1, 1, Normalization(-2, 3, 0.4, 0.2)), size_range=(3.0, 4.0))
    cfg = load_config(None, ["parameters.data.patch_size=[16,16,16]"]).model_dump(by_alias=True)
    ckpt = tmp_path / "run.ckpt"
    settings = TrainingSettings(views, 30, batch_size=4, seed=7, learning_rate=1e10, warmup_steps=0)
    with pytest.raises(ConfigError, match=r"training diverged at step (\d+) .*run\.ckpt keeps step (\d+)") as err:
        train(cfg, TINY_POOLED_NETWORK, settings, ckpt, sitting=Sitting(progress=False, save_every=1))
    kept = read_checkpoint(ckpt)
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())
    assert f"keeps step {kept['global_step']}," in str(err.value) and kept["global_step"] < 30
    assert "lower hyper_parameters.learning_rate (now 1e+10" in str(err.value)


def test_train_cli_on_a_diverging_run_is_a_one_line_error(run):
    root, config, set_config = run
    set_config(hyper_parameters__learning_rate=1e10, hyper_parameters__max_steps=40)
    ckpt = root / "tuned.ckpt"
    code, stderr = invoke(
        "train", "-c", config, "--from-data", "-o", ckpt, "--device", "cpu", "--save-every", "1", "-q"
    )
    assert code == 3, stderr
    assert re.search(
        r"^config error: .*tuned\.ckpt: training diverged at step \d+ \(the loss is (nan|inf|finite, but the weights "
        r"are not)\): tuned\.ckpt keeps step \d+, the last good one .* lower hyper_parameters\.learning_rate",
        last_line(stderr),
    ), stderr


def test_sigterm_during_training_saves_like_ctrl_c(run, cli_env):
    import signal
    import subprocess
    import time

    from subtomo_embed.core.model import read_checkpoint

    root, config, set_config = run
    set_config(hyper_parameters__max_steps=100000, hyper_parameters__learning_rate=0.0001)
    ckpt = root / "long.ckpt"
    proc = subprocess.Popen(
        ["subtomo-embed", "train", "-c", str(config), "--from-data", "-o", str(ckpt), "--device", "cpu"]
        + ["--save-every", "1000", "--workers", "0"],
        env=cli_env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        seen = ""
        deadline = time.monotonic() + 240
        while "step 10:" not in seen and time.monotonic() < deadline:  # training is under way
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
        assert "step 10:" in seen, seen
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, seen + rest
    saved = re.search(r"interrupted: saved step (\d+) to", rest)
    assert saved and rest.strip().splitlines()[-1] == "terminated (SIGTERM)", rest
    assert read_checkpoint(ckpt)["global_step"] == int(saved.group(1)) >= 10


# --- class 9: no unbounded work -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_groups", [10_000, 1_500])
def test_a_distance_map_of_many_tomograms_stays_within_its_bound(n_groups):
    from subtomo_embed.core import visualize as V

    rng = np.random.default_rng(0)
    groups = np.repeat(np.array([f"TS_{i:05d}" for i in range(n_groups)], dtype=object), 2)
    rows = rng.normal(size=(groups.size, 4)).astype(np.float32)
    dist, picked, ordered = V.distance_map(rows, groups, max_points=V.MAX_DISTANCE_MAP_POINTS)
    assert dist.shape == (picked.size, picked.size) and picked.size <= V.MAX_DISTANCE_MAP_POINTS  # not 10k × 10k
    assert len(set(picked.tolist())) == picked.size
    if n_groups < V.MAX_DISTANCE_MAP_POINTS:
        assert len(set(ordered.tolist())) == n_groups  # every tomogram keeps a row while they fit


# --- class 11: raw exceptions -----------------------------------------------------------------------------------------


def _copick(path, points, run_name="TS_01"):
    import json

    path.write_text(json.dumps({"pickable_object_name": "ribo", "run_name": run_name, "points": points}))


@pytest.mark.parametrize(
    "points,run_name,message",
    [
        (
            [{"location": {"x": 200, "y": 240, "z": 160}, "score": [1, 2]}],
            "TS_01",
            r"copick point 0: 'score' is a list, not a number or a name",
        ),
        (
            [{"location": {"x": 200, "y": 240, "z": 160}, "instance_id": {"a": 1}}],
            "TS_01",
            r"copick point 0: 'instance_id' is a dict, not a number or a name",
        ),
        ([{"location": {"x": [1], "y": 240, "z": 160}}], "TS_01", r"copick point 0 has no numeric location x, y, z"),
        ([{"location": {"x": 200, "y": 240, "z": 160}}], ["TS_01"], r"copick 'run_name' is a list, not a name"),
    ],
    ids=["score-list", "instance-id-dict", "location-list", "run-name-list"],
)
def test_copick_picks_with_list_or_dict_values_are_a_one_line_error(run, points, run_name, message):
    root, config, set_config = run
    _copick(root / "picks.json", points, run_name)
    set_config(
        centers_file=str(root / "picks.json"),
        centers_patch_size=8,
        test_files=["TS_01.mrc"],
        prediction_folder=str(root / "pc"),
    )
    code, stderr = invoke("predict-centers", "-c", config)
    assert code == 4 and re.search(r"picks\.json: " + message, last_line(stderr)), stderr
    assert not (root / "pc").exists() or not any((root / "pc").glob("TS_01*"))


def _simulated_truth(root):
    """``root`` as a folder `simulate` made: data/, masks/ and a truth.csv of its instances."""
    import pandas as pd

    rows = []
    for mask in sorted((root / "masks").glob("*_instance_preds.h5")):
        with h5py.File(mask) as f:
            labels = np.unique(f["instances"][()])
        stem = mask.name[: -len("_instance_preds.h5")]
        rows += [{"tomogram": stem, "label": int(v), "class": int(v) % 2} for v in labels if v]
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "change,message",
    [
        (
            lambda t: t.astype({"class": object}).assign(**{"class": ["a"] + list(t["class"][1:])}),
            r"column 'class' row 1 is not an integer \('a'\)",
        ),
        (
            lambda t: t.astype({"label": object}).assign(label=[None] + list(t["label"][1:])),
            r"column 'label' row 1 is not an integer",
        ),
        (
            lambda t: pd_concat(t, t.iloc[:1].assign(**{"class": 1 - t["class"].iloc[0]})),
            r"tomogram 'TS_01' label \d+ appears twice \(rows 1 and \d+\)",
        ),
        (
            lambda t: t.assign(tomogram=t["tomogram"].str.replace("TS_01", "TS_99")),
            r"truth table names none of the instances of tomogram 'TS_01'",
        ),
        (lambda t: t.assign(**{"class": 0}), r"truth table holds 1 class: at least 2 are needed to score clusters"),
        (lambda t: t.iloc[:0], r"truth table has no rows"),
        (lambda t: t.drop(columns=["class"]), r"truth table lacks columns \['class'\]"),
    ],
    ids=["class-text", "label-empty", "duplicate", "other-tomograms", "one-class", "empty", "no-class"],
)
def test_evaluate_checks_a_hostile_truth_table_before_embedding(run, monkeypatch, change, message):
    root, config, _ = run
    change(_simulated_truth(root)).to_csv(root / "truth.csv", index=False)
    from subtomo_embed.stages import embedding

    def no_predict(*args, **kwargs):
        raise AssertionError("predict ran before truth.csv was checked")

    monkeypatch.setattr(embedding, "run_predict", no_predict)
    code, stderr = invoke("evaluate", "--data", root, "--model", root / "model.ckpt", "--device", "cpu")
    assert code == 4 and re.search(r"truth\.csv: " + message, last_line(stderr)), stderr


def test_evaluate_reads_a_truth_table_that_is_not_csv_as_an_input_error(run):
    root, _, _ = run
    (root / "truth.csv").write_bytes(b'tomogram,label,class\n"TS_01,1,0\n\x00\xff')
    code, stderr = invoke("evaluate", "--data", root, "--model", root / "model.ckpt", "--device", "cpu")
    assert code == 4 and re.search(r"truth\.csv: not a readable table", last_line(stderr)), stderr


def pd_concat(*tables):
    import pandas as pd

    return pd.concat(tables, ignore_index=True)


def test_picks_name_numeric_tomograms_as_text(run):
    root, config, set_config = run
    (root / "data" / "TS_01.mrc").rename(root / "data" / "007.mrc")
    (root / "masks" / "TS_01_instance_preds.h5").rename(root / "masks" / "007_instance_preds.h5")
    _picks_csv(root / "picks.csv", "007")
    _picks_config(root, set_config, root / "picks.csv", test_files=["007.mrc"])
    code, stderr = invoke("predict-centers", "-c", config)
    assert code == 0, stderr
    assert (root / "pc" / "007_embeds.h5").is_file()


def test_files_staged_by_a_killed_clustering_run_are_removed_by_the_next(run):
    import socket

    root, config, _ = run
    left = root / "out" / f".subtomo-tmp-4194303@{socket.gethostname()}~0badf00d-kmeans_clusters.h5"
    left.write_bytes(b"half")  # pid 4194303 is above Linux's pid_max: that run has ended
    code, stderr = invoke("kmeans", "-c", config)
    assert code == 0, stderr
    assert not left.exists()


def test_a_run_pinned_to_one_tomogram_skips_it_when_the_picks_name_others(run):
    """``--filename``: a task of a larger run (the pipeline's), given the picks of all tomograms."""
    root, config, set_config = run
    _picks_csv(root / "picks.csv", "TS_01")
    _picks_config(root, set_config, root / "picks.csv")
    code, stderr = invoke("predict-centers", "-c", config, "--filename", "TS_02.mrc")
    assert code == 0 and "TS_02: no picks, skipped" in stderr, stderr
    assert not (root / "pc").exists() or not any((root / "pc").glob("TS_02*"))
    (root / "picks.csv").write_text("x,y,z,rlnTomoName\n")
    code, stderr = invoke("predict-centers", "-c", config, "--filename", "TS_02.mrc")
    assert code == 0 and "picks.csv: picks file holds no picks (a header only)" in stderr, stderr
    code, stderr = invoke("predict-centers", "-c", config)  # the whole run: an error
    assert code == 4 and "picks file holds no picks (a header only): nothing to embed" in last_line(stderr)


def test_the_reserved_names_are_the_global_outputs_prefixes():
    """core/names.py keeps its own copy of the global outputs' prefixes (it cannot import core/layout.py,
    which imports it): the copy equals what layout names."""
    from subtomo_embed.core import layout, names

    prefixes = {layout.ALL_TOMOGRAMS} | {layout.clusters(Path("."), m).stem for m in layout.CLUSTER_METHODS}
    assert names.RESERVED == prefixes
    assert all(names.why_refused(p) is not None for p in prefixes)
