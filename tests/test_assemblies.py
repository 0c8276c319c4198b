"""Structured particles (core/assemblies.py) and the spherical-harmonic baseline (core/descriptors.py)."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from subtomo_embed.core.assemblies import (
    ARRANGEMENTS,
    FAMILIES,
    family_positions,
    make_assembly,
    random_class_set,
    render_assembly,
    simulate_assembly_tomogram,
    simulate_particle,
    simulate_set,
)
from subtomo_embed.core.descriptors import SphericalHarmonicPower, describe_all, describe_sh_all


@pytest.mark.parametrize(
    ("family", "n", "count"),
    [
        ("ring", 5, 5),
        ("dihedral", 4, 8),
        ("tetrahedral", 0, 4),
        ("octahedral", 0, 6),
        ("cubic", 0, 8),
        ("icosahedral", 0, 12),
        ("filament", 7, 7),
    ],
)
def test_family_positions_have_their_count_and_unit_scale(family, n, count):
    p = family_positions(family, n, height=1.0, twist_degrees=90.0)
    assert p.shape == (count, 3)
    assert np.isclose(np.linalg.norm(p, axis=1).max(), 1.0)
    assert np.allclose(p.mean(axis=0), 0, atol=1e-9)
    if family in ("ring", "tetrahedral", "octahedral", "cubic", "icosahedral"):
        # regular: every sub-unit at the same distance from the centre, same nearest-neighbour gap
        assert np.allclose(np.linalg.norm(p, axis=1), 1.0)
        d = np.linalg.norm(p[:, None] - p[None], axis=-1) + 9 * np.eye(count)
        assert np.allclose(d.min(axis=1), d.min())
    if family == "ring":
        assert np.allclose(p[:, 2], 0)


def test_class_sets_share_envelope_and_mass_and_differ_by_seed():
    a = random_class_set(3, 6)
    assert [c.name for c in a] == [c.name for c in random_class_set(3, 6)]
    assert len({c.name for c in a}) == 6
    diameters = {round(2 * c.outer_radius, 6) for c in a}
    assert len(diameters) == 1 and 12 <= diameters.pop() <= 24
    masses = [len(c.centres) * c.subunit_radius**3 for c in a]
    assert np.allclose(masses, masses[0])
    names = {tuple(c.name.split(":")[1] for c in random_class_set(s, 6)) for s in range(6)}
    assert len(names) > 1, "class definitions must depend on the seed"


def test_rendered_assembly_has_one_blob_per_subunit_and_the_membrane_is_not_masked():
    from scipy import ndimage

    ring = make_assembly("r5", "ring", 20, mass=5 * 4 / 3 * np.pi * 27, n=5)  # sub-units of radius 3, apart
    density, mask = render_assembly(ring, np.eye(3), 32)
    assert ndimage.label(mask)[1] == 5
    assert np.isclose(mask.sum(), 5 * 4 / 3 * np.pi * ring.subunit_radius**3, rtol=0.15)
    on_membrane = make_assembly("r5m", "ring", 20, mass=5 * 4 / 3 * np.pi * 27, n=5, membrane=True)
    density_m, mask_m = render_assembly(on_membrane, np.eye(3), 32)
    assert np.array_equal(mask_m, mask)
    assert (density_m[~mask_m] > 0.5).sum() > 32 * 32 * 2  # a slab crosses the box


def test_particles_are_seeded_and_centred():
    tet = make_assembly("tet", "tetrahedral", 16)
    v1, m1 = simulate_particle(tet, np.random.default_rng(5), 32, snr=3, wedge=60)
    v2, m2 = simulate_particle(tet, np.random.default_rng(5), 32, snr=3, wedge=60)
    assert np.array_equal(v1, v2) and np.array_equal(m1, m2)
    assert v1.dtype == np.float32 and m1.dtype == np.int32 and set(np.unique(m1)) == {0, 1}
    centre = np.argwhere(m1).mean(axis=0)
    assert np.allclose(centre, 15.5, atol=1.0)


def test_spherical_harmonic_power_does_not_change_when_the_particle_turns():
    octa = make_assembly("oct", "octahedral", 18)
    describe = SphericalHarmonicPower((32, 32, 32))
    turns = [describe(render_assembly(octa, Rotation.random(random_state=s).as_matrix(), 32)[0]) for s in range(4)]
    tet = describe(render_assembly(make_assembly("tet", "tetrahedral", 18), np.eye(3), 32)[0])
    within = max(np.linalg.norm(t - turns[0]) for t in turns[1:])
    between = np.linalg.norm(tet - turns[0])
    assert within < 0.25 * between


def test_arrangement_classes_defeat_the_radial_descriptor_but_not_the_spherical_harmonics():
    # same outer diameter, same mass: only the arrangement differs
    classes = [
        make_assembly(n, f, 18, mass=1200, n=k, height=1.0)
        for n, f, k in (
            ("ring4", "ring", 4),
            ("ring6", "ring", 6),
            ("tet", "tetrahedral", 0),
            ("oct", "octahedral", 0),
            ("d4", "dihedral", 4),
        )
    ]
    volumes, masks, truth = simulate_set(classes, 24, seed=0, box=32, snr=3.0)
    scores = {}
    for name, describe in (("radial", describe_all), ("sh", describe_sh_all)):
        x = describe(list(volumes))
        scores[name] = adjusted_rand_score(truth, KMeans(5, n_init=10, random_state=0).fit_predict(x))
    assert scores["sh"] >= 0.9, scores
    assert scores["radial"] < scores["sh"] - 0.2, scores


def test_every_family_can_be_drawn():
    classes = random_class_set(0, len(FAMILIES) + 3)
    assert {c.family for c in classes} == set(FAMILIES)


def test_every_drawn_class_has_an_arrangement_id_that_ignores_size():
    """Training labels a pair by its arrangement (ARRANGEMENTS): every class a class set can draw has one,
    the same arrangement drawn in two sets of different diameters has the same one, and the name shows it."""
    seen: dict[str, set[float]] = {}
    for seed in range(60):
        for c in random_class_set(seed, int(3 + seed % 5)):
            label = c.arrangement
            assert label in ARRANGEMENTS and label.startswith(c.family) and c.name.endswith(":" + label)
            seen.setdefault(label, set()).add(round(2 * c.outer_radius, 3))
    assert len(ARRANGEMENTS) == len(set(ARRANGEMENTS)) == 6 + 3 + 4 + 5 * 5
    assert len(seen) > 20 and any(len(d) > 1 for d in seen.values())
    # the arrangement does not come from the name
    assert make_assembly("x", "ring", 16.0, n=4).arrangement == "ring4"
    assert make_assembly("y", "filament", 16.0, n=7, twist_degrees=144).arrangement == "filament7_t144"


def test_assembly_tomogram_places_balanced_classes_and_membranes_outside_the_masks():
    classes = random_class_set(3, 3, diameter_range=(12, 12), membrane=True)
    tomo = simulate_assembly_tomogram((40, 96, 96), 6, np.random.default_rng(0), classes, snr=1e8, bandpass=False)
    assert [row["class"] for row in tomo.truth].count(0) == 2 and len(tomo.truth) == 6
    assert sorted(np.unique(tomo.mask)[1:]) == [row["label"] for row in tomo.truth]
    # the membrane is density outside every instance mask; without it there is none
    assert (tomo.volume[tomo.mask == 0] > 0.5).sum() > 100
    bare = [dataclasses.replace(a, membrane=False) for a in classes]
    tomo = simulate_assembly_tomogram((40, 96, 96), 6, np.random.default_rng(0), bare, snr=1e8, bandpass=False)
    assert (tomo.volume[ndimage.binary_dilation(tomo.mask > 0, iterations=2) == 0] > 0.5).sum() == 0
