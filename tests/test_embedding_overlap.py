"""The next tomogram is read, grown and cut while the model embeds the current one
(stages.embedding.embed_tomograms with ``run.overlap``): same outputs, same order, same errors."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from inprocess import run_cli
from synthetic import make_checkpoint, make_dataset, write_config, write_h5_mask, write_mrc

from subtomo_embed.core.config import load_config
from subtomo_embed.core.embed import embed_patches
from subtomo_embed.core.errors import InputDataError
from subtomo_embed.core.model import load_model
from subtomo_embed.stages.embedding import Job, RunSummary, embed_tomograms, predict_job, start_run

STEMS = ["TS_01", "TS_02", "TS_03"]


@pytest.fixture
def dataset(tmp_path):
    """Three small tomograms (8 instances, patches of 12³, batches of 4: two batches each)."""
    data, masks = make_dataset(tmp_path, n_tomograms=3)
    ckpt = make_checkpoint(tmp_path / "model.ckpt")
    config = write_config(
        tmp_path / "config.yaml",
        data_folder=data,
        instances_mask_folder=masks,
        prediction_folder=tmp_path / "out",
        trained_model=ckpt,
    )
    return {"root": tmp_path, "data": data, "masks": masks, "config": config}


def start(dataset, out: Path, overlap: bool, keep_going: bool = False):
    out.mkdir(exist_ok=True)
    run = start_run("predict", load_config(dataset["config"]), out, None, "cpu", False, keep_going)
    run.overlap = overlap
    return run


def jobs_of(run, dataset, stems=STEMS):
    return [(stem, lambda stem=stem: predict_job(run, dataset["data"] / f"{stem}.mrc")) for stem in stems]


def outputs(out: Path) -> dict[str, bytes]:
    """Every output's content: the datasets of the HDF5 files (their bytes), the text files as they are."""
    found = {}
    for path in sorted(out.iterdir()):
        if path.suffix == ".h5":
            with h5py.File(path) as f:
                found[path.name] = b"".join(f[name][()].tobytes() for name in sorted(f))
        else:
            found[path.name] = path.read_bytes()
    return found


def test_overlap_gives_the_same_outputs_in_the_same_order(dataset):
    summaries = {}
    for overlap in (False, True):
        run = start(dataset, dataset["root"] / f"out-{overlap}", overlap)
        summaries[overlap] = embed_tomograms(run, jobs_of(run, dataset))
    assert summaries[True].done == summaries[False].done == STEMS
    without, with_overlap = outputs(dataset["root"] / "out-False"), outputs(dataset["root"] / "out-True")
    assert len(with_overlap) == 4 * len(STEMS)
    assert with_overlap == without  # byte-identical embeddings, labels and tables

    # a second run skips all three, in order, and prepares nothing further
    run = start(dataset, dataset["root"] / "out-True", True)
    again = embed_tomograms(run, jobs_of(run, dataset))
    assert again.skipped == STEMS and again.done == []


class WatchedModel:
    """The run's network, with a hook called before every batch (which may wait)."""

    def __init__(self, model, before_batch):
        self.model, self.before_batch = model, before_batch

    def to(self, device):
        self.model.to(device)
        return self

    def eval(self):
        self.model.eval()
        return self

    def embed(self, x, contrastive=True, rotations=1):
        self.before_batch()
        return self.model.embed(x, contrastive=contrastive, rotations=rotations)


def instrumented_run(dataset, out: Path, overlap: bool, wait_for_next: bool):
    """A run whose jobs and model record what happens, in order, in ``events``. With ``wait_for_next``
    the model's first batch (TS_01's) waits until TS_02 has been loaded: it can only be loaded meanwhile
    if it is prepared beside the model (the timeout only keeps a broken run from hanging)."""
    run = start(dataset, out, overlap)
    events: list[tuple] = []
    loaded = {stem: threading.Event() for stem in STEMS}
    first_batch = []

    def before_batch():
        if not first_batch:
            first_batch.append(loaded["TS_02"].wait(timeout=120) if wait_for_next else None)
        events.append(("batch", None))

    run.model = dataclasses.replace(run.model, model=WatchedModel(run.model.model, before_batch))

    def make_job(stem):
        events.append(("make", stem, threading.current_thread().name, sorted(p.name for p in out.iterdir())))
        job = predict_job(run, dataset["data"] / f"{stem}.mrc")

        def load():
            instances = job.load()
            loaded[stem].set()
            events.append(("loaded", stem))
            return instances

        return Job(job.stem, job.stamp, load)

    return run, [(stem, lambda stem=stem: make_job(stem)) for stem in STEMS], events, first_batch


