"""Picks: every coordinate convention round-trips; embeddings from centres equal those from masks;
RELION 5 picks come back from clustering with every original column and value."""

import json

import h5py
import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from inprocess import run_cli
from synthetic import make_checkpoint, write_config, write_h5_mask

from subtomo_embed.core import picks as P
from subtomo_embed.core.extract import Normalization, cut_centered_patch, cut_patch, plan_extraction
from subtomo_embed.core.patch_contract import PatchContract

SHAPE = (37, 50, 43)  # odd, all different
VOXEL = (4.2, 3.1, 2.7)  # z, y, x Å: anisotropic


def run(args, env, ok=True):
    """The command in this process (``inprocess.run_cli``): its own process is not the point here."""
    proc = run_cli(args)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def write_tomogram(path, volume, voxel=VOXEL):
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(volume.astype(np.float32))
        mrc.voxel_size = (voxel[2], voxel[1], voxel[0])  # mrcfile takes x, y, z
    return path


def cube_mask(shape, size, n, seed=0, margin=1):
    """``n`` non-touching cubes of edge ``size`` (labels 1..n) and their first voxels."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, np.int32)
    starts = []
    while len(starts) < n:
        s = np.array([rng.integers(margin, d - size - margin + 1) for d in shape])
        box = tuple(slice(a - 1, a + size + 1) for a in s)
        if mask[box].any():
            continue
        mask[tuple(slice(a, a + size) for a in s)] = len(starts) + 1
        starts.append(s)
    return mask, np.array(starts)


# --------------------------------------------------------------------------------------------
# conventions


def mask_centroids(seed=3):
    mask, _ = cube_mask(SHAPE, 5, 6, seed)
    mask[mask == 2] = 0  # and some irregular ones: centroids off the voxel grid
    mask[10:13, 20:22, 5:9] = 7
    mask[30:33, 40:41, 35:41] = 8
    return plan_extraction(mask).table


CONVENTIONS = {
    "relion4 voxels": (P.RELION, "voxels", "corner", None),
    "relion5 centred angstrom": (P.RELION5, "angstrom", "centered", None),
    "csv x,y,z": (P.PLAIN, "voxels", "corner", None),
    "cryosiam centroids": (P.CRYOSIAM, "voxels", "corner", None),
    "copick angstrom": (P.COPICK, "angstrom", "corner", None),
    "unbinned voxels (4x finer)": (P.RELION, "voxels", "corner", tuple(v / 4 for v in VOXEL)),
    "centred voxels": (P.PLAIN, "voxels", "centered", None),
}


@pytest.mark.parametrize("name", list(CONVENTIONS))
def test_picks_written_in_each_convention_come_back_to_the_same_voxels(name):
    columns, units, origin, picks_voxel = CONVENTIONS[name]
    table = mask_centroids()
    voxels = table[["centroid-0", "centroid-1", "centroid-2"]].to_numpy()
    geometry = P.Geometry(SHAPE, VOXEL, picks_voxel)
    convention = P.Convention(columns, units, origin)
    written = pd.DataFrame(P.from_voxels(voxels, convention, geometry), columns=list(columns))
    # an independent statement of the rule, per axis, for one convention
    if name == "relion5 centred angstrom":
        np.testing.assert_allclose(written["rlnCenteredCoordinateXAngst"], (voxels[:, 2] - SHAPE[2] / 2) * VOXEL[2])
    if name == "unbinned voxels (4x finer)":
        np.testing.assert_allclose(written["rlnCoordinateZ"], voxels[:, 0] * 4)
    detected = P.detect_convention(
        written,
        "auto" if origin == "corner" or units == "angstrom" else units,
        "auto" if name != "centred voxels" else "centered",
    )
    assert detected == convention
    np.testing.assert_allclose(P.to_voxels(written, detected, geometry), voxels, rtol=0, atol=1e-9)


def test_tomogram_names_in_picks_match_stems():
    assert P.tomogram_name("tomograms/TS_01/TS_01.mrc:mrc", ".mrc") == "TS_01"
    assert P.tomogram_name("TS_01", ".mrc") == "TS_01"
    assert P.tomogram_name("TS_01.rec", ".mrc") == "TS_01"


def test_a_box_starts_so_the_pick_is_its_centre_voxel():
    assert P.box_start(np.array([10.0, 10.49, 9.5]), 9).tolist() == [6, 6, 6]
    assert P.box_start(np.array([10.0, 10.0, 10.0]), 8).tolist() == [6, 6, 6]  # voxel 10 is the 5th of 8


def test_centred_box_inside_equals_masking_type_0_and_pads_with_zero_outside():
    rng = np.random.default_rng(0)
    volume = rng.normal(size=SHAPE).astype(np.float32)
    mask, starts = cube_mask(SHAPE, 7, 4, seed=1)
    plan = plan_extraction(mask)
    norm = Normalization(-2, 2, 0.5, 0.25)
    for region, start in zip(plan.regions, starts):
        expected, _ = cut_patch(volume, region, PatchContract((12, 12, 12), 0, norm=norm))
        got = cut_centered_patch(volume, start, 7, (12, 12, 12), norm)
        np.testing.assert_array_equal(got, expected)
    # a box hanging 3 voxels off the corner: those voxels are 0, the rest the normalized tomogram
    got = cut_centered_patch(volume, np.array([-3, -3, -3]), 8, (8, 8, 8), norm)
    assert np.all(got[:3] == 0) and np.all(got[:, :3] == 0) and np.all(got[:, :, :3] == 0)
    np.testing.assert_array_equal(got[3:, 3:, 3:], norm.apply(volume[:5, :5, :5]))
    # the sphere mask keeps exactly the voxels within the radius of the pick
    centre = np.array([18.0, 25.0, 21.0])
    got = cut_centered_patch(volume, P.box_start(centre, 9), 9, (9, 9, 9), Normalization(-10, 10, 0, 1), centre, 3.0)
    zz, yy, xx = np.mgrid[-4:5, -4:5, -4:5]
    assert np.array_equal(got != 0, zz**2 + yy**2 + xx**2 <= 9)


# --------------------------------------------------------------------------------------------
# the command


def cube_dataset(root, size=7, n=6, voxel=VOXEL):
    rng = np.random.default_rng(5)
    data, masks = root / "data", root / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    truth = {}
    for t, stem in enumerate(["TS_01", "TS_02"]):
        mask, starts = cube_mask(SHAPE, size, n, seed=10 + t)
        volume = rng.normal(0.5, 0.2, SHAPE) + 0.4 * (mask > 0)
        write_tomogram(data / f"{stem}.mrc", volume, voxel)
        write_h5_mask(masks / f"{stem}_instance_preds.h5", mask)
        truth[stem] = starts + (size - 1) / 2  # the cubes' centres, voxels z, y, x
    return data, masks, truth


def relion5_star(path, truth, voxel=VOXEL):
    rows = []
    for stem, centres in truth.items():
        for i, c in enumerate(centres):
            rows.append(
                {
                    "rlnTomoName": stem,
                    "rlnCenteredCoordinateXAngst": (c[2] - SHAPE[2] / 2) * voxel[2],
                    "rlnCenteredCoordinateYAngst": (c[1] - SHAPE[1] / 2) * voxel[1],
                    "rlnCenteredCoordinateZAngst": (c[0] - SHAPE[0] / 2) * voxel[0],
                    "rlnAngleRot": 10.0 * i,
                    "rlnAngleTilt": 90.0,
                    "rlnAnglePsi": -33.123456,
                    "rlnOpticsGroup": 1,
                    "rlnTomoParticleName": f"{stem}/{i + 1}",
                }
            )
    starfile.write({"particles": pd.DataFrame(rows)}, path, overwrite=True)
    return path


@pytest.fixture
def picks_setup(tmp_path):
    data, masks, truth = cube_dataset(tmp_path)
    ckpt = make_checkpoint(tmp_path / "model.ckpt")
    star = relion5_star(tmp_path / "particles.star", truth)
    common = dict(
        data_folder=data,
        instances_mask_folder=masks,
        trained_model=ckpt,
        masking_type=0,
        expand_labels=0,
        min_particle_size=None,
    )
    return {
        "root": tmp_path,
        "data": data,
        "masks": masks,
        "truth": truth,
        "ckpt": ckpt,
        "star": star,
        "common": common,
    }


def read_embeddings(folder, stem):
    with h5py.File(folder / f"{stem}_embeds.h5") as f:
        return f["embeddings"][()].T


def test_embeddings_from_centres_equal_those_from_masks(picks_setup, cli_env):
    s = picks_setup
    masks_cfg = write_config(s["root"] / "m.yaml", prediction_folder=s["root"] / "from_masks", **s["common"])
    picks_cfg = write_config(
        s["root"] / "p.yaml",
        prediction_folder=s["root"] / "from_picks",
        centers_file=s["star"],
        centers_patch_size=7,
        **s["common"],
    )
    run(["subtomo-embed", "predict", "--config_file", str(masks_cfg)], cli_env)
    proc = run(["subtomo-embed", "simsiam_embeddings_from_centers_predict", "--config_file", str(picks_cfg)], cli_env)
    assert "in angstrom, centered origin" in proc.stderr
    for stem in ["TS_01", "TS_02"]:
        from_masks = read_embeddings(s["root"] / "from_masks", stem)
        from_picks = read_embeddings(s["root"] / "from_picks", stem)
        assert from_picks.shape == from_masks.shape == (6, 16)
        np.testing.assert_allclose(from_picks, from_masks, rtol=1e-5, atol=1e-6)
        regions = pd.read_csv(s["root"] / "from_picks" / f"{stem}_instance_regions.csv")
        # STAR keeps 6 decimals of Å and MRC headers a float32 voxel size: a millionth of a voxel
        np.testing.assert_allclose(
            regions[["centroid-0", "centroid-1", "centroid-2"]].to_numpy(), s["truth"][stem], atol=1e-5
        )
        assert (regions["area"] == 7**3).all()
        assert "pick:rlnAngleRot" in regions.columns
    # predict's own STAR names the tomogram and gives RELION 5 coordinates (Å from the centre)
    star = starfile.read(s["root"] / "from_masks" / "TS_02_instance_regions.star")["particles"]
    assert (star["rlnTomoName"] == "TS_02").all()
    for axis, name in enumerate("ZYX"):
        np.testing.assert_allclose(
            star[f"rlnCenteredCoordinate{name}Angst"],
            (s["truth"]["TS_02"][:, axis] - SHAPE[axis] / 2) * VOXEL[axis],
            atol=1e-4,
        )
    # the running pick id goes on across tomograms
    with h5py.File(s["root"] / "from_picks" / "TS_02_instance_labels.h5") as f:
        assert f["labels"][()].tolist() == list(range(7, 13))


def test_relion5_picks_come_back_from_clustering_with_every_column(picks_setup, cli_env):
    s = picks_setup
    cfg = write_config(
        s["root"] / "p.yaml",
        prediction_folder=s["root"] / "pred",
        centers_file=s["star"],
        centers_patch_size=7,
        **s["common"],
    )
    run(["subtomo-embed", "predict-centers", "--config_file", str(cfg)], cli_env)
    run(["subtomo-embed", "kmeans", "--config_file", str(cfg)], cli_env)
    original = starfile.read(s["star"])
    text = s["star"].read_text()
    per_tomogram = []
    for stem in ["TS_01", "TS_02"]:
        clustered = starfile.read(s["root"] / "pred" / f"{stem}_instance_regions_kmeans_clustered.star")["particles"]
        assert list(clustered.columns) == [*original.columns, "rlnLabel", "rlnClass", "rlnClassNumber"]
        per_tomogram.append(clustered)
    both = pd.concat(per_tomogram, ignore_index=True)
    pd.testing.assert_frame_equal(both[list(original.columns)], original, check_exact=True)
    assert both["rlnClass"].between(0, 2).all()
    # every value is written back with the text it came with (RELION reads the numbers it wrote)
    assert "-33.123456" in text and "-33.123456" in (s["root"] / "pred" / "kmeans_particles.star").read_text()
    particles = starfile.read(s["root"] / "pred" / "kmeans_particles.star")["particles"]
    pd.testing.assert_frame_equal(particles[list(original.columns)], original, check_exact=True)


def test_csv_and_copick_picks_one_file_per_tomogram_and_the_border(picks_setup, cli_env, tmp_path):
    s = picks_setup
    folder = tmp_path / "picks"
    folder.mkdir()
    c1, c2 = s["truth"]["TS_01"], s["truth"]["TS_02"]
    extra = np.array([[1.0, 1.0, 1.0], [-5.0, 10.0, 10.0]])  # box off the edge; centre outside
    pd.DataFrame(np.vstack([c1, extra])[:, ::-1], columns=["x", "y", "z"]).to_csv(folder / "TS_01.csv", index=False)
    points = [
        {"location": {"x": c[2] * VOXEL[2], "y": c[1] * VOXEL[1], "z": c[0] * VOXEL[0]}, "instance_id": 0} for c in c2
    ]
    (folder / "TS_02_ribosome.json").write_text(json.dumps({"run_name": "TS_02", "unit": "angstrom", "points": points}))
    for border, expected in (("pad", 7), ("skip", 6)):
        out = tmp_path / f"out_{border}"
        cfg = write_config(
            tmp_path / f"{border}.yaml",
            prediction_folder=out,
            centers_file=folder,
            centers_patch_size=7,
            centers={"border": border, "mask_radius": 3.5},
            **s["common"],
        )
        proc = run(["subtomo-embed", "predict-centers", "--config_file", str(cfg)], cli_env)
        assert "1 outside the tomogram" in proc.stderr
        assert len(pd.read_csv(out / "TS_01_instance_regions.csv")) == expected
        regions = pd.read_csv(out / "TS_02_instance_regions.csv")
        np.testing.assert_allclose(regions[["centroid-0", "centroid-1", "centroid-2"]].to_numpy(), c2, atol=1e-5)


def test_bad_picks_are_clear_errors(picks_setup, cli_env, tmp_path):
    s = picks_setup
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    for picks, size, message in ((bad, 7, "no coordinate columns"), (s["star"], None, "centers_patch_size")):
        out = tmp_path / "out"
        cfg = write_config(
            tmp_path / "c.yaml", prediction_folder=out, centers_file=picks, centers_patch_size=size, **s["common"]
        )
        proc = run(["subtomo-embed", "predict-centers", "--config_file", str(cfg)], cli_env, ok=False)
        assert proc.returncode in (3, 4) and message in proc.stderr and "Traceback" not in proc.stderr
        assert not out.exists() or not any(out.iterdir())
