"""Real molecules: the PDB / mmCIF reader (altlocs, waters, ligands, hydrogens, models, assemblies,
compression), their density maps, tomograms of them and ``simulate --structures``.

Every structure here is written by the test itself: a small made-up chain whose atoms, assembly
operators and expected counts are known without the reader."""

import bz2
import gzip
import json
from dataclasses import dataclass, replace

import h5py
import mrcfile
import numpy as np
import pandas as pd
import pytest
from inprocess import run_cli
from scipy import ndimage
from scipy.spatial.transform import Rotation

from subtomo_embed.core import structures as S
from subtomo_embed.core import structures_io as SIO
from subtomo_embed.core.errors import InputDataError

Z = {"C": 6, "N": 7, "O": 8, "S": 16, "FE": 26, "H": 1}


@dataclass(frozen=True)
class Atom:
    record: str  # ATOM or HETATM
    name: str
    resname: str
    chain: str  # PDB chain = mmCIF label_asym_id here
    resseq: int
    element: str
    xyz: tuple  # rounded to the 3 decimals the files hold
    altloc: str = ""
    occ: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "xyz", tuple(round(float(v), 3) for v in self.xyz))


def made_up_chain(rng, n_residues=40, centre=(30.0, 0.0, 0.0), spread=6.0) -> list[Atom]:
    """Residues of N, CA, C, O (a sulphur in every 5th, a hydrogen on every 4th), then residue 7 in two
    conformers (A, occupancy 0.3; B, 0.7, 10 Å away), a ligand with an iron and 6 waters."""
    atoms = []
    for r in range(1, n_residues + 1):
        names = [("N", "N"), ("CA", "C"), ("C", "C"), ("O", "O")] + ([("SD", "S")] if r % 5 == 0 else [])
        names += [("H", "H")] if r % 4 == 0 else []
        for name, element in names:
            xyz = tuple(np.asarray(centre) + rng.normal(0, spread, 3))
            if r == 7 and element != "H":
                shifted = tuple(np.asarray(xyz) + (10.0, 0.0, 0.0))
                atoms.append(Atom("ATOM", name, "MET", "A", r, element, xyz, "A", 0.3))
                atoms.append(Atom("ATOM", name, "MET", "A", r, element, shifted, "B", 0.7))
            else:
                atoms.append(Atom("ATOM", name, "MET", "A", r, element, xyz))
    for name, element in (("FE", "FE"), ("S1", "S"), ("S2", "S")):
        atoms.append(Atom("HETATM", name, "FES", "B", 101, element, tuple(np.asarray(centre) + rng.normal(0, 3, 3))))
    for w in range(6):
        atoms.append(Atom("HETATM", "O", "HOH", "C", 201 + w, "O", tuple(np.asarray(centre) + rng.normal(0, 9, 3))))
    return atoms


def kept(atoms: list[Atom]) -> list[Atom]:
    """What the reader should keep: no hydrogens, no waters, conformer B of residue 7."""
    return [a for a in atoms if a.element != "H" and a.resname != "HOH" and a.altloc != "A"]


def trimer_operators() -> list[tuple[np.ndarray, np.ndarray]]:
    """Three copies turned by 120° about z, the second and third also lifted 2 Å and 4 Å along z."""
    return [(Rotation.from_euler("z", 120 * k, degrees=True).as_matrix(), np.array([0, 0, 2.0 * k])) for k in range(3)]


def pdb_text(models: list[list[Atom]], operators=(), chains="A, B, C") -> str:
    lines = ["HEADER    MADE UP                                 01-JAN-26   9ZZZ              "]
    if operators:
        lines += ["REMARK 350 BIOMOLECULE: 1", f"REMARK 350 APPLY THE FOLLOWING TO CHAINS: {chains}"]
        for k, (rot, shift) in enumerate(operators, 1):
            for i in range(3):
                r = rot[i]
                lines.append(f"REMARK 350   BIOMT{i + 1} {k:3d}{r[0]:10.6f}{r[1]:10.6f}{r[2]:10.6f}{shift[i]:15.5f}")
    for m, atoms in enumerate(models, 1):
        lines.append(f"MODEL     {m:4d}")
        for serial, a in enumerate(atoms, 1):
            name = a.name if len(a.element) == 2 or len(a.name) == 4 else f" {a.name}"
            lines.append(
                f"{a.record:<6s}{serial:5d} {name:<4s}{a.altloc or ' ':1s}{a.resname:>3s} {a.chain:1s}{a.resseq:4d}    "
                f"{a.xyz[0]:8.3f}{a.xyz[1]:8.3f}{a.xyz[2]:8.3f}{a.occ:6.2f}{20.0:6.2f}          {a.element:>2s}"
            )
        lines.append("ENDMDL")
    return "\n".join(lines + ["END", ""])


