"""Extraction against CryoSiam's whole-volume algorithm, and its rules one by one."""

import numpy as np
import pandas as pd
import pytest
from reference import reference_patches
from synthetic import blob_mask

from subtomo_embed.core.extract import (
    ball_dilation,
    cut_patches_into_file,
    fit_window,
    iter_patches,
    plan_extraction,
    size_filter,
)
from subtomo_embed.core.h5files import create_contiguous_dataset
from subtomo_embed.core.patch_contract import Normalization, PatchContract

SHAPE = (30, 41, 37)


@pytest.fixture(scope="module")
def volume_and_mask():
    mask = blob_mask(SHAPE, 25, seed=3, radius=(1, 7), spacing_labels=3)  # labels 3, 6, ... (gaps)
    image = np.random.default_rng(1).normal(0.5, 0.4, SHAPE).astype(np.float32)
    return image, mask


@pytest.mark.parametrize("masking", [0, 1, 2])
@pytest.mark.parametrize("expand", [0, 1, 3])
@pytest.mark.parametrize("patch_size", [(12, 12, 12), (7, 16, 9)])
def test_patches_equal_cryosiam(volume_and_mask, masking, expand, patch_size):
    image, mask = volume_and_mask
    norm = (0.1, 0.9, 0.2, 0.7)
    ref, ref_rows = reference_patches(image, mask, patch_size, masking, expand, norm, min_size=4)
    plan = plan_extraction(mask, expand, 4, None)
    ours = [p for _, p in iter_patches(image, plan, PatchContract(patch_size, masking, norm=Normalization(*norm)))]
    assert plan.table["label"].tolist() == [int(r["label"]) for r in ref_rows]
    assert len(ours) == len(ref) > 10
    for a, b in zip(ours, ref):
        assert a.shape == tuple(patch_size) and a.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=1e-6)
    for col in [
        "area",
        "bbox-0",
        "bbox-1",
        "bbox-2",
        "bbox-3",
        "bbox-4",
        "bbox-5",
        "centroid-0",
        "centroid-1",
        "centroid-2",
        "hull_area",
    ]:
        np.testing.assert_allclose(plan.table[col].to_numpy(float), [float(r[col]) for r in ref_rows], err_msg=col)


@pytest.mark.parametrize("slabs", [1, 2, 3, 7])
def test_label_boxes_on_slabs_equal_find_objects(slabs):
    from scipy.ndimage import find_objects

    from subtomo_embed.core.extract import _label_boxes

    mask = blob_mask((13, 20, 17), 12, seed=slabs, radius=(1, 6), spacing_labels=4)
    mask[2:11, 3, 4] = 1  # one label across every slab boundary
    mask[12, 19, 16] = 999  # a label alone in the last slab, far above the others
    expected = {i + 1: box for i, box in enumerate(find_objects(mask)) if box is not None}
    boxes = _label_boxes(mask, slabs)
    assert boxes == expected and list(boxes) == sorted(expected)


@pytest.mark.parametrize("radius", [1, 2, 3, 4, 6])
def test_ball_dilation_is_the_distance_threshold(radius):
    from scipy.ndimage import distance_transform_edt

    rng = np.random.default_rng(radius)
    for _ in range(20):
        voxels = rng.random(tuple(rng.integers(1, 18, 3))) < rng.uniform(0.001, 0.2)
        voxels.flat[rng.integers(voxels.size)] = True  # at least one, anywhere (edges included)
        np.testing.assert_array_equal(ball_dilation(voxels, radius), distance_transform_edt(~voxels) <= radius)


def test_large_particle_is_cropped_not_resized():
    mask = np.zeros((40, 40, 40), np.int32)
    mask[2:37, 5:30, 10:13] = 1  # 35 x 25 x 3 box
    image = np.arange(mask.size, dtype=np.float32).reshape(mask.shape) / mask.size
    plan = plan_extraction(mask, 0)
    ((_, patch),) = list(iter_patches(image, plan, PatchContract((16, 16, 16), 0)))
    # z: box 35 > 16 -> keep from 35//2 - 8 = 9, i.e. tomogram z 11..27; x: box 3 < 16 -> 6 zeros before
    np.testing.assert_array_equal(patch[:, :, 6:9], image[11:27, 5 + 12 - 8 : 5 + 12 + 8, 10:13])
    assert not patch[:, :, :6].any() and not patch[:, :, 9:].any()


