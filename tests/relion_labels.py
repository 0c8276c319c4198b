"""What every STAR file we write must look like (RELION 5's conventions), checked on a file read back
with ``starfile``: a ``data_optics`` block then ``data_particles``, RELION's own column names.

RELION_LABELS are labels defined in RELION's ``src/metadata_label.h`` (3dem/relion, master at
73f0a3c0c9dfa513ca0456ef8f66dd3eb5c35cdb, 2025-10-21: ``EMDL::addLabel(..., "rlnTomoName", ...)``,
``"rlnClassNumber"``, ``"rlnCenteredCoordinateXAngst"``, ...): the ones our writers use or keep
from RELION picks. RELION has no ``rlnClass``: CryoSiam's cluster column is kept for its readers,
and written again as RELION's ``rlnClassNumber``. CRYOSIAM_LABELS are CryoSiam's own columns (RELION
keeps a label it does not know as text, so they travel along).
"""

from __future__ import annotations

from pathlib import Path

RELION_LABELS = frozenset(
    # optics groups (data_optics)
    """rlnOpticsGroup rlnOpticsGroupName rlnImagePixelSize rlnTomoTiltSeriesPixelSize rlnMicrographOriginalPixelSize
    rlnVoltage rlnSphericalAberration rlnAmplitudeContrast rlnImageSize rlnImageDimensionality
    rlnTomoSubtomogramBinning rlnCtfDataAreCtfPremultiplied"""
    # particles (data_particles)
    """ rlnTomoName rlnTomoParticleName rlnMicrographName rlnCoordinateX rlnCoordinateY rlnCoordinateZ
    rlnCenteredCoordinateXAngst rlnCenteredCoordinateYAngst rlnCenteredCoordinateZAngst
    rlnAngleRot rlnAngleTilt rlnAnglePsi rlnClassNumber rlnAutopickFigureOfMerit""".split()
)
CRYOSIAM_LABELS = frozenset({"rlnLabel", "rlnArea", "rlnClass", *(f"rlnBbox-{i}" for i in range(6))})
OPTICS = ["rlnOpticsGroup", "rlnOpticsGroupName"]  # every optics block starts with these


def check_relion_star(path: Path, *, clustered: bool, pixel_size: float | None = None):
    """``path`` read back with ``starfile``: the two blocks, RELION 5's names, every particle in a
    listed optics group; with ``clustered``, the cluster as ``rlnClass`` and ``rlnClassNumber``; with
    ``pixel_size``, the optics block's ``rlnImagePixelSize``. Returns (optics, particles)."""
    import numpy as np
    import starfile

    blocks = starfile.read(path, always_dict=True)
    assert list(blocks) == ["optics", "particles"], (path, list(blocks))
    optics, particles = blocks["optics"], blocks["particles"]
    assert list(optics.columns[:2]) == OPTICS, optics.columns
    for name in [*optics.columns, *particles.columns]:
        assert name in RELION_LABELS or name in CRYOSIAM_LABELS, f"{path.name}: {name} is not a RELION label"
    assert not set(optics.columns[1:]) & set(particles.columns), "an optics column left in the particles"
    assert {"rlnTomoName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnOpticsGroup"} <= set(
        particles.columns
    )
    assert set(particles["rlnOpticsGroup"]) <= set(optics["rlnOpticsGroup"])
    assert not optics["rlnOpticsGroupName"].duplicated().any()
    if clustered:
        assert particles["rlnClassNumber"].tolist() == particles["rlnClass"].tolist()
    if pixel_size is not None:
        np.testing.assert_allclose(optics["rlnImagePixelSize"].to_numpy(np.float64), pixel_size)
    return optics, particles
