"""The global steps: merge the per-tomogram embeddings, visualize them, cluster them (KMeans, spectral).

File-level orchestration only; the numerical work is in ``core.merge``, ``core.cluster`` and
``core.visualize``. Inputs (from the embedding step, in ``--input-dir``):
``<stem>_embeds.h5`` (``embeddings`` [dim, N]), ``<stem>_instance_labels.h5`` (``labels``),
``<stem>_instance_regions.csv``; or an already merged ``embeddings.h5`` (+ ``embeddings_table.csv``
or the per-tomogram regions CSVs), which is how the pipeline stages them.

Every file goes through ``atomic_output``. All input checks run before the first write, so bad
input leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import merge as M
from ..core.config import Config
from ..core.errors import ConfigError, InputDataError
from ..core.io import (
    TMP_MARK,
    atomic_output,
    check_writable_folder,
    find_mask,
    open_mrc_volume,
    read_h5_dataset,
    read_instance_mask,
    read_regions_csv,
    read_star,
    regions_to_star_table,
    write_h5,
    write_mrc,
    write_regions_csv,
    write_star,
)

log = logging.getLogger(__name__)

GALLERY_SIZE = 16  # instances per cluster gallery
METHODS = {"kmeans": "KMeans", "spectral": "Spectral"}


# --------------------------------------------------------------------------------------------
# folders


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
        vis = out / "vis"
    if not inp.is_dir():
        raise InputDataError("input folder does not exist", inp)
    return Folders(inp, out, vis)


# --------------------------------------------------------------------------------------------
# merge


@dataclass
class Merged:
    embeddings: np.ndarray  # [N, dim] float32
    counts: np.ndarray  # [n_tomograms]
    stems: list[str]
    table: pd.DataFrame  # tomogram, label, row, regions columns
    path: Path
    key: str  # identifies this version of the merged embeddings
    offsets: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.offsets = M.offsets(self.counts)

    @property
    def n(self) -> int:
        return int(self.embeddings.shape[0])

    def regions(self, i: int) -> pd.DataFrame:
        """Tomogram i's regions rows (CryoSiam columns) in embedding order."""
        part = self.table.iloc[self.offsets[i] : self.offsets[i + 1]]
        return part.drop(columns=["tomogram", "row"]).reset_index(drop=True)


def per_tomogram_stems(cfg: Config, folder: Path, files: list[str] | None) -> list[str]:
    """Sorted stems with ``<stem>_embeds.h5`` in ``folder`` (or those listed in ``files``)."""
    if files:
        return sorted({cfg.stem(f) for f in files})
    found = [
        p.name[: -len(M.EMBEDS_SUFFIX)]
        for p in folder.glob(f"*{M.EMBEDS_SUFFIX}")
        if p.is_file() and not p.name.startswith(TMP_MARK)
    ]
    return sorted(found)


def _input_files(folder: Path, stems: list[str]) -> list[tuple[Path, Path | None, Path]]:
    out = []
    for stem in stems:
        embeds = folder / f"{stem}{M.EMBEDS_SUFFIX}"
        labels = folder / f"{stem}{M.LABELS_SUFFIX}"
        regions = folder / f"{stem}{M.REGIONS_SUFFIX}"
        if not embeds.is_file():
            raise InputDataError("embeddings file does not exist (listed in clustering_files?)", embeds)
        if not regions.is_file():
            raise InputDataError("regions table of these embeddings does not exist", regions)
        out.append((embeds, labels if labels.is_file() else None, regions))
    return out


def _fingerprint_of(files: list[tuple[Path, Path | None, Path]], stems: list[str]) -> str:
    records = []
    for triple in files:
        records.extend(M.file_record(p) for p in triple if p is not None)
    return M.fingerprint(records, {"stems": stems, "layout": 1})


def _read_attr(path: Path, name: str) -> str | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get(name)
    except OSError:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    return None if value is None else str(value)


@dataclass
class MergePlan:
    """What a merge will write, with every input checked (pass 1); nothing written yet."""

    stems: list[str]
    files: list[tuple[Path, Path | None, Path]]
    key: str
    merged_path: Path
    table_path: Path
    up_to_date: bool
    total: int = 0
    dim: int = 0
    counts: list[int] = field(default_factory=list)
    table: pd.DataFrame | None = None


