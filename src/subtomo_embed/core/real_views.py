"""Views of real particles for self-supervised fine-tuning on the user's own tomograms.

A :class:`ParticleSource` is one instance as ``predict`` plans it (its grown region from
:func:`~subtomo_embed.core.extract.plan_extraction`) in its tomogram. A view of it is made in a
cube around the region's box centre, big enough for the region under any rotation:

1. the cube of the tomogram, rotated about the centre (trilinear interpolation) and the region's
   voxels rotated with it (nearest neighbour);
2. the rotated mask dilated by 0..``mask_dilation`` voxels (:func:`~.extract.ball_dilation`);
3. white noise with a standard deviation of ``noise`` times the cube's, an extra missing wedge
   (``±wedge`` degrees about the view's y axis) with probability ``wedge_probability``;
4. an intensity gain about the cube's mean and an offset in units of its standard deviation;
5. the patch cut by :func:`~.extract.plan_extraction` and :func:`~.extract.cut_patch` with the
   config's patch contract (:class:`~.patch_contract.PatchContract`: ``patch_size``, ``masking_type``
   and normalization): the function calls of ``predict`` (``expand_labels`` was applied when the
   region was planned, as in ``predict``).

A :class:`PickSource` is one particle pick (``predict-centers``' box around it): its view is the
same steps on a cube around the box, the sphere of ``centers.mask_radius`` (grown by 0..
``mask_dilation``) standing for the mask, and the patch cut by
:func:`~.extract.cut_centered_patch`, ``predict-centers``' function.

With every augmentation off (:meth:`RealViewSettings.identity`) a view is exactly the patch
``predict`` (``predict-centers``) cuts for that instance (pick; of a box inside the tomogram).
Units are the tomogram's own (noise and offset are relative to
the cube's spread), so the same settings serve raw and denoised tomograms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .extract import Region, ball_dilation, cut_centered_patch, cut_patch, plan_extraction
from .patch_contract import PatchContract
from .simulate import wedge_filter


@dataclass(frozen=True)
class RealViewSettings:
    """How the views of a real particle are made: the config's patch contract, and the augmentation
    ranges, each drawn independently per view."""

    contract: PatchContract = field(default_factory=PatchContract)
    rotate: bool = True  # a uniformly random rotation per view
    noise_range: tuple[float, float] = (0.0, 0.5)  # added noise std / the cube's std, uniform
    wedge_probability: float = 0.5
    wedge_range: tuple[float, float] = (45.0, 70.0)  # degrees
    mask_dilation: int = 1  # the rotated mask dilated by 0..this voxels
    gain_range: tuple[float, float] = (0.8, 1.25)  # log-uniform, about the cube's mean
    offset_range: tuple[float, float] = (-0.2, 0.2)  # times the cube's std

    def identity(self) -> RealViewSettings:
        """The same patch contract with no augmentation: a view is ``predict``'s patch."""
        return replace(
            self,
            rotate=False,
            noise_range=(0.0, 0.0),
            wedge_probability=0.0,
            mask_dilation=0,
            gain_range=(1.0, 1.0),
            offset_range=(0.0, 0.0),
        )


@dataclass
class ParticleSource:
    """One planned instance of a tomogram (the volume is usually a read-only memory map)."""

    volume: np.ndarray
    region: Region
    name: str  # "<stem> label <n>", for messages


@dataclass
class PickSource:
    """One particle pick: ``predict-centers``' box of ``size`` voxels from ``start``, the pick at ``position``."""

    volume: np.ndarray
    start: np.ndarray  # the box's first voxel (z, y, x), tomogram voxels
    position: np.ndarray  # the pick (z, y, x), tomogram voxels
    size: int
    mask_radius: float | None
    name: str  # "<stem> pick <label>", for messages


