"""The simulator: shapes, placement, truth table, noise, missing wedge, files and seeds."""

import json
import subprocess

import h5py
import mrcfile
import numpy as np
import pandas as pd
import pytest
from inprocess import run_cli
from scipy import ndimage

from subtomo_embed.core import simulate as S


def test_every_particle_matches_its_truth_row():
    tomo = S.simulate_tomogram((48, 96, 96), 15, np.random.default_rng(3), snr=3.0)
    truth = pd.DataFrame(tomo.truth)
    assert len(truth) == 15
    assert sorted(np.unique(tomo.mask)[1:]) == truth["label"].tolist() == list(range(1, 16))
    # classes balanced: 15 particles, 5 classes, 3 each
    assert truth["class"].value_counts().tolist() == [3] * 5
    assert set(truth["class_name"]) == set(S.CLASSES)
    centroids = ndimage.center_of_mass(np.ones_like(tomo.mask), tomo.mask, truth["label"].to_numpy())
    assert np.allclose(np.array(centroids), truth[["z", "y", "x"]].to_numpy(), atol=0.5)


def test_particles_are_apart_by_the_margin():
    tomo = S.simulate_tomogram((48, 96, 96), 20, np.random.default_rng(0), snr=3.0, margin=4)
    for label in range(1, int(tomo.mask.max()) + 1):
        near = ndimage.binary_dilation(tomo.mask == label, iterations=3)
        assert set(np.unique(tomo.mask[near])) <= {0, label}


def test_shapes_differ_as_described():
    identity = np.eye(3)  # the particle's own axis c is x here
    masks = {name: S.render(S.Particle(i, 6.0, identity), 31)[1] for i, name in enumerate(S.CLASSES)}
    centre = (15, 15, 15)
    assert masks["sphere"][centre] and masks["rod"][centre] and masks["dumbbell"][centre]
    assert not masks["shell"][centre] and not masks["torus"][centre]
    assert masks["shell"].sum() < masks["sphere"].sum()
    rod = np.nonzero(masks["rod"])
    assert np.ptp(rod[2]) > 2 * np.ptp(rod[0])  # long along its axis
    torus = np.nonzero(masks["torus"])
    assert np.ptp(torus[2]) < 0.5 * np.ptp(torus[0])  # flat across its axis
    assert not masks["dumbbell"][15, 15, 15 + 4] or masks["dumbbell"][15, 15, 15 + 3]  # two lobes along the axis


def test_noise_level_follows_the_snr():
    clean = np.zeros((32, 32, 32), np.float32)
    for snr in (1.0, 4.0):
        noisy = S.degrade(clean, np.random.default_rng(0), snr, None)
        assert noisy.std() == pytest.approx(1 / np.sqrt(snr), rel=0.05)


def test_missing_wedge_removes_the_wedge_from_fourier_space():
    noisy = S.degrade(np.zeros((32, 32, 32), np.float32), np.random.default_rng(0), 1.0, 60.0)
    power = np.abs(np.fft.rfftn(noisy)) ** 2
    keep = S.wedge_filter(noisy.shape, 60.0)
    assert power[~keep].max() < 1e-6 * power[keep].mean()
    assert (~keep).mean() > 0.15  # ±60° leaves out a third of the directions in the xz plane


def test_the_same_particle_twice_shares_shape_not_orientation():
    rng = np.random.default_rng(1)
    p = S.random_particle(rng, cls=2)
    q = S.rotated(p, rng)
    assert (q.cls, q.size, q.aspect) == (p.cls, p.size, p.aspect)
    assert not np.allclose(q.rotation, p.rotation)
    a, b = S.render(p, 41)[1], S.render(q, 41)[1]
    assert abs(int(a.sum()) - int(b.sum())) < 0.1 * a.sum()  # same volume, another orientation


def run_simulate_cli(out, env, seed):
    return subprocess.run(
        [
            "subtomo-embed",
            "simulate",
            "--output",
            str(out),
            "--tomograms",
            "2",
            "--shape",
            "40",
            "80",
            "80",
            "--particles",
            "10",
            "--snr",
            "2",
            "--wedge",
            "60",
            "--seed",
            str(seed),
        ],
        env=env,
        capture_output=True,
        text=True,
    )


