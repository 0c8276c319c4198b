"""Training pairs from real atomic structures, mixed with the simulator's pairs (:func:`.pair_stream.simulated_pairs`).

A structure pair is one molecule (:class:`.structures.Molecule`, as :mod:`.structures_io` reads it)
rendered twice, independently: each view its own uniformly random orientation, its own map resolution
and voxel-size jitter, its own SNR, missing wedge (or none), optional CTF-like band-pass, mask growth,
intensity gain and offset, so the two views share the molecule and nothing else. Each view is cut by
``predict``'s own functions (:func:`.simulated_views.extract_view`), so the patch contract is the config's.

The instance mask of a view is the clean map's densest voxels, as many as the molecule's volume
(:func:`.structures.volume_voxels` at the view's voxel size) times a factor drawn per view
(``mask_volume_jitter``): a segmentation's outline, whose voxel count says the molecule's mass
within a few percent, as a real one does; size stays a signal.

The pair's class is ``STRUCTURE_CLASS_OFFSET`` + the molecule's index, apart from the simulator's
classes (envelope shapes 0.., assembly arrangements 100..), so the supervised-contrastive term
(``TrainingSettings.contrast_weight``, :func:`.train.class_contrastive_loss`) makes two molecules each
other's negatives. The classifier term (``class_weight``) names only the simulator's classes and leaves
structure pairs out.

:func:`effective_rank` measures collapse: exp of the entropy of an embedding batch's normalized
singular values (1: every embedding on one line; the embedding's dimension at most).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .assemblies import degrade_volume
from .pair_stream import PairMaker, simulated_pairs
from .simulated_views import SIMULATED_CLASS_END, ViewSettings, draw_degradation, extract_view, jitter_intensity
from .structures import MapSettings, Molecule, density_map, map_box, volume_voxels

STRUCTURE_CLASS_OFFSET = SIMULATED_CLASS_END  # pair class ids of structures: this + the molecule's index


@dataclass(frozen=True)
class StructureViewSettings:
    """How the views of a molecule are rendered (drawn per view); the degradation (SNR, wedge,
    mask growth, gain, offset) and the patch contract are the :class:`.simulated_views.ViewSettings`'."""

    voxel_size: float = 5.0  # Å
    voxel_jitter: float = 0.05  # each view's voxel size times a factor in [1/1.05, 1.05]
    resolution_range: tuple[float, float] = (15.0, 30.0)  # Å, uniform per view
    bandpass_probability: float = 0.5  # the assemblies' CTF-like band-pass, per view
    mask_volume_jitter: float = 0.1  # the mask's voxel count times a factor in [1/1.1, 1.1]
    structure_fraction: float = 0.5  # the share of pairs that are structures; the rest the simulator's


def structure_view(
    molecule: Molecule, rng: np.random.Generator, views: ViewSettings, s: StructureViewSettings
) -> tuple[np.ndarray, np.ndarray]:
    """One view of ``molecule`` as a small tomogram (float32) and its instance mask (int32, label 1)."""
    factor = float(np.exp(rng.uniform(-np.log1p(s.voxel_jitter), np.log1p(s.voxel_jitter))))
    settings = MapSettings(s.voxel_size * factor, float(rng.uniform(*s.resolution_range)))
    box = max(views.box, map_box(molecule, settings))
    box += (box + 1) % 2  # odd: the molecule's centre on a voxel
    rotation = Rotation.random(random_state=rng).as_matrix()
    clean = density_map(molecule, settings, rotation, box)
    grow = float(np.exp(rng.uniform(-np.log1p(s.mask_volume_jitter), np.log1p(s.mask_volume_jitter))))
    n_voxels = int(np.clip(round(volume_voxels(molecule, settings) * grow), 1, clean.size))
    level = np.partition(clean, clean.size - n_voxels, axis=None)[clean.size - n_voxels]
    mask = clean >= level
    snr, wedge, dilate = draw_degradation(rng, views)
    volume = degrade_volume(clean, rng, snr, wedge, bool(rng.random() < s.bandpass_probability))
    if dilate > 0:
        mask = ndimage.binary_dilation(mask, iterations=dilate)
    return jitter_intensity(volume, rng, views), mask.astype(np.int32)