def test_fit_window_matches_monai_rules():
    assert fit_window(5, 12) == (0, (12 - 5) // 2, 5)
    assert fit_window(6, 12) == (0, 3, 6)
    assert fit_window(12, 12) == (0, 0, 12)
    assert fit_window(21, 12) == (21 // 2 - 6, 0, 12)
    assert fit_window(20, 7) == (10 - 3, 0, 7)


def test_normalization_zero_outside_is_zero_in_normalized_units():
    norm = Normalization(min=-2, max=2, mean=0.5, std=0.25)
    x = np.array([-5, -2, 0, 2, 7], np.float32)
    np.testing.assert_allclose(norm.apply(x), (np.clip((x + 2) / 4, 0, 1) - 0.5) / 0.25)


@pytest.mark.parametrize("lo,hi,expected", [(None, None, 4), (0, 0, 4), (10, None, 3), (None, 50, 3), (10, 50, 2)])
def test_size_filter_bounds(lo, hi, expected):
    assert size_filter(np.array([5, 10, 50, 51]), lo, hi).sum() == expected


def test_area_filter_uses_grown_area():
    mask = np.zeros((20, 20, 20), np.int32)
    mask[10, 10, 10] = 1  # one voxel; grown by 2 it covers a ball of 33 voxels
    assert len(plan_extraction(mask, 0, min_size=10)) == 0
    plan = plan_extraction(mask, 2, min_size=10)
    assert len(plan) == 1 and plan.table["area"][0] == 33


def test_huge_sparse_label_ids():
    mask = np.zeros((10, 10, 10), np.int64)
    mask[1:3, 1:3, 1:3] = 2**40
    mask[5:9, 5:9, 5:9] = 7
    plan = plan_extraction(mask, 0)
    assert plan.table["label"].tolist() == [7, 2**40]
    assert plan.table["area"].tolist() == [64, 8]


def test_regions_table_beside_mask_gives_boxes(volume_and_mask):
    image, mask = volume_and_mask
    from skimage.measure import regionprops_table

    table = pd.DataFrame(regionprops_table(mask, properties=["label", "area", "bbox", "centroid"]))
    ref, ref_rows = reference_patches(image, mask, (10, 10, 10), 1, 2, regions={k: table[k].to_numpy() for k in table})
    plan = plan_extraction(mask, 2, None, None, regions_table=table)
    ours = [p for _, p in iter_patches(image, plan, PatchContract((10, 10, 10), 1))]
    assert plan.table["area"].tolist() == table["area"].tolist()  # areas from the table, as CryoSiam
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_nan_in_a_box_is_an_input_error():
    from subtomo_embed.core.errors import InputDataError

    mask = np.zeros((10, 10, 10), np.int32)
    mask[2:5, 2:5, 2:5] = 1
    image = np.zeros(mask.shape, np.float32)
    image[3, 3, 3] = np.nan
    plan = plan_extraction(mask, 0)
    with pytest.raises(InputDataError, match="NaN"):
        list(iter_patches(image, plan, PatchContract((8, 8, 8), 0), "t.mrc"))


@pytest.mark.parametrize("workers", [1, 2])
def test_patches_cut_straight_into_the_file_equal_cryosiam(volume_and_mask, tmp_path, workers):
    """extract's path: regions grown and patches cut on forked workers (2) or in-process (1), each
    patch written by the worker straight into an HDF5 dataset allocated up front."""
    import h5py

    image, mask = volume_and_mask
    norm, patch_size = (0.1, 0.9, 0.2, 0.7), (9, 14, 11)
    ref, ref_rows = reference_patches(image, mask, patch_size, 1, 2, norm, min_size=4)
    plan = plan_extraction(mask, 2, 4, None, processes=workers > 1)
    path = tmp_path / "patches.h5"
    with h5py.File(path, "w") as f:
        offset = create_contiguous_dataset(f, "patches", (len(plan), *patch_size), np.float32)
        f.flush()
        cut_patches_into_file(
            image, plan, PatchContract(patch_size, 1, norm=Normalization(*norm)), path, offset, workers=workers
        )
    with h5py.File(path, "r") as f:
        ours = f["patches"][()]
    assert plan.table["label"].tolist() == [int(r["label"]) for r in ref_rows]
    assert ours.shape == (len(ref), *patch_size) and len(ref) > 10
    np.testing.assert_allclose(ours, np.stack(ref), atol=1e-6)
    np.testing.assert_array_equal(plan.table["hull_area"].to_numpy(), [int(r["hull_area"]) for r in ref_rows])