def test_simulate_command_writes_cryosiam_layout_and_is_seeded(tmp_path, cli_env):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        proc = run_simulate_cli(tmp_path / name, cli_env, seed)
        assert proc.returncode == 0, proc.stderr
    a = tmp_path / "a"
    truth = pd.read_csv(a / "truth.csv")
    assert list(truth.columns[:4]) == ["tomogram", "label", "class", "class_name"]
    assert sorted(truth["tomogram"].unique()) == ["TS_01", "TS_02"]
    for stem in ("TS_01", "TS_02"):
        volume = mrcfile.read(a / "data" / f"{stem}.mrc")
        with h5py.File(a / "masks" / f"{stem}_instance_preds.h5") as f:
            mask = f["instances"][()]
        assert volume.shape == mask.shape == (40, 80, 80) and volume.dtype == np.float32
        rows = truth[truth["tomogram"] == stem]
        assert sorted(np.unique(mask)[1:]) == sorted(rows["label"])
        centroids = ndimage.center_of_mass(np.ones_like(mask), mask, rows["label"].to_numpy())
        assert np.allclose(np.array(centroids), rows[["z", "y", "x"]].to_numpy(), atol=0.5)
        # same seed, same files; another seed, other files
        assert np.array_equal(volume, mrcfile.read(tmp_path / "b" / "data" / f"{stem}.mrc"))
        assert not np.array_equal(volume, mrcfile.read(tmp_path / "c" / "data" / f"{stem}.mrc"))
    assert (a / "truth.csv").read_bytes() == (tmp_path / "b" / "truth.csv").read_bytes()
    assert (truth["snr"] == 2).all() and (truth["wedge"] == 60).all()
    assert not (a / "classes.json").exists()  # class definitions belong to --kind assemblies


def run_assemblies_cli(out, env, seed, class_seed, *extra):
    return subprocess.run(
        ["subtomo-embed", "simulate", "--kind", "assemblies", "--output", str(out), "--tomograms", "2"]
        + ["--shape", "48", "128", "128", "--particles", "12", "--classes", "4", "--min-diameter", "12"]
        + ["--max-diameter", "14", "--snr", "3", "--wedge", "60", "--seed", str(seed), "--class-seed", str(class_seed)]
        + list(extra),
        env=env,
        capture_output=True,
        text=True,
    )


