"""The workflow's head-node functions, run in real Groovy (tests/pipeline/groovy_eval.py), agree with
the one-machine run's Python on real folders: which tomograms, which mask, which picks file, and the
errors for an empty or missing folder. Channel operators and s3:// / gs:// need Nextflow (CI)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from groovy_eval import groovy  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
JAR = REPO / ".venv" / "share" / "nf-lang" / "language-server-all.jar"
WORKFLOW = REPO / "workflows" / "subtomo_embed.nf"


@pytest.fixture(scope="module")
def jar():
    if not JAR.is_file():
        pytest.fail(f"{JAR} missing: run `make nf-lang`")
    if shutil.which("java") is None:
        pytest.fail("java (17+) is needed to run Groovy")
    return JAR


def _touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("x")
    return folder


def test_picks_files_are_paired_as_the_one_machine_run_pairs_them(jar, tmp_path):
    from subtomo_embed.core.errors import InputDataError
    from subtomo_embed.core.picks import picks_file_for

    picks = _touch(
        tmp_path / "picks",
        "TS_01.star",
        "TS_02_particles.csv",
        "TS_03.json",
        "TS_03_old.star",
        "TS_04_a.star",
        "TS_04_b.CSV",
        "TS_1.star",
        "notes.txt",
        "TS_06.STAR",
    )
    (picks / "TS_05.star").mkdir()  # a folder is not a picks file
    stems = ["TS_01", "TS_02", "TS_03", "TS_04", "TS_05", "TS_06", "TS_07", "TS_1"]
    answers = groovy(jar, WORKFLOW, [f"picksFileFor(picksFilesIn('{picks}'), '{s}', '{picks}')" for s in stems])
    for stem, answer in zip(stems, answers):
        try:
            expected = picks_file_for(picks, stem)
        except InputDataError as err:
            assert "error" in answer and f"several picks files for {stem}" in answer["error"], (stem, answer, err)
            continue
        assert answer == {"value": str(expected) if expected else None}, stem
    assert answers[0] == {"value": str(picks / "TS_01.star")} and answers[6] == {"value": None}
    assert "error" in answers[3] and str(picks) in answers[3]["error"]  # TS_04: two files, the folder named


def test_masks_are_found_as_the_one_machine_run_finds_them(jar, tmp_path):
    from subtomo_embed.core.io import find_mask

    masks = _touch(
        tmp_path / "masks", "A_instance_preds.h5", "A.mrc", "B.mrc", "C.rec", "D_instance_preds_min-1_max-9.h5", "E.map"
    )
    cases = [
        ("A", ".mrc", ""),
        ("B", ".mrc", ""),
        ("C", ".mrc", ""),
        ("D", ".mrc", "_min-1_max-9"),
        ("D", ".mrc", ""),
        ("E", ".map", ""),
        ("F", ".mrc", ""),
    ]
    answers = groovy(jar, WORKFLOW, [f"maskOf(file('{masks}'), '{s}', '{e}', '{x}')" for s, e, x in cases])
    for (stem, ext, suffix), answer in zip(cases, answers):
        expected = find_mask(masks, stem, ext, suffix)
        assert answer == {"value": str(expected) if expected else None}, stem


def test_tomograms_are_listed_by_name_and_an_empty_or_missing_folder_is_an_error(jar, tmp_path):
    data = _touch(tmp_path / "data", "TS_10.mrc", "TS_02.mrc", "TS_01.mrc", ".hidden.mrc", "TS_03.rec")
    (data / "sub.mrc").mkdir()
    empty = _touch(tmp_path / "empty")
    answers = groovy(
        jar,
        WORKFLOW,
        [
            f"tomogramsIn('{data}', '.mrc', null)",
            f"tomogramsIn('{data}', '.mrc', ['TS_02.mrc', 'TS_99.mrc'])",
            f"tomogramsIn('{data}', '.mrc', ['TS_99.mrc'])",
            f"tomogramsIn('{empty}', '.mrc', null)",
            f"tomogramsIn('{tmp_path / 'nowhere'}', '.mrc', null)",
        ],
    )
    assert answers[0] == {"value": [str(data / n) for n in ("TS_01.mrc", "TS_02.mrc", "TS_10.mrc")]}
    assert answers[1] == {"value": [str(data / "TS_02.mrc")]}
    assert "none of test_files" in answers[2]["error"] and str(data) in answers[2]["error"]
    assert answers[3] == {"error": f"data_folder {empty}: no '*.mrc' tomograms found (file_extension)"}
    assert answers[4] == {"error": f"data_folder {tmp_path / 'nowhere'} does not exist"}


def test_flags_are_written_as_the_tests_write_them(jar):
    """The --set flags of the workflow (Groovy's JsonOutput) equal test_pipeline.flags() for every
    process's settings, so the rendered scripts the tests run are the ones Nextflow would run."""
    from test_pipeline import SETTINGS, flags

    calls = [f"flags(new groovy.json.JsonSlurper().parseText('''{json.dumps(s)}'''))" for s in SETTINGS.values()]
    for settings, answer in zip(SETTINGS.values(), groovy(jar, WORKFLOW, calls)):
        assert answer == {"value": flags(settings)}


def test_settings_default_when_a_section_is_partial(jar):
    calls = [
        "setting('hyper_parameters.batch_size', 10)",
        "setting('visualization.distance', 'x')",
        "setting('clustering_kmeans.num_clusters', 6)",
        "stemOf('TS_01.mrc', '.mrc')",
    ]
    answers = groovy(
        jar, WORKFLOW, calls, params={"hyper_parameters": {"batch_size": 4}, "visualization": {"distance": None}}
    )
    assert [a["value"] for a in answers] == [4, "x", 6, "TS_01"]