def plan_merge(cfg: Config, input_dir: Path, output_dir: Path, force: bool = False) -> MergePlan:
    """Find and check the per-tomogram inputs; decide whether the merge in ``output_dir`` is up to date."""
    stems = per_tomogram_stems(cfg, input_dir, cfg.clustering_files)
    if not stems:
        raise InputDataError(f"no embeddings found (no *{M.EMBEDS_SUFFIX} files)", input_dir)
    files = _input_files(input_dir, stems)
    key = _fingerprint_of(files, stems)
    merged_path = output_dir / M.MERGED_NAME
    table_path = output_dir / M.TABLE_NAME
    fresh = merged_path.is_file() and table_path.is_file() and _read_attr(merged_path, M.FINGERPRINT_ATTR) == key
    plan = MergePlan(stems, files, key, merged_path, table_path, fresh and not force)
    if plan.up_to_date:
        plan.total = _h5_shape(merged_path, "embeddings")[0]
        return plan
    if merged_path.is_file():
        log.info("inputs changed since the last merge (or --force): rebuilding %s", merged_path)

    # pass 1: shapes, labels and regions, all checked before anything is written
    regions_list: list[pd.DataFrame] = []
    for stem, (embeds, labels, regions) in zip(stems, files):
        shape = _h5_shape(embeds, "embeddings")
        if len(shape) != 2:
            raise InputDataError(f"dataset 'embeddings' must be 2D [dim, N], got shape {shape}", embeds)
        if not plan.counts:
            plan.dim = shape[0]
        elif shape[0] != plan.dim:
            raise InputDataError(
                f"embedding dimension {shape[0]} differs from {plan.dim} of {stems[0]}{M.EMBEDS_SUFFIX}", embeds
            )
        n = shape[1]
        lab = read_h5_dataset(labels, "labels") if labels is not None else None
        reg = read_regions_csv(regions)
        try:
            reg = M.align_regions(reg, lab, n)
        except M.MergeInputError as err:
            raise InputDataError(str(err), labels if err.about == "labels" else regions) from None
        plan.counts.append(n)
        regions_list.append(reg)
    plan.total = int(sum(plan.counts))
    if plan.total == 0:
        raise InputDataError("no embeddings found: every tomogram has 0 instances", input_dir)
    plan.table = M.tidy_table(stems, regions_list)
    return plan


def write_merge(cfg: Config, plan: MergePlan) -> Path:
    """Pass 2: stream the embeddings into ``embeddings.h5`` (checking each tomogram's values); the
    table is written inside the same atomic block, so a failure leaves neither file."""
    import h5py

    if plan.up_to_date:
        log.info("merged embeddings are up to date: %s", plan.merged_path)
        return plan.merged_path
    check_writable_folder(plan.merged_path.parent)
    total, dim = plan.total, plan.dim
    log.info("merging %d embeddings (dim %d) of %d tomograms", total, dim, len(plan.stems))
    with atomic_output(plan.merged_path) as tmp:
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset("embeddings", shape=(total, dim), dtype=np.float32, chunks=(min(total, 4096), dim))
            start = 0
            for (embeds, _, _), n in zip(_progress(plan.files, "merge"), plan.counts):
                try:
                    rows = M.embedding_rows(read_h5_dataset(embeds, "embeddings"), dim)
                except M.MergeInputError as err:
                    raise InputDataError(str(err), embeds) from None
                ds[start : start + n] = rows
                start += n
            f.create_dataset("number_of_samples", data=np.asarray(plan.counts, dtype=np.int64))
            f.create_dataset("tomograms", data=np.asarray(plan.stems, dtype=object), dtype=h5py.string_dtype())
            f.create_dataset("labels", data=plan.table["label"].to_numpy(np.int64))
            f.attrs[M.FINGERPRINT_ATTR] = plan.key
            f.attrs["file_extension"] = cfg.file_extension
        write_regions_csv(plan.table_path, plan.table)
    log.info("wrote %s and %s", plan.merged_path, plan.table_path)
    return plan.merged_path


def merge_embeddings(cfg: Config, input_dir: Path, output_dir: Path, force: bool = False) -> Path:
    """Merge ``<stem>_embeds.h5`` of every tomogram (or ``clustering_files``) into ``embeddings.h5``
    and ``embeddings_table.csv`` in ``output_dir``; reuse them only if their inputs are unchanged."""
    return write_merge(cfg, plan_merge(cfg, input_dir, output_dir, force))


def _h5_shape(path: Path, name: str) -> tuple:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if name not in f:
                raise InputDataError(f"HDF5 file has no dataset '{name}'", path)
            return tuple(f[name].shape)
    except InputDataError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise InputDataError(f"not a readable HDF5 file ({str(err).splitlines()[0][:120]})", path) from None


