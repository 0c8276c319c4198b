"""The patch contract: how a patch is cut from a tomogram, and so what the network was trained on.

One frozen value, :class:`PatchContract`, built from the validated config by :func:`patch_contract`
and handed to everything that cuts, compares or records patches: extraction (``predict``,
``extract``, ``predict-centers``: :mod:`.extract`), the training views (simulated:
:mod:`.simulated_views`; real particles: :mod:`.real_views`), the model's input check
(:func:`.model.check_input_contract`) and the fingerprints of the per-tomogram outputs.

What it holds (docs/model.md): ``patch_size``; ``masking_type`` (0 none, 1 the region's convex hull,
2 the region); ``expand_labels`` (voxels each instance grows by before it is cut); the normalization
of ``parameters.data`` (``clip((x - min) / (max - min), 0, 1)``, then ``(x - mean) / std``); and
``embedding_rotations`` (the rotation group of the cube an embedding is averaged over).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .config import Config


@dataclass(frozen=True)
class Normalization:
    min: float = 0.0
    max: float = 1.0
    mean: float = 0.0
    std: float = 1.0

    def apply(self, x: np.ndarray) -> np.ndarray:
        """CryoSiam's ``ScaleIntensityRanged(clip=True)`` then ``NormalizeIntensityd``, in float32."""
        x = np.asarray(x, dtype=np.float32)
        scaled = (x - np.float32(self.min)) / np.float32(self.max - self.min)
        np.clip(scaled, 0.0, 1.0, out=scaled)
        return (scaled - np.float32(self.mean)) / np.float32(self.std)


@dataclass(frozen=True)
class PatchContract:
    """What a patch is: its size, masking, label growth and normalization, and the embedding's rotations."""

    patch_size: tuple[int, int, int] = (32, 32, 32)
    masking_type: int = 1
    expand_labels: int = 0
    norm: Normalization = field(default_factory=Normalization)
    embedding_rotations: int = 1

    def patch_record(self) -> dict[str, Any]:
        """What shapes a cut patch, as plain data: part of the fingerprint of every per-tomogram output
        and of ``<stem>_patches.h5``, and the training state's record of its views."""
        n = self.norm
        return {
            "masking_type": self.masking_type,
            "expand_labels": self.expand_labels,
            "patch_size": list(self.patch_size),
            "normalization": [n.min, n.max, n.mean, n.std],
        }

    def input_values(self, masking: bool = True) -> dict[str, Any]:
        """What the network is fed, keyed as a checkpoint's stored config keys it (``masking``: whether
        patches are masked by ``masking_type``; picks' boxes are not)."""
        n = self.norm
        values: dict[str, Any] = {
            "parameters.data.patch_size": list(self.patch_size),
            "parameters.data.min": float(n.min),
            "parameters.data.max": float(n.max),
            "parameters.data.mean": float(n.mean),
            "parameters.data.std": float(n.std),
        }
        if masking:
            values["masking_type"] = self.masking_type
        return values


def patch_contract(cfg: Config) -> PatchContract:
    """The config's patch contract (``parameters.data``, ``masking_type``, ``expand_labels``,
    ``embedding_rotations``); the config validated these."""
    d = cfg.parameters.data
    z, y, x = (int(s) for s in d.patch_size)
    return PatchContract(
        (z, y, x),
        cfg.masking_type,
        cfg.expand_labels,
        Normalization(d.min, d.max, d.mean, d.std),
        cfg.embedding_rotations,
    )


def views_record(views: Any) -> dict[str, Any]:
    """Training views' settings (a dataclass holding a ``contract`` and its ranges) as the checkpoint's
    training state records them, plain data: the contract's :meth:`~PatchContract.patch_record` keys
    beside the ranges, in one flat mapping (tuples as lists), as earlier checkpoints recorded them
    (theirs lack ``normalization``, which their stored config holds)."""
    ranges = {f.name: getattr(views, f.name) for f in fields(views) if f.name != "contract"}
    record = views.contract.patch_record() | ranges
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in record.items()}