CIF_ATOM_COLUMNS = (
    "group_PDB id type_symbol label_atom_id label_alt_id label_comp_id label_asym_id label_entity_id label_seq_id "
    "Cartn_x Cartn_y Cartn_z occupancy B_iso_or_equiv auth_seq_id auth_asym_id pdbx_PDB_model_num"
).split()

ASSEMBLY_COLUMNS = ("id", "details", "method_details", "oligomeric_details", "oligomeric_count")  # as the PDB writes


def cif_text(models: list[list[Atom]], operators=()) -> str:
    lines = ["data_9ZZZ", "#", "_entry.id 9ZZZ", "#", "loop_"] + [f"_atom_site.{c}" for c in CIF_ATOM_COLUMNS]
    entity = {"A": 1, "B": 2, "C": 3}
    for m, atoms in enumerate(models, 1):
        for serial, a in enumerate(atoms, 1):
            seq = a.resseq if a.record == "ATOM" else "."
            x, y, z = a.xyz
            lines.append(
                f"{a.record} {serial} {a.element} {a.name} {a.altloc or '.'} {a.resname} {a.chain} {entity[a.chain]} "
                f"{seq} {x:.3f} {y:.3f} {z:.3f} {a.occ:.2f} 20.0 {a.resseq} {a.chain} {m}"
            )
    if operators:
        lines += ["#", "loop_"] + [f"_pdbx_struct_assembly.{c}" for c in ASSEMBLY_COLUMNS]
        lines += ["1 author_defined_assembly ? trimeric 3", "#"]
        lines += ["loop_", "_pdbx_struct_assembly_gen.assembly_id", "_pdbx_struct_assembly_gen.oper_expression"]
        lines += ["_pdbx_struct_assembly_gen.asym_id_list", f"1 '(1-{len(operators)})' A,B,C", "#", "loop_"]
        lines += ["_pdbx_struct_oper_list.id", "_pdbx_struct_oper_list.type"]
        lines += [f"_pdbx_struct_oper_list.matrix[{i}][{j}]" for i in (1, 2, 3) for j in (1, 2, 3)]
        lines += [f"_pdbx_struct_oper_list.vector[{i}]" for i in (1, 2, 3)]
        for k, (rot, shift) in enumerate(operators, 1):
            values = " ".join(f"{v:.6f}" for v in [*rot.ravel(), *shift])
            lines.append(f"{k} 'made up' {values}")
    return "\n".join(lines + ["#", ""])


def expected_assembly(atoms: list[Atom], operators) -> np.ndarray:
    xyz = np.array([a.xyz for a in atoms])
    return np.concatenate([xyz @ rot.T + shift for rot, shift in operators])


def sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


@pytest.fixture
def chain():
    return made_up_chain(np.random.default_rng(7))


@pytest.fixture
def second_model(chain):
    """A second model: every atom 50 Å away, one atom more."""
    moved = [replace(a, xyz=tuple(np.asarray(a.xyz) + (50.0, 0, 0))) for a in chain]
    return moved + [Atom("ATOM", "CB", "MET", "A", 1, "C", (0.0, 0.0, 0.0))]


# --------------------------------------------------------------------------------------------
# the reader


@pytest.mark.parametrize("form", ["pdb", "cif"])
def test_reader_keeps_first_model_best_conformer_ligand_and_builds_the_assembly(tmp_path, chain, second_model, form):
    operators = trimer_operators()
    text = (pdb_text if form == "pdb" else cif_text)([chain, second_model], operators)
    path = tmp_path / f"made_up.{form}"
    path.write_text(text)
    molecule = SIO.read_structure(path)
    expected = kept(chain)
    assert molecule.name == "made_up" and molecule.assembly == "1" and molecule.copies == 3
    assert len(molecule.coords) == 3 * len(expected)  # no hydrogens, waters, conformer A or model 2
    assert np.allclose(sorted_rows(molecule.coords), sorted_rows(expected_assembly(expected, operators)), atol=2e-3)
    numbers = sorted(3 * [Z[a.element] for a in expected])
    assert sorted(molecule.atomic_numbers.tolist()) == numbers
    assert 26 in numbers  # the ligand's iron is kept
    masses = {"C": 12.011, "N": 14.007, "O": 15.999, "S": 32.06, "FE": 55.845}
    assert molecule.mass == pytest.approx(3 * sum(masses[a.element] for a in expected), rel=1e-3)


