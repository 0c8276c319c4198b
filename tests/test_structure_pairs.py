"""Training pairs from atomic structures (core/structure_pairs.py): tiny molecules, tiny patches, seconds."""

import numpy as np
import pytest
import torch
from synthetic import TINY_POOLED_NETWORK

from subtomo_embed.core.model import build_simsiam
from subtomo_embed.core.patch_contract import Normalization, PatchContract
from subtomo_embed.core.simulated_views import ViewSettings
from subtomo_embed.core.structure_pairs import (
    STRUCTURE_CLASS_OFFSET,
    STRUCTURE_LIST,
    STRUCTURE_ROLES,
    StructurePairs,
    StructureViewSettings,
    batch_embeddings,
    effective_rank,
    listed_structures,
    make_structure_pair,
    monitor_batch,
)
from subtomo_embed.core.structures import Molecule

PATCH = (16, 16, 16)


def view_settings(**ranges):
    """The simulator's view settings with a 16³ patch, hull masking, the demo's normalization."""
    return ViewSettings(PatchContract(PATCH, 1, 1, Normalization(-2, 3, 0.4, 0.2)), **ranges)


def blob(name: str, half_axes, n: int = 600, seed: int = 0) -> Molecule:
    """Carbon atoms filling an ellipsoid of these half-axes (Å)."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(-1, 1, (4 * n, 3))
    points = points[(points**2).sum(1) <= 1][:n] * np.asarray(half_axes)
    return Molecule(name, points, np.full(len(points), 6), mass=12.0 * len(points))


MOLECULES = [blob("ball", (14, 14, 14)), blob("rod", (26, 8, 8), seed=1)]
SMALL = StructureViewSettings(voxel_size=4.0, resolution_range=(8.0, 12.0), structure_fraction=1.0)


def test_two_views_of_one_molecule_share_its_class_differ_and_fit_the_patch():
    views = view_settings(snr_range=(2.0, 2.0))
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(6):
        a, b, c = make_structure_pair(MOLECULES, rng, views, SMALL)
        assert a.shape == b.shape == PATCH and a.dtype == b.dtype == np.float32
        assert c in (STRUCTURE_CLASS_OFFSET, STRUCTURE_CLASS_OFFSET + 1)
        assert np.isfinite(a).all() and np.isfinite(b).all()
        assert not np.allclose(a, b)  # own orientation, noise, resolution: never the same patch
        assert (a != 0).any() and (b != 0).any()  # a molecule inside its mask
        seen.add(c)
    assert seen == {STRUCTURE_CLASS_OFFSET, STRUCTURE_CLASS_OFFSET + 1}


def test_views_of_one_molecule_are_closer_than_views_of_two():
    """Without noise the rod's two views correlate more with each other than with the ball's."""
    views = view_settings(snr_range=(1e6, 1e6), wedge_probability=0.0, mask_dilation=0)
    clean = StructureViewSettings(4.0, 0.0, (10.0, 10.0), 0.0, 0.0, 1.0)
    rng = np.random.default_rng(1)
    rod = MOLECULES[1]
    ball = MOLECULES[0]
    a, b, _ = make_structure_pair([rod], rng, views, clean)
    c, _, _ = make_structure_pair([ball], rng, views, clean)
    size = lambda p: int((p != 0).sum())  # noqa: E731
    # the hull mask's size says the molecule: the rod's two views agree better than rod and ball
    assert abs(size(a) - size(b)) < abs(size(a) - size(c))


def test_the_mix_keeps_the_simulator_pairs_and_their_classes():
    views = view_settings(assembly_fraction=0.0)
    pairs = StructurePairs(MOLECULES, views, StructureViewSettings(4.0, structure_fraction=0.5))
    rng = np.random.default_rng(2)
    classes = [pairs(rng)[2] for _ in range(12)]
    assert any(c >= STRUCTURE_CLASS_OFFSET for c in classes)
    assert any(c < STRUCTURE_CLASS_OFFSET for c in classes)  # envelope shapes: 0..4
    with pytest.raises(ValueError):
        StructurePairs([], views)


def test_effective_rank_and_the_monitor_batch():
    line = np.outer(np.arange(10.0), np.ones(8))
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(np.zeros((5, 4))) == 0.0
    spread = np.random.default_rng(0).standard_normal((200, 8))
    assert 7.0 < effective_rank(spread) <= 8.0
    views = view_settings()
    pairs = StructurePairs(MOLECULES, views, SMALL)
    batch, classes = monitor_batch(pairs, 4, seed=3)
    again, _ = monitor_batch(pairs, 4, seed=3)
    assert batch.shape == (4, 1, *PATCH) and np.array_equal(batch, again)  # a fixed batch
    assert (classes >= STRUCTURE_CLASS_OFFSET).all()
    torch.manual_seed(0)
    model = build_simsiam({**TINY_POOLED_NETWORK})
    emb = batch_embeddings(model, batch)
    assert emb.shape == (4, model.dim)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


RESERVED = {"1TII", "3HSY", "2NWL", "2XHE", "7DDO", "1BD2", "6MSM", "6FLR", "3O21", "3P3W", "3PWP", "3KPR"}


def test_the_structure_list_roles_and_the_held_out_group_of_one_mass():
    import json

    entries = json.loads(STRUCTURE_LIST.read_text())["structures"]
    assert {e["role"] for e in entries} == set(STRUCTURE_ROLES)
    pdbs = [e["pdb"] for e in entries]
    assert len(pdbs) == len(set(pdbs)) and not RESERVED & set(pdbs)  # each once; none reserved for evaluation
    paths = [f"{e['sdist_folder']}/{e['path']}" for e in entries]
    assert len(paths) == len(set(paths))
    one_mass = [e for e in entries if e["role"] == "heldout_mass"]
    assert len(one_mass) >= 4
    mean = np.mean([e["mass_kda"] for e in one_mass])
    assert all(abs(e["mass_kda"] / mean - 1) <= 0.15 for e in one_mass)  # size alone should not tell them apart
    assert all(65 <= e["diameter_angstrom"] <= 125 for e in one_mass)  # 13-25 voxels at 5 Å


def test_listed_structures_finds_each_roles_files_under_the_unpacked_sdists(tmp_path):
    import json

    listing = tmp_path / "structures.json"
    entries = [
        {"pdb": "AAAA", "role": "train", "sdist_folder": "pkg-1.0", "path": "tests/data/target.pdb"},
        {"pdb": "BBBB", "role": "heldout", "sdist_folder": "other-2.0", "path": "tests/data/target.pdb"},
        {"pdb": "CCCC", "role": "heldout_mass", "sdist_folder": "pkg-1.0", "path": "data/c.cif.gz"},
    ]
    listing.write_text(json.dumps({"structures": entries}))
    sdists = tmp_path / "sdists"
    for e in entries:
        (sdists / e["sdist_folder"] / e["path"]).parent.mkdir(parents=True, exist_ok=True)
        (sdists / e["sdist_folder"] / e["path"]).write_text("x")
    assert listed_structures("heldout_mass", sdists, listing) == [sdists / "pkg-1.0" / "data" / "c.cif.gz"]
    assert listed_structures("heldout", sdists, listing) == [sdists / "other-2.0" / "tests" / "data" / "target.pdb"]
    with pytest.raises(ValueError, match="no role"):
        listed_structures("held-out", sdists, listing)
    (sdists / "pkg-1.0" / "tests" / "data" / "target.pdb").unlink()
    with pytest.raises(FileNotFoundError, match="1 listed structures"):
        listed_structures("train", sdists, listing)