def load_merged(cfg: Config, folders: Folders, check=None) -> Merged:
    """The merged embeddings: merged (or re-merged) from the per-tomogram files of the input folder
    when it has them, else the ``embeddings.h5`` found in the input (or output) folder.

    ``check(n, path)`` runs with the number of embeddings before anything is written.
    """
    import h5py

    if per_tomogram_stems(cfg, folders.input_dir, None):
        plan = plan_merge(cfg, folders.input_dir, folders.output_dir)
        if check is not None:
            check(plan.total, plan.merged_path if plan.up_to_date else folders.input_dir)
        path = write_merge(cfg, plan)
    else:
        candidates = [folders.input_dir / M.MERGED_NAME, folders.output_dir / M.MERGED_NAME]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise InputDataError(
                f"no embeddings found (no *{M.EMBEDS_SUFFIX} files and no {M.MERGED_NAME})", folders.input_dir
            )
        log.info("using merged embeddings %s", path)
    try:
        with h5py.File(path, "r") as f:
            for name in ("embeddings", "number_of_samples"):
                if name not in f:
                    raise InputDataError(f"HDF5 file has no dataset '{name}'", path)
            emb = f["embeddings"]
            if emb.ndim != 2:
                raise InputDataError(f"dataset 'embeddings' must be 2D [N, dim], got shape {emb.shape}", path)
            embeddings = np.asarray(emb[()], dtype=np.float32)
            counts = np.asarray(f["number_of_samples"][()], dtype=np.int64).ravel()
            stems = [s.decode() if isinstance(s, bytes) else str(s) for s in f["tomograms"][()]] if "tomograms" in f else None
            labels = np.asarray(f["labels"][()], dtype=np.int64) if "labels" in f else None
            key = f.attrs.get(M.FINGERPRINT_ATTR)
    except InputDataError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise InputDataError(f"not a readable HDF5 file ({str(err).splitlines()[0][:120]})", path) from None
    n = embeddings.shape[0]
    if n == 0:
        raise InputDataError("no embeddings found: the merged file is empty", path)
    if int(counts.sum()) != n:
        raise InputDataError(f"number_of_samples sums to {int(counts.sum())} but there are {n} embeddings", path)
    try:
        M.check_finite(embeddings)
    except M.MergeInputError as err:
        raise InputDataError(str(err), path) from None
    if stems is None:
        stems = _stems_without_names(cfg, folders, path, len(counts))
    if len(stems) != len(counts):
        raise InputDataError(f"{len(stems)} tomogram names but {len(counts)} entries in number_of_samples", path)
    table = _merged_table(folders, path, stems, counts, labels)
    if check is not None:
        check(n, path)
    if key is None:
        key = M.fingerprint([M.file_record(path)])
    return Merged(embeddings, counts, stems, table, path, str(key))


def _stems_without_names(cfg: Config, folders: Folders, path: Path, n_tomograms: int) -> list[str]:
    """CryoSiam's embeddings.h5 has no tomogram names: take clustering_files or the regions CSVs beside it."""
    if cfg.clustering_files:
        return sorted({cfg.stem(f) for f in cfg.clustering_files})
    found = sorted(
        p.name[: -len(M.REGIONS_SUFFIX)]
        for p in folders.input_dir.glob(f"*{M.REGIONS_SUFFIX}")
        if not p.name.startswith(TMP_MARK)
    )
    if len(found) != n_tomograms:
        raise InputDataError(
            f"merged file names no tomograms and {len(found)} regions CSVs do not match its {n_tomograms} tomograms; "
            "set clustering_files",
            path,
        )
    return found


def _merged_table(folders: Folders, path: Path, stems: list[str], counts: np.ndarray, labels: np.ndarray | None) -> pd.DataFrame:
    table_path = path.parent / M.TABLE_NAME
    if table_path.is_file():
        try:
            table = pd.read_csv(table_path, dtype={"tomogram": str})
        except (OSError, ValueError, pd.errors.ParserError) as err:
            raise InputDataError(f"not a readable table ({str(err)[:120]})", table_path) from None
        missing = [c for c in (*M.TABLE_KEYS, "area") if c not in table.columns]
        if missing:
            raise InputDataError(f"table lacks columns {missing}", table_path)
        if len(table) != int(counts.sum()):
            raise InputDataError(f"table has {len(table)} rows but {path.name} has {int(counts.sum())} embeddings", table_path)
        if not np.array_equal(table["row"].to_numpy(), np.arange(len(table))):
            raise InputDataError("column 'row' must number the rows 0..N-1 in merged order", table_path)
        return table
    # rebuild from the per-tomogram regions CSVs
    regions = []
    off = M.offsets(counts)
    for i, stem in enumerate(stems):
        csv = folders.input_dir / f"{stem}{M.REGIONS_SUFFIX}"
        if not csv.is_file():
            raise InputDataError(f"regions table does not exist (needed beside {path.name})", csv)
        lab = labels[off[i] : off[i + 1]] if labels is not None else None
        try:
            regions.append(M.align_regions(read_regions_csv(csv), lab, int(counts[i])))
        except M.MergeInputError as err:
            raise InputDataError(str(err), csv) from None
    return M.tidy_table(stems, regions)


def run_merge(cfg: Config, folders: Folders, force: bool = False) -> Path:
    return merge_embeddings(cfg, folders.input_dir, folders.output_dir, force=force)


# --------------------------------------------------------------------------------------------
# clustering