def test_simulate_assemblies_writes_balanced_classes_masks_and_definitions(tmp_path, cli_env):
    for name, seed, class_seed in (("a", 5, 1), ("b", 5, 1), ("c", 5, 2)):
        proc = run_assemblies_cli(tmp_path / name, cli_env, seed, class_seed)
        assert proc.returncode == 0, proc.stderr
    a = tmp_path / "a"
    truth = pd.read_csv(a / "truth.csv")
    definitions = json.loads((a / "classes.json").read_text())
    assert definitions["class_seed"] == 1 and len(definitions["classes"]) == 4
    # 12 particles a tomogram over 4 classes: 3 of each, named and described as in classes.json
    for _, rows in truth.groupby("tomogram"):
        assert rows["class"].value_counts().sort_index().tolist() == [3, 3, 3, 3]
    by_class = dict(enumerate(definitions["classes"]))
    for _, row in truth.iterrows():
        definition = by_class[row["class"]]
        assert row["class_name"] == definition["name"] and row["family"] == definition["family"]
        arrangement = definition["arrangement"]
        assert arrangement.startswith(row["family"]) and row["class_name"].endswith(arrangement)
        assert row["subunits"] == definition["subunits"] == len(definition["centres"])
    assert (truth["class_seed"] == 1).all() and (truth["wedge"] == 60).all()
    # one envelope for the class set: every class has the same outer radius
    assert len({c["outer_radius"] for c in definitions["classes"]}) == 1
    for stem in ("TS_01", "TS_02"):
        volume = mrcfile.read(a / "data" / f"{stem}.mrc")
        with h5py.File(a / "masks" / f"{stem}_instance_preds.h5") as f:
            mask = f["instances"][()]
        assert volume.shape == mask.shape == (48, 128, 128) and volume.dtype == np.float32
        rows = truth[truth["tomogram"] == stem]
        assert sorted(np.unique(mask)[1:]) == sorted(rows["label"])
        labels = rows["label"].to_numpy()
        centroids = ndimage.center_of_mass(np.ones_like(mask), mask, labels)
        assert np.allclose(np.array(centroids), rows[["z", "y", "x"]].to_numpy(), atol=0.5)
        # each instance's voxel count is that of its class's sub-units (balls of subunit_radius)
        voxels = ndimage.sum(np.ones_like(mask), mask, labels)
        expected = rows["subunits"] * 4 / 3 * np.pi * rows["subunit_radius"] ** 3
        assert np.allclose(voxels, expected, rtol=0.35)
        # same seeds, same files
        assert np.array_equal(volume, mrcfile.read(tmp_path / "b" / "data" / f"{stem}.mrc"))
    for name in ("truth.csv", "classes.json"):
        assert (a / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # another class seed: other class definitions
    other = json.loads((tmp_path / "c" / "classes.json").read_text())["classes"]
    assert [c["centres"] for c in other] != [c["centres"] for c in definitions["classes"]]
    assert {(c["family"], c["subunits"]) for c in other} != {
        (c["family"], c["subunits"]) for c in definitions["classes"]
    }


def test_simulate_assemblies_refuses_more_classes_than_it_can_draw(tmp_path, cli_env):
    proc = run_assemblies_cli(tmp_path / "out", cli_env, 0, 0, "--classes", "500")
    assert proc.returncode == 3
    assert "500" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--particles", "1000000000000"], "--particles 1000000000000: a 64×192×192 tomogram holds 1 to 16,428"),
        (["--shape", "-5", "64", "64"], "--shape -5 64 64: needs three sizes"),
        (["--shape", "0", "64", "64"], "--shape 0 64 64: needs three sizes"),
        (["--shape", "4096", "4096", "4096"], "--shape 4096 4096 4096: more than 268,435,456 voxels"),
        (["--max-size", "100000"], "--max-size 100000: particles of radius 100000 voxels are wider than"),
        (["--min-size", "-5"], "--min-size -5 --max-size 7: particle radii need 0 < min <= max"),
        (["--kind", "assemblies", "--min-diameter", "9e4", "--max-diameter", "1e5"], "--max-diameter: assemblies"),
    ],
)
def test_simulate_refuses_sizes_out_of_bounds_before_allocating(tmp_path, args, message):
    """Issue 31, class 9: a config error in one line, with advice about the options themselves (a
    MemoryError's advice is about batch_size), nothing written."""
    proc = run_cli(["simulate", "--output", tmp_path / "out", *args])
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith(f"config error: {message}") and len(proc.stderr.strip().splitlines()) == 1
    assert "batch_size" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_simulate_refuses_more_tomograms_than_the_disk_holds(tmp_path):
    proc = run_cli(["simulate", "--output", tmp_path / "out", "--tomograms", "1000000000000"])
    assert proc.returncode == 6, proc.stderr
    assert proc.stderr.startswith(f"resource error: {tmp_path}: --tomograms 1000000000000: 1,000,000,000,000 tomograms")
    assert "lower --tomograms or --shape" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_no_placement_exceeds_the_particle_bound():
    """max_particles: one-voxel boxes on a grid of 1 + margin voxels, margin voxels from the faces (2, 3
    and 4 along these axes); the placement of as many of the smallest particles as it can stays within it."""
    shape, margin = (14, 19, 24), 4
    bound = S.max_particles(shape, margin)
    assert bound == 2 * 3 * 4
    dot = S.Rendered(np.ones((1, 1, 1), np.float32), np.ones((1, 1, 1), bool), {})
    _, mask, truth = S.place_particles(shape, [dot] * 200, np.random.default_rng(0), margin)
    assert 0 < len(truth) <= bound and mask.max() == len(truth)