def test_the_next_tomogram_is_prepared_while_the_model_runs(dataset):
    out = dataset["root"] / "out"
    run, jobs, events, first_batch = instrumented_run(dataset, out, overlap=True, wait_for_next=True)
    summary = embed_tomograms(run, jobs)
    assert summary.done == STEMS
    assert first_batch == [True]  # TS_01's first batch ran only once TS_02 was loaded, beside it
    makes = {e[1]: e for e in events if e[0] == "make"}
    assert {makes[s][2] for s in STEMS} == {"subtomo-prefetch"}  # prepared on the background thread
    # TS_02 was made and loaded before TS_01's first batch went through the model ...
    assert events.index(("loaded", "TS_02")) < events.index(("batch", None))
    # ... but one tomogram ahead at most: TS_03 is made once TS_01 is written, not before
    assert "TS_01_embeds.h5" in makes["TS_03"][3] and "TS_02_embeds.h5" not in makes["TS_03"][3]
    assert "TS_01_embeds.h5" not in makes["TS_02"][3]


def test_without_overlap_each_tomogram_waits_for_the_previous(dataset):
    out = dataset["root"] / "out"
    run, jobs, events, _ = instrumented_run(dataset, out, overlap=False, wait_for_next=False)
    assert embed_tomograms(run, jobs).done == STEMS
    makes = {e[1]: e for e in events if e[0] == "make"}
    assert {makes[s][2] for s in STEMS} == {threading.current_thread().name}
    assert events.index(("loaded", "TS_02")) > events.index(("batch", None))
    assert "TS_01_embeds.h5" in makes["TS_02"][3]


def break_ts02(dataset, how: str) -> str:
    """Make TS_02 fail where the prefetch prepares it: in its job, its reading, or its first patches."""
    if how == "no mask":  # make_job: the mask is not found
        (dataset["masks"] / "TS_02_instance_preds.h5").unlink()
        return "no instance mask for TS_02.mrc"
    if how == "mask shape":  # load: the mask does not fit the tomogram
        write_h5_mask(dataset["masks"] / "TS_02_instance_preds.h5", np.ones((8, 8, 8), np.int32))
        return "mask shape (8, 8, 8) differs"
    write_mrc(dataset["data"] / "TS_02.mrc", np.full((32, 48, 40), np.nan, np.float32))  # the patches
    return "NaN"


def written(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize("how", ["no mask", "mask shape", "nan patches"])
def test_a_failing_prefetched_tomogram_is_reported_in_its_turn(dataset, how):
    message = break_ts02(dataset, how)
    summaries: dict[bool, RunSummary] = {}
    for overlap in (False, True):
        run = start(dataset, dataset["root"] / f"out-{overlap}", overlap, keep_going=True)
        summaries[overlap] = embed_tomograms(run, jobs_of(run, dataset))
    assert summaries[True].done == ["TS_01", "TS_03"]
    assert [stem for stem, _ in summaries[True].failed] == ["TS_02"] and message in summaries[True].failed[0][1]
    assert summaries[True].failed == summaries[False].failed  # the same report as one after the other
    assert written(dataset["root"] / "out-True") == written(dataset["root"] / "out-False")
    assert [n for n in written(dataset["root"] / "out-True") if n.endswith("_embeds.h5")] == [
        "TS_01_embeds.h5",
        "TS_03_embeds.h5",
    ]

    # without --keep-going: TS_01 complete, then TS_02's error; nothing of TS_02 or TS_03, no temporaries
    errors = {}
    for overlap in (False, True):
        out = dataset["root"] / f"stop-{overlap}"
        run = start(dataset, out, overlap)
        with pytest.raises(InputDataError) as err:
            embed_tomograms(run, jobs_of(run, dataset))
        errors[overlap] = str(err.value)
        assert all(n.startswith("TS_01_") for n in written(out)) and len(written(out)) == 4
    assert errors[True] == errors[False] and message in errors[True]


def test_cli_exit_codes_and_one_line_errors_with_a_failing_second_tomogram(dataset):
    message = break_ts02(dataset, "mask shape")
    proc = run_cli(["predict", "-c", dataset["config"]])
    assert proc.returncode == 4 and message in proc.stderr and "Traceback" not in proc.stderr
    out = dataset["root"] / "out"
    assert [n for n in written(out) if not n.endswith(".log")] == [
        "TS_01_embeds.h5",
        "TS_01_instance_labels.h5",
        "TS_01_instance_regions.csv",
        "TS_01_instance_regions.star",
    ]
    proc = run_cli(["predict", "-c", dataset["config"], "--keep-going"])
    assert proc.returncode == 4 and "1 failed" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(n for n in written(out) if n.endswith("_embeds.h5")) == ["TS_01_embeds.h5", "TS_03_embeds.h5"]


def test_channels_last_3d_gives_the_same_embeddings(tmp_path):
    ckpt = make_checkpoint(tmp_path / "model.ckpt")
    patches = list(np.random.default_rng(0).normal(size=(10, 12, 12, 12)).astype(np.float32))
    results = []
    for channels_last in (False, True):
        model, network = load_model(ckpt, True)
        results.append(
            embed_patches(model, iter(patches), 10, network["dim"], torch.device("cpu"), 4, channels_last=channels_last)
        )
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-6)
    assert np.abs(results[0]).max() > 0.01  # real embeddings, not zeros