def test_reader_without_assembly_gives_the_model_and_keeps_waters_when_asked(tmp_path, chain):
    path = tmp_path / "plain.pdb"
    path.write_text(pdb_text([chain]))
    molecule = SIO.read_structure(path)
    assert molecule.copies == 1 and molecule.assembly == ""
    assert len(molecule.coords) == len(kept(chain))
    with_waters = SIO.read_structure(path, waters=True)
    assert len(with_waters.coords) == len(kept(chain)) + 6


def test_reader_takes_the_most_occupied_conformer_whatever_its_letter(tmp_path, chain):
    """Residue 7's conformer A made the likelier one (0.8 against 0.2): its coordinates are kept."""
    swapped = [replace(a, occ=0.8) if a.altloc == "A" else replace(a, occ=0.2) if a.altloc == "B" else a for a in chain]
    path = tmp_path / "swapped.pdb"
    path.write_text(pdb_text([swapped]))
    molecule = SIO.read_structure(path)
    conformer_a = np.array([a.xyz for a in swapped if a.altloc == "A"])
    conformer_b = np.array([a.xyz for a in swapped if a.altloc == "B"])
    near = np.abs(molecule.coords[:, None, :] - conformer_a[None]).max(-1).min(0)
    assert (near < 2e-3).all()
    far = np.abs(molecule.coords[:, None, :] - conformer_b[None]).max(-1).min(0)
    assert (far > 1.0).all()


def test_compressed_files_read_as_the_plain_one_whatever_their_suffix(tmp_path, chain):
    text = cif_text([chain], trimer_operators()).encode()
    (tmp_path / "a.cif").write_bytes(text)
    (tmp_path / "b.cif.gz").write_bytes(gzip.compress(text))
    (tmp_path / "c.cif.bz2").write_bytes(bz2.compress(text))
    (tmp_path / "d.cif").write_bytes(gzip.compress(text))  # a gzip file without its suffix
    plain = SIO.read_structure(tmp_path / "a.cif")
    for name in ("b.cif.gz", "c.cif.bz2", "d.cif"):
        molecule = SIO.read_structure(tmp_path / name)
        assert np.array_equal(molecule.coords, plain.coords)
        assert molecule.name == name.split(".")[0]


