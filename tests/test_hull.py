"""Our line-by-line convex hull equals skimage's convex_hull_image voxel for voxel."""

import warnings

import numpy as np
import pytest
from skimage.morphology import convex_hull_image
from synthetic import blob_mask

from subtomo_embed.core.hull import convex_hull


def _skimage(v):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convex_hull_image(v)


@pytest.mark.parametrize("seed", range(40))
def test_random_regions(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(2, 24, 3))
    if seed % 2:
        v = blob_mask(shape, 2, seed=seed, radius=(1, 10)) > 0
    else:
        v = rng.random(shape) < rng.uniform(0.002, 0.2)
    np.testing.assert_array_equal(convex_hull(v), _skimage(v))


@pytest.mark.parametrize("case", ["empty", "single", "line", "flat", "two_planes"])
def test_degenerate_regions_as_skimage(case):
    v = np.zeros((6, 7, 8), bool)
    if case == "single":
        v[2, 3, 4] = True
    elif case == "line":
        v[1:5, 3, 4] = True
    elif case == "flat":
        v[3, 1:6, 2:7] = True
    elif case == "two_planes":
        v[2, 1:6, 2:7] = v[3, 1:4, 2:5] = True
    np.testing.assert_array_equal(convex_hull(v), _skimage(v))