def _cluster_checks(cfg: Config, section: str, folders: Folders, visualization: bool):
    """Checks that need no data run now; the returned function checks the number of instances."""
    k = getattr(cfg, section).num_clusters
    if k < 2:
        raise ConfigError(f"key '{section}.num_clusters' must be at least 2 to cluster (got {k})", cfg.source)
    n_neighbors = cfg.clustering_spectral.n_neighbors if section == "clustering_spectral" else 0

    def check(n: int, path: Path) -> None:
        if n < k:
            raise InputDataError(f"{n} instances cannot make {k} clusters ({section}.num_clusters)", path)
        if n_neighbors >= n:
            raise InputDataError(
                f"{n} instances are too few for a {n_neighbors}-neighbour graph (clustering_spectral.n_neighbors)", path
            )
        _check_can_write(folders.output_dir)
        if visualization:
            _check_can_write(folders.vis_dir)

    return k, check


def _check_can_write(folder: Path) -> None:
    """Fail early if ``folder`` cannot be written or created, without creating it (bad input writes nothing)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        from ..core.errors import ResourceError

        raise ResourceError("output folder is not writable", folder)


def run_kmeans(cfg: Config, folders: Folders) -> dict[str, Path]:
    from ..core import cluster as C

    k, check = _cluster_checks(cfg, "clustering_kmeans", folders, cfg.clustering_kmeans.visualization)
    merged = load_merged(cfg, folders, check)
    log.info("KMeans with k=%d on %d embeddings (dim %d)", k, merged.n, merged.embeddings.shape[1])
    labels, centers = C.kmeans(merged.embeddings, k, seed=cfg.seed)
    ids = np.arange(k)
    datasets = {"clusters": labels, "centers": centers}
    return _write_cluster_outputs(cfg, folders, merged, "kmeans", labels, ids, centers, datasets, {})


def run_spectral(cfg: Config, folders: Folders) -> dict[str, Path]:
    from ..core import cluster as C

    sc = cfg.clustering_spectral
    k, check = _cluster_checks(cfg, "clustering_spectral", folders, sc.visualization)
    merged = load_merged(cfg, folders, check)
    log.info(
        "spectral clustering (%s k=%d, %d neighbours) on %d embeddings",
        "at most" if sc.estimate_num_clusters else "", k, sc.n_neighbors, merged.n,
    )
    result = C.spectral(merged.embeddings, k, sc.estimate_num_clusters, n_neighbors=sc.n_neighbors, seed=cfg.seed)
    labels = result.labels + 1  # CryoSiam's spectral ids are 1-based
    ids = np.arange(1, result.num_clusters + 1)
    centers = C.cluster_means(merged.embeddings, labels, ids)
    datasets = {"clusters": labels, "centers": centers, "eigenvalues": result.eigenvalues}
    attrs = {"estimated": bool(sc.estimate_num_clusters), "graph_components": int(result.n_components)}
    log.info("spectral: %d clusters", result.num_clusters)
    return _write_cluster_outputs(cfg, folders, merged, "spectral", labels, ids, centers, datasets, attrs)


def _write_cluster_outputs(
    cfg: Config,
    folders: Folders,
    merged: Merged,
    method: str,
    labels: np.ndarray,
    ids: np.ndarray,
    centers: np.ndarray,
    datasets: dict,
    attrs: dict,
) -> dict[str, Path]:
    out = folders.output_dir
    written: dict[str, Path] = {}
    sizes = {int(c): int((labels == c).sum()) for c in ids}
    log.info("%s cluster sizes: %s", METHODS[method], sizes)
    path = out / f"{method}_clusters.h5"
    write_h5(
        path,
        {k: np.asarray(v) for k, v in datasets.items()},
        {"num_clusters": int(len(ids)), "seed": int(cfg.seed), "embeddings_key": merged.key, **attrs},
    )
    written["clusters"] = path
    stars = []
    for i, stem in enumerate(_progress(merged.stems, f"{method} tables")):
        pred = labels[merged.offsets[i] : merged.offsets[i + 1]]
        write_h5(out / f"{stem}_clusters_{method}.h5", {"predictions": np.asarray(pred, dtype=np.int64)})
        regions = merged.regions(i)
        regions["semantic_class"] = pred
        write_regions_csv(out / f"{stem}_instance_regions_{method}_clustered.csv", regions)
        star = clustered_star(folders.input_dir / f"{stem}_instance_regions.star", regions, pred)
        write_star(out / f"{stem}_instance_regions_{method}_clustered.star", star, exact=True)
        stars.append(star)
    if all("rlnTomoName" in star.columns for star in stars):
        particles = pd.concat(stars, ignore_index=True)  # the rows predict wrote, in their convention
    else:
        particles = particles_table(cfg, merged.table, labels)
    write_star(out / f"{method}_particles.star", particles, exact=True)
    for c in ids:
        write_star(out / f"{method}_cluster_{int(c)}_particles.star",
                   particles[particles["rlnClass"] == c].reset_index(drop=True), exact=True)
    log.info("wrote %s, per-tomogram tables and per-cluster STAR files to %s", path.name, out)

    volume_ids = labels + 1 if ids.min() == 0 else labels  # background stays 0
    write_label_volumes(cfg, merged, volume_ids, out, method)
    section = getattr(cfg, f"clustering_{method}")
    if section.visualization:
        written.update(cluster_figures(cfg, folders, merged, method, labels, ids, centers))
    return written


def clustered_star(source: Path, regions: pd.DataFrame, classes: np.ndarray) -> pd.DataFrame:
    """A tomogram's clustered STAR: the rows of its ``predict`` STAR (``source``: every column, in
    its convention; for picks, the picks' own rows) with ``rlnClass``; without that file,
    CryoSiam's columns from the regions table."""
    labels = regions["label"].to_numpy(np.int64)
    if source.is_file():
        star = read_star(source)
        if isinstance(star, dict):
            star = star.get("particles", next(iter(star.values())))
        if isinstance(star, pd.DataFrame) and "rlnLabel" in star.columns and not star["rlnLabel"].duplicated().any():
            indexed = star.set_index(star["rlnLabel"].to_numpy(np.int64))
            if np.isin(labels, indexed.index.to_numpy()).all():
                rows = indexed.loc[labels].reset_index(drop=True)
                return rows.assign(rlnClass=np.asarray(classes, dtype=np.int64))
        log.info("%s does not describe the embedded instances: clustered STAR made from the regions table", source.name)
    star = regions_to_star_table(regions.drop(columns=["semantic_class"], errors="ignore"))
    return star.assign(rlnClass=np.asarray(classes, dtype=np.int64))