def make_structure_pair(
    molecules: Sequence[Molecule], rng: np.random.Generator, views: ViewSettings, s: StructureViewSettings
) -> tuple[np.ndarray, np.ndarray, int]:
    """Two independent views of one molecule drawn uniformly from ``molecules``, and its class id."""
    index = int(rng.integers(len(molecules)))
    patches = [extract_view(*structure_view(molecules[index], rng, views, s), views) for _ in range(2)]
    return patches[0], patches[1], STRUCTURE_CLASS_OFFSET + index


class StructurePairs:
    """A :data:`.pair_stream.PairMaker`: with probability ``settings.structure_fraction`` a structure pair
    (:func:`make_structure_pair`), else the simulator's (``views``: envelope shapes and assemblies)."""

    def __init__(
        self,
        molecules: Sequence[Molecule],
        views: ViewSettings,
        settings: StructureViewSettings = StructureViewSettings(),
    ):
        if not molecules:
            raise ValueError("structure pairs need at least one molecule")
        self.molecules = list(molecules)
        self.views = views
        self.settings = settings
        self.simulated: PairMaker = simulated_pairs(views)

    def __call__(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        if rng.random() < self.settings.structure_fraction:
            return make_structure_pair(self.molecules, rng, self.views, self.settings)
        return self.simulated(rng)


def read_molecules(paths: Sequence[Path]) -> list[Molecule]:
    """The molecules of these structure files (:func:`.structures_io.read_structure`), in order."""
    from .structures_io import read_structure

    return [read_structure(Path(p)) for p in paths]


def effective_rank(embeddings: np.ndarray | torch.Tensor) -> float:
    """exp(entropy) of the centred embeddings' singular values normalized to sum 1 (Roy & Vetterli 2007)."""
    x = torch.as_tensor(np.asarray(embeddings, dtype=np.float64))
    x = x - x.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(x)
    if float(s.sum()) == 0.0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def monitor_batch(make: PairMaker, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed batch of ``n`` first views (N, 1, z, y, x) and their classes, drawn with a seed that
    training never uses: the held-out batch whose :func:`effective_rank` a run logs."""
    rng = np.random.default_rng([seed, 2**31 - 7])
    views, classes = [], []
    for _ in range(n):
        a, _, c = make(rng)
        views.append(a)
        classes.append(c)
    return np.stack(views)[:, None].astype(np.float32), np.asarray(classes)


def batch_embeddings(model, batch: np.ndarray, contrastive: bool = True) -> np.ndarray:
    """The embeddings ``predict`` would write for these patches (:meth:`.model.SimSiam.embed`, eval mode)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.embed(torch.from_numpy(batch), contrastive)
    model.train(was_training)
    return out.numpy()


STRUCTURE_LIST = Path(__file__).resolve().parent.parent / "data" / "structures.json"
STRUCTURE_ROLES = ("train", "heldout", "heldout_mass")  # the listing's roles (its "about" says what each is)


def listed_structures(role: str, sdists: Path, listing: Path = STRUCTURE_LIST) -> list[Path]:
    """The files of ``listing``'s structures of ``role`` (one of :data:`STRUCTURE_ROLES`: 'train',
    'heldout', or 'heldout_mass', the held-out molecules of about one mass) under ``sdists``, the
    folder where the packages' source distributions were unpacked (``<sdist_folder>/<path>``)."""
    import json

    if role not in STRUCTURE_ROLES:
        raise ValueError(f"no role {role!r} in the structure list (roles: {', '.join(STRUCTURE_ROLES)})")
    entries = [e for e in json.loads(Path(listing).read_text())["structures"] if e["role"] == role]
    paths = [Path(sdists) / e["sdist_folder"] / e["path"] for e in entries]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} listed structures are not under {sdists}, e.g. {missing[0]}")
    return paths
