"""An independent re-statement of CryoSiam's per-tomogram algorithm, used as the tests' oracle.

Whole-volume ``expand_labels``, ``regionprops_table``, one whole-volume comparison per instance,
MONAI's ScaleIntensityRange / NormalizeIntensity / SpatialPad / CenterSpatialCrop — exactly the
steps of ``cryosiam.apps.simsiam_prediction.extract_patches_embeddings``, none of our code.
"""

from __future__ import annotations

import numpy as np


def reference_patches(
    image, mask, patch_size, masking, expand, norm=(0, 1, 0, 1), min_size=None, max_size=None, regions=None
):
    from monai.transforms import CenterSpatialCrop, NormalizeIntensity, ScaleIntensityRange, SpatialPad
    from skimage.measure import regionprops_table
    from skimage.morphology import convex_hull_image
    from skimage.segmentation import expand_labels

    lo, hi, mean, std = norm
    img = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0, b_max=1, clip=True)(np.asarray(image, np.float32)[None])
    img = np.asarray(NormalizeIntensity(subtrahend=mean, divisor=std)(img))[0]
    grown = expand_labels(mask, distance=expand)
    if regions is None:
        regions = regionprops_table(grown, properties=["label", "area", "bbox", "centroid"])
    patches, rows = [], []
    for i in range(len(regions["label"])):
        area = regions["area"][i]
        if min_size and area < min_size:
            continue
        if max_size and area > max_size:
            continue
        sl = tuple(slice(int(regions[f"bbox-{k}"][i]), int(regions[f"bbox-{k + 3}"][i])) for k in range(3))
        sub = (grown == regions["label"][i])[sl]
        patch = img[sl].copy()
        hull = 0
        if masking == 1:
            h = convex_hull_image(sub)
            patch[h == 0] = 0
            hull = int(h.sum())
        elif masking == 2:
            patch[sub == 0] = 0
        patch = np.asarray(CenterSpatialCrop(roi_size=patch_size)(SpatialPad(patch_size)(patch[None])))[0]
        patches.append(patch)
        rows.append({**{k: regions[k][i] for k in regions}, "hull_area": hull})
    return patches, rows


def reference_embeddings(model, patches, contrastive=True):
    import torch

    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(np.stack(patches)[:, None].astype(np.float32))
        z = model.encoder(x)
        if not contrastive:
            return z.numpy()
        p = model.predictor(z)
        return torch.nn.functional.normalize(p, dim=1).numpy()