def particles_table(cfg: Config, table: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """RELION-style particles: tomogram name, coordinates (x, y, z in voxels), label, class."""
    return pd.DataFrame(
        {
            "rlnTomoName": table["tomogram"].astype(str).to_numpy(),
            "rlnMicrographName": (table["tomogram"].astype(str) + cfg.file_extension).to_numpy(),
            "rlnCoordinateX": table["centroid-2"].to_numpy(np.float64),
            "rlnCoordinateY": table["centroid-1"].to_numpy(np.float64),
            "rlnCoordinateZ": table["centroid-0"].to_numpy(np.float64),
            "rlnLabel": table["label"].to_numpy(np.int64),
            "rlnArea": table["area"].to_numpy(),
            "rlnClass": np.asarray(labels, dtype=np.int64),
        }
    )


def write_label_volumes(cfg: Config, merged: Merged, volume_ids: np.ndarray, out: Path, method: str) -> None:
    """Per tomogram ``<stem>_clusters_<method>.mrc``: each instance's voxels carry its (1-based) cluster id."""
    mask_folder = cfg.optional_path("instances_mask_folder")
    if mask_folder is None or not mask_folder.is_dir():
        log.info("no cluster label volumes: instances_mask_folder is %s", "not set" if mask_folder is None else f"not a folder ({mask_folder})")
        return
    data_folder = cfg.optional_path("data_folder")
    done = 0
    for i, stem in enumerate(_progress(merged.stems, f"{method} label volumes")):
        mask_path = find_mask(mask_folder, stem, cfg.file_extension, cfg.instances_suffix)
        if mask_path is None:
            log.info("no mask for %s in %s: label volume skipped", stem, mask_folder)
            continue
        mask = read_instance_mask(mask_path)
        lab = merged.table["label"].to_numpy(np.int64)[merged.offsets[i] : merged.offsets[i + 1]]
        cls = volume_ids[merged.offsets[i] : merged.offsets[i + 1]]
        top = int(max(mask.max(initial=0), lab.max(initial=0)))
        dtype = np.int8 if cls.max(initial=0) < 128 else np.int16
        lut = np.zeros(top + 1, dtype=dtype)
        lut[lab] = cls
        volume = lut[mask]
        write_mrc(out / f"{stem}_clusters_{method}.mrc", volume, _voxel_size(mask_path, data_folder, stem, cfg.file_extension))
        done += 1
    log.info("wrote %d cluster label volumes", done)


def _voxel_size(mask_path: Path, data_folder: Path | None, stem: str, ext: str) -> float:
    for p in (mask_path, data_folder / f"{stem}{ext}" if data_folder else None):
        if p is not None and p.suffix.lower() in (".mrc", ".rec", ".map") and p.is_file():
            try:
                return open_mrc_volume(p)[1]
            except InputDataError:
                pass
    return 1.0


# --------------------------------------------------------------------------------------------
# figures


def _projection_name(cfg: Config) -> str | None:
    v = cfg.visualization
    if v.pca_components is not None:
        return "pca"
    return "umap" if v.visualize_umap else None


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)
    return path


def _cache_path(folders: Folders, name: str, dims: int) -> Path:
    return folders.vis_dir / f".projection_{name}_{dims}d.h5"