def test_files_and_folders_expand_to_one_file_per_class(tmp_path, chain):
    folder = tmp_path / "set"
    folder.mkdir()
    for name in ("b.pdb", "a.cif.gz", "notes.txt"):
        (folder / name).write_text("x")
    extra = tmp_path / "c.ent"
    extra.write_text("x")
    assert [p.name for p in SIO.structure_files([folder, extra])] == ["a.cif.gz", "b.pdb", "c.ent"]
    (tmp_path / "b.pdb.bz2").write_text("x")
    with pytest.raises(InputDataError, match="two structures named 'b'"):
        SIO.structure_files([folder, tmp_path / "b.pdb.bz2"])
    with pytest.raises(InputDataError, match="no such file"):
        SIO.structure_files([tmp_path / "missing.pdb"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputDataError, match="no structure files"):
        SIO.structure_files([empty])


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "no atoms"),
        (b"\x1f\x8b\x08\x00garbage", "cannot read the structure"),
        (b"data_X\nloop_\n_atom_site.id\n'unterminated\n", "not a readable mmCIF file"),
        (b"HETATM    1  O   HOH A   1       1.000   2.000   3.000  1.00 20.00           O\n", "waters"),
    ],
)
def test_bad_structure_files_name_themselves(tmp_path, content, message):
    path = tmp_path / "bad.pdb"
    path.write_bytes(content)
    with pytest.raises(InputDataError, match=message) as err:
        SIO.read_structure(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_an_assembly_beyond_the_atom_bound_is_refused_before_it_is_built(tmp_path, chain, monkeypatch):
    """100 copies of the chain's 191 atoms against a bound of 10,000 (the real bound is 10 million)."""
    monkeypatch.setattr(SIO, "MAX_ATOMS", 10_000)
    path = tmp_path / "huge.cif"
    path.write_text(cif_text([chain], [(np.eye(3), np.array([0.0, 0.0, k])) for k in range(100)]))
    assert len(chain) == 191
    with pytest.raises(InputDataError, match=r"assembly 1 would hold up to 19,100 atoms \(100 copies\), more than"):
        SIO.read_structure(path)
    monkeypatch.setattr(SIO, "MAX_ATOMS", 19_100)
    assert len(SIO.read_structure(path).coords) == 100 * len(kept(chain))


def test_a_decompression_bomb_stops_at_the_limit(tmp_path):
    path = tmp_path / "bomb.pdb.gz"
    path.write_bytes(gzip.compress(b" " * 5000))
    with pytest.raises(InputDataError, match="larger than"):
        SIO.read_bytes(path, limit=4096)
    assert len(SIO.read_bytes(path, limit=5000)) == 5000


# --------------------------------------------------------------------------------------------
# maps


def molecule_of(atoms: list[Atom], operators=None, name="m") -> S.Molecule:
    xyz = expected_assembly(atoms, operators or [(np.eye(3), np.zeros(3))])
    copies = len(operators or [0])
    return S.Molecule(name, xyz, np.array(copies * [Z[a.element] for a in atoms]), 0.0, copies)


def moments(density: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid and second-moment tensor (voxels) of a map."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in density.shape], indexing="ij"), -1).reshape(-1, 3)
    w = density.reshape(-1).astype(np.float64)
    centre = w @ grid / w.sum()
    d = grid - centre
    return centre, (d * w[:, None]).T @ d / w.sum()


def test_map_is_centred_on_the_molecule_and_its_mass_counts_its_electrons(chain):
    settings = S.MapSettings(voxel_size=4.0, resolution=12.0)
    atoms = kept(chain)
    single, trimer = molecule_of(atoms), molecule_of(atoms, trimer_operators())
    for molecule in (single, trimer):
        density = S.density_map(molecule, settings)
        centre, _ = moments(density)
        assert np.allclose(centre, (density.shape[0] - 1) / 2, atol=1e-3)
        electrons = float(density.sum(dtype=np.float64)) * S.PROTEIN_ELECTRONS * settings.voxel_size**3
        assert electrons == pytest.approx(sum(Z[a.element] for a in atoms) * molecule.copies, rel=1e-4)
    # three copies, three times the mass
    masses = [S.density_map(m, settings).sum(dtype=np.float64) for m in (single, trimer)]
    assert masses[1] / masses[0] == pytest.approx(3.0, rel=1e-4)


def test_an_orientation_turns_the_maps_inertia_tensor(chain):
    settings = S.MapSettings(voxel_size=4.0, resolution=12.0)
    molecule = molecule_of(kept(chain), trimer_operators())
    box = S.map_box(molecule, settings)
    _, unturned = moments(S.density_map(molecule, settings, np.eye(3), box))
    # the atoms' own spread (z y x, voxels) plus the blur's variance on every axis (+ up to 1/4 from the
    # trilinear spreading)
    zyx = (molecule.coords - molecule.centre())[:, ::-1] / settings.voxel_size
    atoms = np.cov(zyx.T, aweights=molecule.atomic_numbers, bias=True)
    assert np.allclose(unturned - settings.sigma**2 * np.eye(3), atoms, atol=0.25)
    rotation = Rotation.from_euler("zyx", [40, -25, 70], degrees=True).as_matrix()
    _, turned = moments(S.density_map(molecule, settings, rotation, box))
    assert np.allclose(turned, rotation @ unturned @ rotation.T, atol=0.05 * np.trace(unturned) / 3)
    assert not np.allclose(turned, unturned, atol=0.05 * np.trace(unturned) / 3)


def test_the_mask_is_one_contour_that_holds_the_molecules_volume(chain):
    """As the file has it, the mask holds the molecule's volume of its densest voxels; turned, the same
    contour level holds about as many (not exactly: a mask's size must not give its class away)."""
    settings = S.MapSettings(voxel_size=4.0, resolution=20.0)
    molecule = molecule_of(kept(chain), trimer_operators())
    density, mask = S.render_molecule(molecule, settings)
    expected = round(molecule.electrons / S.PROTEIN_ELECTRONS / settings.voxel_size**3)
    assert mask.sum() == expected == S.volume_voxels(molecule, settings)
    assert density[mask].min() >= density[~mask].max()
    level = S.contour_level(molecule, settings)
    counts = set()
    for seed in range(6):
        rotation = Rotation.random(random_state=seed).as_matrix()
        turned, turned_mask = S.render_molecule(molecule, settings, rotation, level)
        assert np.array_equal(turned_mask, turned >= level)
        assert turned_mask.sum() == pytest.approx(expected, rel=0.1)
        counts.add(int(turned_mask.sum()))
    assert len(counts) > 1


def test_tomogram_places_each_molecule_at_its_truth_centre(chain):
    rng = np.random.default_rng(3)
    settings = S.MapSettings(voxel_size=4.0, resolution=12.0)
    atoms = kept(chain)
    molecules = [molecule_of(atoms, name="one"), molecule_of(atoms, trimer_operators(), name="three")]
    tomo = S.simulate_structure_tomogram((48, 112, 112), 8, rng, molecules, settings, snr=1e12)
    truth = pd.DataFrame(tomo.truth)
    assert len(truth) == 8 and truth["class_name"].value_counts().to_dict() == {"one": 4, "three": 4}
    assert (truth.loc[truth["class_name"] == "three", "copies"] == 3).all()
    labels = truth["label"].to_numpy()
    # the clean map's centre of mass, around each mask, is the truth centre
    around = ndimage.grey_dilation(tomo.mask, size=(9, 9, 9))
    centres = ndimage.center_of_mass(np.clip(tomo.volume, 0, None), around, labels)
    assert np.allclose(np.array(centres), truth[["z", "y", "x"]].to_numpy(), atol=0.3)
    voxels = ndimage.sum(np.ones_like(tomo.mask), tomo.mask, labels)
    assert np.allclose(voxels, [S.volume_voxels(molecules[c], settings) for c in truth["class"]], rtol=0.1)


def test_mask_error_spreads_each_masks_volume_within_its_bounds(chain):
    """mask_error e: each mask encloses the molecule's volume times a factor in [1/(1+e), 1+e], drawn per
    particle (a segmentation's error in size); 0 keeps the exact volume. Only the masks differ: the same
    molecules at the same places and turns, the same noise."""
    settings = S.MapSettings(voxel_size=4.0, resolution=12.0)
    atoms = kept(chain)
    molecules = [molecule_of(atoms, name="one"), molecule_of(atoms, trimer_operators(), name="three")]
    ratios, tomograms = {}, {}
    for error in (0.0, 0.3):
        tomo = S.simulate_structure_tomogram(
            (48, 128, 128), 12, np.random.default_rng(5), molecules, settings, mask_error=error
        )
        tomograms[error] = tomo
        truth = pd.DataFrame(tomo.truth)
        voxels = ndimage.sum(np.ones_like(tomo.mask), tomo.mask, truth["label"].to_numpy())
        expected = np.array([S.volume_voxels(molecules[c], settings) for c in truth["class"]])
        ratios[error] = voxels / expected
    assert np.allclose(ratios[0.0], 1.0, rtol=0.1)
    spread = ratios[0.3]
    assert (spread >= 1 / 1.3 - 0.02).all() and (spread <= 1.3 + 0.02).all()
    assert spread.max() / spread.min() > 1.25  # drawn per particle, not one factor
    exact, erred = tomograms[0.0], tomograms[0.3]
    assert np.array_equal(exact.volume, erred.volume) and exact.truth == erred.truth
    assert not np.array_equal(exact.mask, erred.mask)


def test_simulate_takes_a_mask_error_and_refuses_one_beyond_1(tmp_path, chain):
    folder = write_structure_set(tmp_path / "structures", chain)
    args = ["simulate", "--structures", folder, "--tomograms", "1", "--shape", "40", "96", "96", "--particles", "6"]
    proc = run_cli([*args, "-o", tmp_path / "sim", "--mask-error", "0.3"])
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(tmp_path / "sim" / "truth.csv")) == 6
    proc = run_cli([*args, "-o", tmp_path / "bad", "--mask-error", "2"])
    assert proc.returncode != 0 and "mask-error" in proc.stderr
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------------------------
# simulate --structures


def write_structure_set(folder, chain):
    folder.mkdir()
    (folder / "trimer.pdb.gz").write_bytes(gzip.compress(pdb_text([chain], trimer_operators()).encode()))
    (folder / "monomer.cif.bz2").write_bytes(bz2.compress(cif_text([chain]).encode()))
    return folder


def test_simulate_structures_writes_classes_named_by_file(tmp_path, chain):
    folder = write_structure_set(tmp_path / "structures", chain)
    out = tmp_path / "sim"
    args = ["simulate", "-o", out, "--structures", folder, "--tomograms", "2", "--shape", "40", "96", "96"]
    proc = run_cli(args + ["--particles", "6", "--voxel-size", "5", "--resolution", "16", "--wedge", "60"])
    assert proc.returncode == 0, proc.stderr
    truth = pd.read_csv(out / "truth.csv")
    assert sorted(truth["class_name"].unique()) == ["monomer", "trimer"]
    assert truth.groupby(["tomogram", "class_name"]).size().tolist() == [3, 3, 3, 3]
    copies = truth.groupby("class_name")["copies"].first().to_dict()
    assert copies == {"monomer": 1, "trimer": 3}
    atoms = truth.groupby("class_name")["atoms"].first().to_dict()
    assert atoms == {"monomer": len(kept(chain)), "trimer": 3 * len(kept(chain))}
    definitions = {d["name"]: d for d in json.loads((out / "classes.json").read_text())["structures"]}
    assert definitions["trimer"]["copies"] == 3 and definitions["trimer"]["assembly"] == "1"
    for stem in ("TS_01", "TS_02"):
        with mrcfile.open(out / "data" / f"{stem}.mrc") as mrc:
            assert mrc.data.shape == (40, 96, 96)
            assert float(mrc.voxel_size.x) == pytest.approx(5.0)
        with h5py.File(out / "masks" / f"{stem}_instance_preds.h5") as f:
            mask = f["instances"][()]
        rows = truth[truth["tomogram"] == stem]
        assert sorted(np.unique(mask)[1:]) == sorted(rows["label"])


def test_simulate_structures_refuses_what_it_cannot_do(tmp_path, chain):
    folder = write_structure_set(tmp_path / "structures", chain)
    bad = tmp_path / "bad.pdb"
    bad.write_text("not a structure\n")
    base = ["simulate", "-o", tmp_path / "out", "--shape", "40", "96", "96", "--particles", "4", "--quiet"]
    cases = [
        (["--structures", folder, "--structures", bad], 4, str(bad)),
        (["--structures", tmp_path / "nowhere"], 4, "no such file"),
        (["--structures", folder, "--kind", "assemblies"], 3, "choose one"),
        (["--structures", folder, "--voxel-size", "1"], 3, "monomer is 43 Å across (43 voxels at 1 Å), more than"),
        (["--structures", folder / "trimer.pdb.gz"], 3, "at least 2 structures"),
        (["--structures", folder, "--resolution", "1e9"], 3, "needs a box of 360126541 voxels"),
    ]
    for extra, code, message in cases:
        proc = run_cli(base + extra)
        assert proc.returncode == code, (extra, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (tmp_path / "out").exists()


def test_evaluate_scores_a_set_of_structures(tmp_path, chain):
    """`evaluate --data` on a --structures set: every method scored; the radial descriptor tells a
    monomer from its trimer (three times the mass)."""
    from test_demo import tiny_config

    from subtomo_embed.core.config import load_config
    from subtomo_embed.core.train import Sitting
    from subtomo_embed.stages import demo as D
    from subtomo_embed.stages.evaluation import METHODS
    from subtomo_embed.stages.training import train_from_config

    config = tiny_config(tmp_path)
    quiet = Sitting(progress=False)
    ckpt = train_from_config(load_config(config), tmp_path / "model.ckpt", steps=1, device="cpu", sitting=quiet)
    folder = write_structure_set(tmp_path / "structures", chain)
    molecules = D.Molecules((folder,), voxel_size=5.0, resolution=16.0)
    truth = D.run_simulate(tmp_path / "sim", 2, (40, 96, 96), 8, snr=5.0, seed=4, molecules=molecules)
    assert truth["class_name"].value_counts().to_dict() == {"monomer": 8, "trimer": 8}
    scores = D.run_evaluate(tmp_path / "sim", ckpt, config, device="cpu")
    assert list(scores) == list(METHODS)
    assert scores["radial descriptor"][0] >= 0.9, scores
