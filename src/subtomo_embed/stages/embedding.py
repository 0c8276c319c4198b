"""Embedding tomograms: one loop, fed by jobs, for every command that writes per-tomogram embeddings.

* :func:`run_predict` — CryoSiam's ``simsiam_embeddings_predict``: for each tomogram, cut the
  patches in a background thread while the model embeds the previous batch; no intermediate file.
* :func:`run_embed` — the pipeline's GPU step: ``<stem>_patches.h5`` (from ``extract``) → outputs.
* ``predict-centers`` (:func:`run_predict` with ``centers``, :mod:`.centers`): boxes around particle picks.

Each builds one :class:`Job` per tomogram (what it reads, the fingerprint of that, its table rows
and patches); :func:`embed_tomograms` skips the complete ones, embeds the rest, writes the outputs
and keeps the run summary (``--keep-going``: a failing tomogram is reported, the others go on).

Outputs (CryoSiam's names): ``<stem>_embeds.h5`` (``embeddings`` [dim, N]),
``<stem>_instance_labels.h5`` (``labels`` int64 [N]), ``<stem>_instance_regions.csv`` and
``<stem>_instance_regions.star``; each written atomically, ``_embeds.h5`` last. A tomogram whose
outputs all exist and were made with the same inputs and settings is skipped.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core import h5files, io, layout, tables
from ..core.config import Config
from ..core.errors import ConfigError, InputDataError, SubtomoError
from ..core.extract import iter_patches
from ..core.patch_contract import patch_contract
from .provenance import keep_config
from .tomograms import (
    TomogramGeometry,
    extraction_settings,
    list_tomograms,
    load_tomogram_and_mask,
    locate_inputs,
    plan_tomogram,
    prepare_output_folder,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# the model


@dataclass
class LoadedModel:
    model: Any  # the SimSiam network (core.model), loaded with torch
    network: dict
    digest: str
    path: Path

    @property
    def dim(self) -> int:
        return int(self.network["dim"])


def load_checkpoint_for(cfg: Config, checkpoint: Path | None = None, what: str = "predict") -> LoadedModel:
    """The run's model; its stored input contract is compared with the run's (patches of picks
    are not masked by label; ``embed``'s patches were cut before, so only keys its config sets)."""
    from ..core.model import load_model

    if checkpoint is None:
        checkpoint = cfg.optional_path("trained_model")
        if checkpoint is None:
            log_dir = cfg.optional_path("log_dir")
            if log_dir is None:
                raise ConfigError("key 'trained_model' must be set (or log_dir with model/last.ckpt)", cfg.source)
            checkpoint = log_dir / "model" / "last.ckpt"
    model, network = load_model(
        checkpoint, cfg.contrastive, run_config=cfg, masking=what != "predict-centers", given_only=what == "embed"
    )
    return LoadedModel(model, network, io.file_digest(checkpoint), checkpoint)


def embed_with_config(
    loaded: LoadedModel, patches: Iterable[np.ndarray], count: int, device, cfg: Config, progress
) -> np.ndarray:
    """Embeddings [count, dim] of ``patches`` with the config's batch size, head and precision."""
    from ..core.embed import embed_patches

    return embed_patches(
        loaded.model,
        patches,
        count,
        loaded.dim,
        device,
        cfg.hyper_parameters.batch_size,
        cfg.contrastive,
        cfg.mixed_precision,
        progress,
        rotations=patch_contract(cfg).embedding_rotations,
    )


def embedding_settings(cfg: Config) -> dict:
    """What, besides the checkpoint and the patches, decides the embedding of a patch (for fingerprints):
    ``contrastive``, and the patch contract's ``embedding_rotations`` where it is set (so earlier
    outputs stay valid)."""
    settings: dict = {"contrastive": cfg.contrastive}
    rotations = patch_contract(cfg).embedding_rotations
    if rotations > 1:
        settings["rotations"] = rotations
    return settings


# --------------------------------------------------------------------------------------------
# outputs


def regions_star(stem: str, table: pd.DataFrame, geometry: TomogramGeometry | None) -> pd.DataFrame:
    """The ``<stem>_instance_regions.star`` table: CryoSiam's columns + rlnTomoName + Å coordinates."""
    if geometry is None:
        return tables.regions_to_star_table(table, stem)
    return tables.regions_to_star_table(table, stem, geometry.shape, geometry.voxel_size)


def is_done(folder: Path, stem: str, expected: str) -> bool:
    """True when every output exists and ``_embeds.h5`` records the same fingerprint."""
    outputs = layout.TomogramOutputs(folder, stem)
    if not all(p.is_file() for p in outputs.in_write_order()):
        return False
    attrs = io.read_h5_attrs(outputs.embeds)
    if attrs is None:
        return False
    found = attrs.get(io.FINGERPRINT_ATTR)
    if found is None:
        log.info("%s: outputs made by another tool; keeping them (use --overwrite to redo)", stem)
        return True
    if found != expected:
        log.info("%s: inputs or settings changed since the last run; redoing it", stem)
        return False
    return True


def write_outputs(
    folder: Path,
    stem: str,
    table: pd.DataFrame,
    embeddings: np.ndarray,
    stamp: str,
    star: pd.DataFrame | None = None,
    exact_floats: bool = False,
) -> list[Path]:
    """Write the four per-tomogram outputs (``_embeds.h5`` last, so it marks completion)."""
    outputs = layout.TomogramOutputs(folder, stem)
    labels = table["label"].to_numpy(dtype=np.int64)
    star = tables.regions_to_star_table(table, stem) if star is None else star
    writes = [
        (outputs.labels, lambda: io.write_h5(outputs.labels, {"labels": labels})),
        (outputs.regions_csv, lambda: tables.write_regions_csv(outputs.regions_csv, table)),
        (outputs.regions_star, lambda: tables.write_star(outputs.regions_star, star, exact_floats)),
        (
            outputs.embeds,
            lambda: io.write_h5(
                outputs.embeds,
                {"embeddings": np.ascontiguousarray(embeddings.T)},
                {io.FINGERPRINT_ATTR: stamp, "tomogram": stem},
            ),
        ),
    ]
    done: list[Path] = []
    try:
        for path, write in writes:
            write()
            done.append(path)
    except BaseException:
        for path in done:  # all four or none: never a half-written tomogram
            path.unlink(missing_ok=True)
        raise
    return done


# --------------------------------------------------------------------------------------------
# the loop


@dataclass
class Instances:
    """A tomogram's instances, ready to embed: one patch and one table row each."""

    count: int
    patches: Iterable[np.ndarray]
    table: Callable[[], pd.DataFrame]  # complete once every patch is cut (predict measures hull areas then)
    star: Callable[[pd.DataFrame], pd.DataFrame]  # the table's <stem>_instance_regions.star rows
    exact_floats: bool = False  # STAR floats as the shortest exact text (rows read from another file)


@dataclass
class Job:
    """One tomogram to embed: the fingerprint of its inputs and settings, and how to read them."""

    stem: str
    stamp: str
    load: Callable[[], Instances]


@dataclass
class RunSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already complete
    nothing: list[str] = field(default_factory=list)  # nothing to embed (no mask with the skip option, no picks)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def report(self, what: str, folder: Path) -> None:
        without = f", {len(self.nothing)} with nothing to embed (skipped)" if self.nothing else ""
        log.info(
            "%s: %d tomogram(s) done, %d already complete%s, %d failed; outputs in %s",
            what,
            len(self.done),
            len(self.skipped),
            without,
            len(self.failed),
            folder,
        )
        for stem, reason in self.failed:
            log.error("  failed: %s: %s", stem, reason)

    @contextmanager
    def attempt(self, stem: str, keep_going: bool) -> Iterator[None]:
        """One tomogram's work: with ``keep_going`` its error is recorded and logged, not raised."""
        try:
            yield
        except SubtomoError as err:
            if not keep_going:
                raise
            self.failed.append((stem, str(err)))
            log.error("%s", err)


@dataclass
class Run:
    """What every tomogram of a run shares: the command, the output folder, the model and the flags."""

    what: str
    cfg: Config
    out: Path
    model: LoadedModel
    device: object
    overwrite: bool = False
    keep_going: bool = False
    overlap: bool = True  # prepare the next tomogram while the model embeds this one (False: one after the other)


@dataclass
class Prepared:
    """A tomogram made ready for the model: its job and instances (the first batch of patches cut),
    or why there is nothing to embed, or the error to report for it when its turn comes."""

    stem: str
    job: Job | None = None  # None: nothing to embed (make_job said why)
    instances: Instances | None = None  # None with a job: its outputs are complete
    error: Exception | None = None


def prepare(run: Run, stem: str, make_job: Callable[[], Job | None]) -> Prepared:
    """Everything before the model for one tomogram: make its job, check its outputs, read its
    inputs, grow its labels and cut its first batch of patches. Errors are kept, not raised."""
    try:
        job = make_job()
        if job is None:
            return Prepared(stem)
        if not run.overwrite and is_done(run.out, job.stem, job.stamp):
            return Prepared(stem, job)
        instances = job.load()
        instances.patches = cut_ahead(instances.patches, run.cfg.hyper_parameters.batch_size)
        return Prepared(stem, job, instances)
    except Exception as err:  # raised in the tomogram's turn, as if made there
        return Prepared(stem, error=err)


def cut_ahead(patches: Iterable[np.ndarray], count: int) -> Iterator[np.ndarray]:
    """``patches`` with the first ``count`` already cut (here and now), the rest as they come."""
    rest = iter(patches)
    return itertools.chain(list(itertools.islice(rest, count)), rest)


def embed_tomograms(run: Run, jobs: Iterable[tuple[str, Callable[[], Job | None]]]) -> RunSummary:
    """For each ``(stem, make_job)``, in order: make the job (None: skipped, it says why), skip it if
    its outputs are complete, else embed its instances and write its outputs.

    With ``run.overlap`` the next tomogram is prepared (:func:`prepare`) in a background thread while
    the model embeds the current one: one tomogram ahead at most; its errors are reported in its turn.
    """
    from ..core.embed import prefetch

    summary = RunSummary()
    prepared = (prepare(run, stem, make_job) for stem, make_job in jobs)
    with closing(prefetch(prepared, depth=1) if run.overlap else prepared) as ready:
        for tomogram in ready:
            with summary.attempt(tomogram.stem, run.keep_going):
                embed_prepared(run, tomogram, summary)
            del tomogram  # its memory goes before the one after next is prepared
    summary.report(run.what, run.out)
    return summary


def embed_prepared(run: Run, tomogram: Prepared, summary: RunSummary) -> None:
    """Embed a prepared tomogram and write its outputs (or record why not, or raise its error)."""
    if tomogram.error is not None:
        raise tomogram.error
    job, instances = tomogram.job, tomogram.instances
    if job is None:
        summary.nothing.append(tomogram.stem)
        return
    if instances is None:
        log.info("%s: already complete, skipped", job.stem)
        summary.skipped.append(job.stem)
        return
    start = time.perf_counter()
    count = instances.count
    with io.progress(total=count, desc=job.stem, unit="patch") as bar:
        embeddings = embed_with_config(run.model, instances.patches, count, run.device, run.cfg, bar.update)
    table = instances.table()
    written = write_outputs(
        run.out, job.stem, table, embeddings, job.stamp, instances.star(table), instances.exact_floats
    )
    seconds = time.perf_counter() - start
    log.info(
        "%s: %d instances embedded on %s in %.1f s (%.1f/s) → %s",
        job.stem,
        count,
        run.device,
        seconds,
        count / max(seconds, 1e-9),
        written[-1],
    )
    summary.done.append(job.stem)


def start_run(
    what: str, cfg: Config, out: Path, checkpoint: Path | None, device: str, overwrite: bool, keep_going: bool
) -> Run:
    """The model loaded and the device chosen (``out`` is prepared first: :func:`prepare_output_folder`)."""
    from ..core.embed import pick_device

    loaded = load_checkpoint_for(cfg, checkpoint, what)
    return Run(what, cfg, out, loaded, pick_device(device, cfg.parameters.gpu_devices), overwrite, keep_going)


# --------------------------------------------------------------------------------------------
# predict: tomogram + mask


def predict_job(run: Run, tomogram: Path) -> Job | None:
    cfg = run.cfg
    inputs = locate_inputs(cfg, tomogram)
    if inputs is None:
        return None
    stamp = io.fingerprint(
        inputs.files(), extraction=extraction_settings(cfg), **embedding_settings(cfg), checkpoint=run.model.digest
    )

    def load() -> Instances:
        volume, mask = load_tomogram_and_mask(inputs)
        plan = plan_tomogram(cfg, inputs, mask)
        del mask
        patches = (p for _, p in iter_patches(volume, plan, patch_contract(cfg), str(inputs.tomogram)))
        geometry = TomogramGeometry.of(inputs.tomogram, volume.shape)
        return Instances(
            len(plan), patches, lambda: plan.table, lambda table: regions_star(inputs.stem, table, geometry)
        )

    return Job(inputs.stem, stamp, load)


def run_predict(
    cfg: Config,
    filename: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
    keep_going: bool = False,
    centers: bool = False,
) -> RunSummary:
    """Embed every instance of every selected tomogram (CryoSiam's ``simsiam_embeddings_predict``) or,
    with ``centers``, a box around each of its picks (``simsiam_embeddings_from_centers_predict``:
    :func:`.centers.predict_centers`)."""

    def start(out: Path) -> Run:
        return start_run("predict-centers" if centers else "predict", cfg, out, None, device, overwrite, keep_going)

    if centers:
        from .centers import predict_centers

        return predict_centers(cfg, filename, start)
    out = prepare_output_folder(cfg.path("prediction_folder"), cfg)
    tomograms = list_tomograms(cfg, filename)
    run = start(out)
    log.info(
        "embedding %d tomogram(s) on %s, batch size %d", len(tomograms), run.device, cfg.hyper_parameters.batch_size
    )
    summary = embed_tomograms(run, [(cfg.stem(t.name), partial(predict_job, run, t)) for t in tomograms])
    keep_config(cfg, out, "predict")
    return summary


# --------------------------------------------------------------------------------------------
# embed: patches files


def read_patches_header(cfg: Config, path: Path) -> h5files.PatchesFile:
    """A patches file's header, checked against this run: its stem is a plain name (read by
    :func:`h5files.read_patches_file`) and, when the config sets a patch size, its patches have
    that size (never embed 8³ patches under a 32³ config)."""
    patches = h5files.read_patches_file(path)
    size = patch_contract(cfg).patch_size
    if cfg.is_set("parameters.data.patch_size") and patches.patch_shape != size:
        raise InputDataError(
            f"patches of {'×'.join(map(str, patches.patch_shape))} voxels, but parameters.data.patch_size is "
            f"{list(size)} ({cfg.origin('parameters.data.patch_size')}): extract them with this config",
            path,
        )
    return patches


def patches_job(run: Run, patches: h5files.PatchesFile) -> Job:
    path = patches.path
    geometry = None
    if patches.tomogram_shape is not None and patches.voxel_size is not None:
        z, y, x = patches.tomogram_shape
        vz, vy, vx = patches.voxel_size
        geometry = TomogramGeometry((z, y, x), (vz, vy, vx))
    stamp = io.fingerprint([], extraction=patches.stamp, **embedding_settings(run.cfg), checkpoint=run.model.digest)
    return Job(
        patches.stem,
        stamp,
        lambda: Instances(
            patches.count,
            h5files.iter_patches_file(path),
            lambda: patches.table,
            lambda table: regions_star(patches.stem, table, geometry),
        ),
    )


def run_embed(
    cfg: Config,
    patches_files: list[Path] | None = None,
    checkpoint: Path | None = None,
    output_dir: Path | None = None,
    device: str = "auto",
    filename: str | None = None,
    overwrite: bool = False,
    keep_going: bool = False,
) -> RunSummary:
    """Embed patches files (from ``extract``) and write the per-tomogram outputs."""
    if not patches_files:
        folder = cfg.path("prediction_folder")
        patches_files = [layout.patches_file(folder, cfg.stem(t.name)) for t in list_tomograms(cfg, filename)]
    headers = [read_patches_header(cfg, p) for p in patches_files]  # every file checked before anything is written
    out = prepare_output_folder(
        output_dir or cfg.path("prediction_folder"), cfg, "--output-dir" if output_dir else "prediction_folder"
    )
    run = start_run("embed", cfg, out, checkpoint, device, overwrite, keep_going)
    return embed_tomograms(run, [(h.stem, partial(patches_job, run, h)) for h in headers])