def _projection_key(cfg: Config, merged: Merged, dims: int) -> str:
    v = cfg.visualization
    return M.fingerprint([], {"emb": merged.key, "dims": dims, "metric": v.distance, "pca": v.pca_components, "seed": cfg.seed})


def global_projection(cfg: Config, folders: Folders, merged: Merged, dims: int = 2) -> tuple[np.ndarray, str]:
    """Coordinates of every embedding (UMAP or PCA), computed once per input and settings, cached in the vis folder."""
    from ..core import visualize as V

    cache = _cache_path(folders, _projection_name(cfg) or "umap", dims)
    key = _projection_key(cfg, merged, dims)
    if cache.is_file() and _read_attr(cache, "key") == key:
        coords = read_h5_dataset(cache, "coords")
        method = _read_attr(cache, "method") or "umap"
        if coords.shape == (merged.n, dims):
            log.info("reusing the %dD projection in %s", dims, cache)
            return coords, method
    log.info("projecting %d embeddings to %dD", merged.n, dims)
    coords, method = V.project(
        merged.embeddings, dims, cfg.visualization.distance, cfg.visualization.pca_components, seed=cfg.seed
    )
    write_h5(cache, {"coords": coords}, {"key": key, "method": method})
    return coords, method


def _cached_projection(cfg: Config, folders: Folders, merged: Merged) -> tuple[np.ndarray, str] | None:
    cache = _cache_path(folders, _projection_name(cfg) or "umap", 2)
    if cache.is_file() and _read_attr(cache, "key") == _projection_key(cfg, merged, 2):
        coords = read_h5_dataset(cache, "coords")
        if coords.shape == (merged.n, 2):
            return coords, _read_attr(cache, "method") or "umap"
    return None


def _axis_name(method: str) -> str:
    return "UMAP" if method == "umap" else "PC"


def _log_area(table: pd.DataFrame) -> np.ndarray:
    area = table["area"].to_numpy(np.float64)
    return np.log2(np.clip(area, 1, None))


def cluster_figures(
    cfg: Config, folders: Folders, merged: Merged, method: str, labels: np.ndarray, ids: np.ndarray, centers: np.ndarray
) -> dict[str, Path]:
    """The clustering step's own figures: projection coloured by cluster, distance map, galleries."""
    from ..core import visualize as V

    vis = folders.vis_dir
    v = cfg.visualization
    written: dict[str, Path] = {}
    name = METHODS[method]
    counts = {int(c): int((labels == c).sum()) for c in ids}
    sub = V.plot_subsample(merged.n, v.max_plot_points, cfg.seed)
    cached = _cached_projection(cfg, folders, merged)
    if cached is not None:  # the projection of every embedding, made by `visualize`
        coords, proj = cached
        rows = np.arange(merged.n)
        draw = sub
        note = None
    else:  # project only the plotted subsample (for the plot; the clustering used every embedding)
        rows = np.sort(sub)
        coords, proj = V.project(merged.embeddings[rows], 2, v.distance, v.pca_components, seed=cfg.seed)
        draw = np.random.default_rng(cfg.seed).permutation(rows.size)
        note = None if rows.size == merged.n else f"projection of a random {rows.size} of {merged.n} instances"
    table = merged.table.iloc[rows].reset_index(drop=True)
    csv = table[["tomogram", "label", "row"]].copy()
    csv["x"], csv["y"] = coords[:, 0], coords[:, 1]
    csv["cluster"] = labels[rows]
    written["coords"] = vis / f"{method}_clusters_{proj}.csv"
    write_regions_csv(written["coords"], csv)

    xy = coords[draw]
    panels = [
        {"values": labels[rows][draw], "title": f"{name} clusters", "kind": "categorical", "label": "cluster", "counts": counts},
        {"values": table["tomogram"].to_numpy()[draw], "title": "tomogram", "kind": "categorical", "label": "tomogram"},
    ]
    shown = f"{len(draw)} of {merged.n} instances" if len(draw) < merged.n else f"{merged.n} instances"
    fig = V.projection_figure(xy, panels, f"{name} clustering, k={len(ids)} ({shown})", _axis_name(proj), note)
    written["projection"] = _save(fig, vis / f"{method}_clusters_{proj}.png")

    dist, _, groups = V.distance_map(merged.embeddings, labels, v.distance, seed=cfg.seed)
    fig = V.distance_map_figure(dist, groups, f"Pairwise distances ordered by {name} cluster", v.distance, f"{name} cluster")
    written["distance_map"] = _save(fig, vis / f"{method}_distance_map.png")
    written.update(cluster_galleries(cfg, folders, merged, method, labels, ids, centers))
    log.info("wrote %s figures to %s", name, vis)
    return written