def _cube(volume: np.ndarray, origin: tuple[int, ...], size: int) -> np.ndarray:
    """``volume[origin : origin + size]`` per axis; outside the volume filled with the inside's mean."""
    read = tuple(slice(max(o, 0), min(o + size, n)) for o, n in zip(origin, volume.shape))
    inside = np.asarray(volume[read], dtype=np.float32)
    if inside.shape == (size,) * 3:
        return inside.copy()
    out = np.full((size,) * 3, inside.mean() if inside.size else 0.0, dtype=np.float32)
    out[tuple(slice(r.start - o, r.stop - o) for r, o in zip(read, origin))] = inside
    return out


def view_cube(
    source: ParticleSource, margin: int, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """(cube of the tomogram, the region's voxels in it, the cube's origin): a cube around the
    region's box centre, wide enough for the region under any rotation plus ``margin`` voxels, or
    at most ``limit`` voxels wide (the region's voxels outside it dropped)."""
    box = source.region.box
    extents = [s.stop - s.start for s in box]
    size = int(math.ceil(math.sqrt(sum(e * e for e in extents)))) + 2 * margin + 2
    if limit is not None:
        size = min(size, limit)
    origin = tuple(s.start + e // 2 - size // 2 for s, e in zip(box, extents))
    cube = _cube(source.volume, origin, size)
    mask = np.zeros(cube.shape, dtype=bool)
    # the region's box and the cube, both in tomogram coordinates: their overlap
    inner = [(max(s.start, o), min(s.stop, o + size)) for s, o in zip(box, origin)]
    mask[tuple(slice(a - o, b - o) for (a, b), o in zip(inner, origin))] = source.region.voxels[
        tuple(slice(a - s.start, b - s.start) for (a, b), s in zip(inner, box))
    ]
    return cube, mask, origin


def rotate_cube(cube: np.ndarray, mask: np.ndarray, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both rotated by ``rotation`` (3×3) about the cube's centre: the volume trilinearly (the
    cube's mean outside), the mask by nearest neighbour."""
    from scipy import ndimage

    offset = _centre_offset(cube.shape, rotation)
    turned = ndimage.affine_transform(mask.astype(np.uint8), rotation, offset, order=0, mode="constant", cval=0)
    return rotate_volume(cube, rotation), turned.astype(bool)


def rotate_volume(cube: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """``cube`` rotated by ``rotation`` (3×3) about its centre, trilinearly (the cube's mean outside)."""
    from scipy import ndimage

    offset = _centre_offset(cube.shape, rotation)
    volume = ndimage.affine_transform(cube, rotation, offset, order=1, mode="constant", cval=float(cube.mean()))
    return volume.astype(np.float32)


def _centre_offset(shape: tuple[int, ...], rotation: np.ndarray) -> np.ndarray:
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
    return centre - rotation @ centre  # output voxel o reads input rotation @ o + offset


def random_dilation(rng: np.random.Generator, most: int) -> int:
    """A view's mask growth: 0..``most`` voxels, uniform (no draw when ``most`` is 0)."""
    return int(rng.integers(0, most + 1)) if most > 0 else 0


def augment_intensity(cube: np.ndarray, rng: np.random.Generator, s: RealViewSettings) -> np.ndarray:
    """Noise, extra missing wedge, gain and offset, all in units of the cube's own spread."""
    mean, std = float(cube.mean()), float(cube.std()) or 1.0
    out = cube
    noise = float(rng.uniform(*s.noise_range))
    if noise > 0:
        out = out + rng.standard_normal(out.shape, dtype=np.float32) * np.float32(noise * std)
    if rng.random() < s.wedge_probability:
        f = np.fft.rfftn(out - np.float32(mean))
        f *= wedge_filter(out.shape, float(rng.uniform(*s.wedge_range)))
        out = np.fft.irfftn(f, s=out.shape, axes=(0, 1, 2)).astype(np.float32) + np.float32(mean)
    gain = float(np.exp(rng.uniform(np.log(s.gain_range[0]), np.log(s.gain_range[1]))))
    offset = float(rng.uniform(*s.offset_range)) * std
    if gain != 1.0 or offset != 0.0:
        out = (out - np.float32(mean)) * np.float32(gain) + np.float32(mean + offset)
    return np.asarray(out, dtype=np.float32)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.random(random_state=rng).as_matrix()


def cut_view(cube: np.ndarray, mask: np.ndarray, s: RealViewSettings, name: str) -> np.ndarray:
    """The patch ``predict`` cuts for the one instance of ``mask`` in ``cube`` (its function calls)."""
    plan = plan_extraction(mask.astype(np.uint8))
    if len(plan) == 0:  # a region cannot vanish under rotation, but keep the stream going
        return np.zeros(s.contract.patch_size, np.float32)
    patch, _ = cut_patch(cube, plan.regions[0], s.contract, name)
    return patch


def make_real_view(
    source: ParticleSource, rng: np.random.Generator, s: RealViewSettings, rotation: np.ndarray | None = None
) -> np.ndarray:
    """One augmented view of a real particle as a patch of the contract's ``patch_size`` (see the module doc).

    ``rotation`` (3×3) replaces the random one (``s.rotate`` false and no ``rotation``: none). A
    rotated view of an instance larger than the patch is made in a cube of the patch's diagonal
    (the patch shows the instance's centre, as ``predict``'s does), so a large instance costs no more.
    """
    if rotation is None and s.rotate:
        rotation = random_rotation(rng)
    limit = None
    if rotation is not None:
        limit = int(math.ceil(math.sqrt(sum(p * p for p in s.contract.patch_size)))) + 2 * s.mask_dilation + 2
    cube, mask, _ = view_cube(source, s.mask_dilation, limit)
    if rotation is not None:
        cube, mask = rotate_cube(cube, mask, np.asarray(rotation, dtype=np.float64))
    dilate = random_dilation(rng, s.mask_dilation)
    if dilate:
        mask = ball_dilation(mask, dilate)
    return cut_view(augment_intensity(cube, rng, s), mask, s, source.name)


def make_pick_view(
    source: PickSource, rng: np.random.Generator, s: RealViewSettings, rotation: np.ndarray | None = None
) -> np.ndarray:
    """One augmented view of a picked particle: the steps of :func:`make_real_view` on a cube around
    its box (wide enough for the box under any rotation), the pick's sphere mask grown by
    0..``mask_dilation`` voxels, cut by ``predict-centers``' :func:`~.extract.cut_centered_patch`."""
    if rotation is None and s.rotate:
        rotation = random_rotation(rng)
    size = source.size
    width = size if rotation is None else int(math.ceil(math.sqrt(3) * size)) + 2
    origin = np.asarray(source.start) + size // 2 - width // 2
    cube = _cube(source.volume, tuple(int(o) for o in origin), width)
    if rotation is not None:
        cube = rotate_volume(cube, np.asarray(rotation, dtype=np.float64))
    radius = source.mask_radius
    dilate = random_dilation(rng, s.mask_dilation)
    if radius is not None:
        radius += dilate
    cube = augment_intensity(cube, rng, s)
    start = np.asarray(source.start) - origin
    contract = s.contract
    return cut_centered_patch(
        cube, start, size, contract.patch_size, contract.norm, np.asarray(source.position) - origin, radius, source.name
    )


def make_real_pair(
    sources: list[ParticleSource] | list[PickSource], rng: np.random.Generator, s: RealViewSettings
) -> tuple[np.ndarray, np.ndarray, int]:
    """Two independent views of one particle (instance or pick) drawn at random; the third item is its index."""
    i = int(rng.integers(len(sources)))
    source = sources[i]
    if isinstance(source, PickSource):
        return make_pick_view(source, rng, s), make_pick_view(source, rng, s), i
    return make_real_view(source, rng, s), make_real_view(source, rng, s), i