def cluster_galleries(
    cfg: Config, folders: Folders, merged: Merged, method: str, labels: np.ndarray, ids: np.ndarray, centers: np.ndarray
) -> dict[str, Path]:
    """Per cluster, the central z slices of the instances nearest its centre."""
    from ..core import cluster as C
    from ..core import visualize as V

    data_folder = cfg.optional_path("data_folder")
    if data_folder is None or not data_folder.is_dir():
        log.info("no cluster galleries: data_folder is %s", "not set" if data_folder is None else f"not a folder ({data_folder})")
        return {}
    nearest = C.nearest_to_centres(merged.embeddings, labels, ids, centers, GALLERY_SIZE)
    size = cfg.parameters.data.patch_size[1:]
    volumes: dict[str, object] = {}
    written = {}
    for c in ids:
        images, titles = [], []
        for r in nearest[int(c)]:
            row = merged.table.iloc[int(r)]
            stem = str(row["tomogram"])
            if stem not in volumes:
                path = data_folder / f"{stem}{cfg.file_extension}"
                try:
                    volumes[stem] = open_mrc_volume(path)[0]
                except InputDataError as err:
                    log.info("gallery skips tomogram %s: %s", stem, err)
                    volumes[stem] = None
            vol = volumes[stem]
            if vol is None:
                continue
            centroid = [row["centroid-0"], row["centroid-1"], row["centroid-2"]]
            images.append(V.central_slice(vol, centroid, size))
            titles.append(f"{stem}:{int(row['label'])}")
        if not images:
            continue
        n_c = int((labels == c).sum())
        fig = V.gallery_figure(
            images, titles, f"{METHODS[method]} cluster {int(c)} ({n_c} instances): {len(images)} nearest its centre, central z slices"
        )
        written[f"gallery_{int(c)}"] = _save(fig, folders.vis_dir / f"{method}_cluster_{int(c)}_gallery.png")
    log.info("wrote %d cluster galleries", len(written))
    return written


# --------------------------------------------------------------------------------------------
# visualize


def _existing_clusterings(folders: Folders, merged: Merged) -> dict[str, np.ndarray]:
    found = {}
    for method in METHODS:
        for folder in (folders.output_dir, folders.input_dir):
            p = folder / f"{method}_clusters.h5"
            if p.is_file():
                try:
                    clusters = read_h5_dataset(p, "clusters").ravel()
                except InputDataError:
                    continue
                if clusters.size == merged.n and _read_attr(p, "embeddings_key") in (None, merged.key):
                    found[method] = clusters.astype(np.int64)
                    break
    return found


def run_visualize(cfg: Config, folders: Folders) -> dict[str, Path]:
    """Projections (all tomograms together and per tomogram), CSV coordinates, PNGs and distance maps."""
    from ..core import visualize as V

    v = cfg.visualization
    merged = load_merged(cfg, folders)
    check_writable_folder(folders.vis_dir)
    vis = folders.vis_dir
    written: dict[str, Path] = {}
    clusterings = _existing_clusterings(folders, merged)
    if clusterings:
        log.info("colouring by existing clusters: %s", ", ".join(clusterings))
    proj_name = _projection_name(cfg)
    log_area = _log_area(merged.table)

    if proj_name is None:
        log.info("visualization.visualize_umap is false and no pca_components: no projections")
    else:
        dims_list = [2, 3] if v.umap_3d else [2]
        for dims in dims_list:
            coords, method = global_projection(cfg, folders, merged, dims)
            suffix = "" if dims == 2 else "_3d"
            csv = merged.table.copy()
            csv["log_area"] = log_area
            for name, clusters in clusterings.items():
                csv[f"{name}_cluster"] = clusters
            for j, axis in enumerate("xyz"[:dims]):
                csv[axis] = coords[:, j]
            written[f"all{suffix}_csv"] = vis / f"all_tomograms_{method}{suffix}.csv"
            write_regions_csv(written[f"all{suffix}_csv"], csv)
            draw = V.plot_subsample(merged.n, v.max_plot_points, cfg.seed)
            shown = f"{len(draw)} of {merged.n} instances" if len(draw) < merged.n else f"{merged.n} instances"
            title = f"All tomograms, {method.upper()} of the embeddings ({shown})"
            if dims == 2:
                panels = [
                    {"values": merged.table["tomogram"].to_numpy()[draw], "title": "tomogram", "kind": "categorical", "label": "tomogram"},
                    {"values": log_area[draw], "title": "instance size", "kind": "continuous", "label": "log2 area (voxels)"},
                ]
                for name, clusters in clusterings.items():
                    counts = {int(c): int((clusters == c).sum()) for c in np.unique(clusters)}
                    panels.append({"values": clusters[draw], "title": f"{METHODS[name]} clusters", "kind": "categorical",
                                   "label": "cluster", "counts": counts})
                fig = V.projection_figure(coords[draw], panels, title, _axis_name(method))
            else:
                first = next(iter(clusterings), None)
                if first is not None:
                    fig = V.projection3d_figure(coords[draw], clusterings[first][draw], title, _axis_name(method),
                                                f"{METHODS[first]} cluster", True)
                else:
                    fig = V.projection3d_figure(coords[draw], log_area[draw], title, _axis_name(method), "log2 area (voxels)", False)
            written[f"all{suffix}_png"] = _save(fig, vis / f"all_tomograms_{method}{suffix}.png")
        written.update(_per_tomogram_projections(cfg, folders, merged, clusterings, log_area))

    # distance maps: by tomogram, and by each clustering present
    orderings = {"tomogram": merged.table["tomogram"].to_numpy()}
    orderings.update({f"{METHODS[m]} cluster": c for m, c in clusterings.items()})
    for group_name, groups in orderings.items():
        dist, _, g = V.distance_map(merged.embeddings, groups, v.distance, seed=cfg.seed)
        tag = "tomogram" if group_name == "tomogram" else group_name.split()[0].lower()
        fig = V.distance_map_figure(dist, g, f"Pairwise {v.distance} distances of the embeddings", v.distance, group_name)
        written[f"distance_map_{tag}"] = _save(fig, vis / f"distance_map_by_{tag}.png")
    log.info("wrote %d visualization files to %s", len(written), vis)
    return written


def _per_tomogram_projections(
    cfg: Config, folders: Folders, merged: Merged, clusterings: dict[str, np.ndarray], log_area: np.ndarray
) -> dict[str, Path]:
    from ..core import visualize as V

    v = cfg.visualization
    wanted = merged.stems
    if cfg.visualization_files:
        listed = sorted({cfg.stem(f) for f in cfg.visualization_files})
        missing = [s for s in listed if s not in merged.stems]
        if missing:
            log.warning("visualization_files not among the merged tomograms, skipped: %s", ", ".join(missing))
        wanted = [s for s in listed if s in merged.stems]
    written = {}
    dims_list = [2, 3] if v.umap_3d else [2]
    for stem in _progress(wanted, "per-tomogram projections"):
        i = merged.stems.index(stem)
        lo, hi = int(merged.offsets[i]), int(merged.offsets[i + 1])
        if hi - lo < 3:
            log.info("%s has %d instances: no projection", stem, hi - lo)
            continue
        table = merged.regions(i)
        table.insert(0, "tomogram", stem)
        table.insert(2, "row", np.arange(lo, hi))
        table["log_area"] = log_area[lo:hi]
        extra = _suffix_table(cfg, folders, stem, table["label"].to_numpy(np.int64))
        for col, values in extra.items():
            table[col] = values
        for name, clusters in clusterings.items():
            table[f"{name}_cluster"] = clusters[lo:hi]
        for dims in dims_list:
            coords, method = V.project(merged.embeddings[lo:hi], dims, v.distance, v.pca_components, seed=cfg.seed)
            suffix = "" if dims == 2 else "_3d"
            csv = table.copy()
            for j, axis in enumerate("xyz"[:dims]):
                csv[axis] = coords[:, j]
            write_regions_csv(folders.vis_dir / f"{stem}_{method}{suffix}.csv", csv)
            draw = V.plot_subsample(hi - lo, v.max_plot_points, cfg.seed)
            title = f"{stem}: {method.upper()} of {hi - lo} instances"
            if dims == 2:
                panels = [{"values": table["log_area"].to_numpy()[draw], "title": "instance size", "kind": "continuous",
                           "label": "log2 area (voxels)"}]
                for col in extra:
                    panels.append({"values": table[col].to_numpy()[draw], "title": col, "kind": "categorical", "label": col})
                for name in clusterings:
                    panels.append({"values": table[f"{name}_cluster"].to_numpy()[draw], "title": f"{METHODS[name]} clusters",
                                   "kind": "categorical", "label": "cluster"})
                fig = V.projection_figure(coords[draw], panels, title, _axis_name(method))
            else:
                fig = V.projection3d_figure(coords[draw], table["log_area"].to_numpy()[draw], title, _axis_name(method),
                                            "log2 area (voxels)", False)
            written[f"{stem}{suffix}_png"] = _save(fig, folders.vis_dir / f"{stem}_{method}{suffix}.png")
    return written


def _suffix_table(cfg: Config, folders: Folders, stem: str, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Extra colourings from ``<stem>_<visualization_suffix>`` (e.g. a clustered regions CSV's semantic_class)."""
    suffix = cfg.visualization.visualization_suffix
    if suffix in ("instance_regions.csv", ""):
        return {}
    for folder in (folders.input_dir, folders.output_dir):
        path = folder / f"{stem}_{suffix}"
        if path.is_file():
            df = read_regions_csv(path)
            cols = [c for c in df.columns if c in ("semantic_class", "semantic_class_2")]
            if not cols:
                return {}
            indexed = df.drop_duplicates("label").set_index("label")
            return {c: indexed[c].reindex(labels).to_numpy() for c in cols}
    log.info("no %s_%s: per-tomogram plots without it", stem, suffix)
    return {}


def _progress(items, desc: str):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="tomogram", disable=None, leave=False)
