"""The workflow's head-node functions, run by the real Nextflow runtime, agree with the one-machine
run's Python on real folders: which tomograms (stages/tomograms.py list_tomograms), which mask
(core/volumes.py find_mask), which picks file (core/picks.py picks_file_for), the errors for an empty or
missing folder or a missing listed tomogram, and the ``--set`` flags the tasks get.

A small script written here includes the functions from the offline copy's workflows/subtomo_embed.nf
(tests/pipeline/nf_runtime.py) and calls them in one ``nextflow run``; a call that ends in the
workflow's ``error()`` answers with its message (the exception ``error()`` raises, caught in the
script), and one more run shows that such an error ends a real run with its message."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from nf_runtime import nextflow, offline_copy, require_nextflow  # noqa: E402

from subtomo_embed.core.config_sections import STEPS  # noqa: E402

pytestmark = pytest.mark.slow

FUNCTIONS = "tomogramsIn; listedIn; maskCandidates; maskOf; picksFileFor; picksFilesIn; flags; stepFlags; stemOf"
# each call's value (paths as their text), or the message of the error() it ended with
SCRIPT = """\
include { FUNCTIONS } from 'WORKFLOW'

def plain(value) {
    return value instanceof Path ? value.toString() : value instanceof List ? value.collect { v -> plain(v) } : value
}

def answer(Closure call) {
    try {
        return [value: plain(call())]
    } catch (Exception err) {
        def cause = err instanceof java.lang.reflect.InvocationTargetException ? err.cause : err
        if (cause instanceof nextflow.exception.WorkflowScriptErrorException) {
            return [error: cause.message]
        }
        throw err
    }
}

workflow {
    def answers = [
CALLS
    ]
    file("${launchDir}/answers.json").text = groovy.json.JsonOutput.toJson(answers)
}
"""
# params for stepFlags() (a params file alone: no defaults), and a value that needs quoting (flags)
PARAMS = {
    "hyper_parameters": {"batch_size": 4},
    "visualization": {"distance": None},
    "min_particle_size": "12",  # `--min_particle_size 12` on Nextflow >= 26.04 (issue 26, 1)
    "max_particle_size": 12,
    "centers_patch_size": None,
    "awkward": 'it\'s "TS 01" $HOME `id` \\n; rm -rf /',
}
PICKS = ["TS_01.star", "TS_02_particles.csv", "TS_03.json", "TS_03_old.star", "TS_04_a.star", "TS_04_b.CSV"]
PICKS += ["TS_1.star", "notes.txt", "TS_06.STAR", "TS_08_b.star"]
PICK_STEMS = ["TS_01", "TS_02", "TS_03", "TS_04", "TS_05", "TS_06", "TS_07", "TS_1", "TS_08", "TS_08_b"]
MASKS = ["A_instance_preds.h5", "A.mrc", "B.mrc", "C.rec", "D_instance_preds_min-1_max-9.h5", "E.map"]
MASK_CASES = [("A", ".mrc", ""), ("B", ".mrc", ""), ("C", ".mrc", ""), ("D", ".mrc", "_min-1_max-9")]
MASK_CASES += [("D", ".mrc", ""), ("E", ".map", ""), ("F", ".mrc", "")]
# the workflow's maskOf against core/layout.py mask_candidates: stems (one the start of another, one with a
# dot), file extensions (.mrc: a candidate twice) and instances suffixes
MASK_ORDER_CASES = [
    (stem, extension, suffix)
    for stem in ("TS_01", "TS_01_a", "emd.v2")
    for extension in (".mrc", ".rec", ".map")
    for suffix in ("", "_min-1_max-9")
]
# names that are no candidate of TS_01 (whatever the extension and suffix): maskOf finds nothing either
NOT_MASKS = ["TS_01_instance_preds.mrc", "TS_01.h5", "TS_01_instance_preds_other.h5", "TS_011.mrc", "TS_01.MRC"]


def groovy(value) -> str:
    """A Python value as a Groovy literal (strings single-quoted, None null, lists as lists)."""
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ", ".join(groovy(v) for v in value) + "]"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def mask_order_cases(root: Path) -> dict[str, tuple[Path, tuple[str, str, str], int | None]]:
    """name -> (folder, (stem, extension, suffix), i): for each case and each i, a folder holding
    mask_candidates[i:] (the first of them that is not also an earlier candidate is the one to take:
    the order alone decides), and one holding only names that are no candidate (i None)."""
    from subtomo_embed.core import layout

    cases = {}
    for n, case in enumerate(MASK_ORDER_CASES):
        candidates = layout.mask_candidates(root / f"case_{n}", *case)
        for i in range(len(candidates)):
            cases[f"mask order: {''.join(case)} from {i}"] = (root / f"case_{n}" / str(i), case, i)
        cases[f"mask order: {''.join(case)} none"] = (root / f"case_{n}" / "none", case, None)
    return cases


def _touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("x")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("head_node")
    data = _touch(root / "data", "TS_10.mrc", "TS_02.mrc", "TS_01.mrc", ".hidden.mrc", "TS_03.rec")
    (data / "sub.mrc").mkdir()  # a folder is not a tomogram
    picks = _touch(root / "picks", *PICKS)
    (picks / "TS_05.star").mkdir()  # nor a picks file
    from subtomo_embed.core import layout

    for folder, case, i in mask_order_cases(root / "mask_order").values():
        names = [p.name for p in layout.mask_candidates(folder, *case)[i:]] if i is not None else NOT_MASKS
        _touch(folder, *names)
    return {
        "root": root,
        "data": data,
        "elsewhere": _touch(root / "elsewhere", "TS_50.mrc"),
        "empty": _touch(root / "empty"),
        "masks": _touch(root / "masks", *MASKS),
        "picks": picks,
    }


def tomogram_calls(f: dict[str, Path]) -> dict[str, tuple]:
    """name -> (test_files, train_files) of tomogramsIn(data, '.mrc', test_files, train_files)."""
    outside = str(f["elsewhere"] / "TS_50.mrc")
    return {
        "all": (None, None),
        "listed": (["TS_02.mrc"], ["TS_01.mrc"]),
        "a missing test file": (["TS_02.mrc", "TS_99.mrc"], None),
        "a missing train file": (None, ["TS_98.mrc"]),
        "a listed folder": (["sub.mrc"], None),
        # names with a folder part: refused, as the one-machine config (core/config.py) refuses them
        "all and an absolute train file": (None, [outside]),
        "an absolute test file": ([outside, "TS_10.mrc"], None),
        "a relative folder part": (["../data/TS_01.mrc"], None),
    }


def flag_settings() -> dict[str, dict]:
    from test_pipeline import STEP_OF, settings

    quoted = {"centers_file": PARAMS["awkward"], "visualization_files": [PARAMS["awkward"]]}
    return {**{process: settings(process) for process in STEP_OF}, "quoted": quoted}


@pytest.fixture(scope="module")
def pipeline(folders) -> Path:
    """The offline copy of the pipeline (the functions are included from its workflow file)."""
    require_nextflow()
    return offline_copy(folders["root"] / "pipeline")


@pytest.fixture(scope="module")
def answers(folders, pipeline) -> dict[str, dict]:
    """Every call of the tests below, in one ``nextflow run``: name -> {value} or {error}."""
    root, data, masks, picks = folders["root"], folders["data"], folders["masks"], folders["picks"]
    data_, masks_, picks_ = groovy(str(data)), groovy(str(masks)), groovy(str(picks))
    calls = {}
    for name, (test_files, train_files) in tomogram_calls(folders).items():
        calls[f"tomograms: {name}"] = f"tomogramsIn({data_}, '.mrc', {groovy(test_files)}, {groovy(train_files)})"
    calls["tomograms: empty"] = f"tomogramsIn({groovy(str(folders['empty']))}, '.mrc', null, null)"
    calls["tomograms: nowhere"] = f"tomogramsIn({groovy(str(root / 'nowhere'))}, '.mrc', null, null)"
    calls["listed"] = f"listedIn(file({data_}), ['TS_01.mrc', 'TS_02.mrc'], 'test_files')"
    for stem, extension, suffix in MASK_CASES:
        calls[f"mask: {stem}{extension}{suffix}"] = f"maskOf(file({masks_}), '{stem}', '{extension}', '{suffix}')"
    for name, (folder, case, _) in mask_order_cases(root / "mask_order").items():
        calls[name] = f"maskOf(file({groovy(str(folder))}), {', '.join(groovy(v) for v in case)})"
    for case in MASK_ORDER_CASES:
        calls[f"mask names: {''.join(case)}"] = f"maskCandidates({', '.join(groovy(v) for v in case)})"
    for stem in PICK_STEMS:
        # the other tomograms, as the workflow pairs them (TS_08 and TS_08_b together, apart from the rest)
        group = [s for s in PICK_STEMS if s.startswith("TS_08") == stem.startswith("TS_08")]
        others = groovy([s for s in group if s != stem])
        calls[f"picks: {stem}"] = f"picksFileFor(picksFilesIn({picks_}), '{stem}', {picks_}, {others})"
    for name, settings in flag_settings().items():
        calls[f"flags: {name}"] = f"flags(new groovy.json.JsonSlurper().parseText({groovy(json.dumps(settings))}))"
    for step in STEPS:
        calls[f"step: {step}"] = f"stepFlags('{step}')"
    calls["step: train on masks"] = "stepFlags('train', [instances_mask_folder: 'masks'])"
    calls["stem"] = "stemOf('TS_01.mrc', '.mrc')"

    run = root / "run"
    run.mkdir()
    lines = ",\n".join(f"        {groovy(name)}: answer {{ {call} }}" for name, call in calls.items())
    workflow = pipeline / "workflows" / "subtomo_embed.nf"
    script = SCRIPT.replace("FUNCTIONS", FUNCTIONS).replace("WORKFLOW", str(workflow)).replace("CALLS", lines)
    (run / "calls.nf").write_text(script)
    (run / "params.json").write_text(json.dumps(PARAMS))
    proc = nextflow("run", "calls.nf", "-params-file", "params.json", cwd=run, home=root / "nxf_home")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    found = json.loads((run / "answers.json").read_text())
    assert sorted(found) == sorted(calls)
    return found


# ------------------------------------------------------------------------------------------------
# tomograms


def test_tomograms_are_listed_as_the_one_machine_run_lists_them(answers, folders):
    from subtomo_embed.core.config import config_from_dict
    from subtomo_embed.core.errors import InputDataError
    from subtomo_embed.stages.tomograms import list_tomograms

    data = folders["data"]
    for name, (test_files, train_files) in tomogram_calls(folders).items():
        if "absolute" in name or "folder part" in name:
            continue  # refused: below
        got = answers[f"tomograms: {name}"]
        cfg = config_from_dict({"data_folder": str(data), "test_files": test_files, "train_files": train_files})
        try:
            expected = [str(p) for p in list_tomograms(cfg)]
        except InputDataError as err:
            assert got == {"error": str(err)}, name  # the same message: the missing tomogram named
            continue
        assert got == {"value": expected}, name
    assert answers["tomograms: all"]["value"] == [str(data / n) for n in ("TS_01.mrc", "TS_02.mrc", "TS_10.mrc")]
    assert answers["tomograms: listed"]["value"] == [str(data / "TS_02.mrc"), str(data / "TS_01.mrc")]
    assert answers["tomograms: a missing test file"] == {
        "error": f"{data / 'TS_99.mrc'}: tomogram listed for processing does not exist"
    }
    assert answers["tomograms: a missing train file"] == {
        "error": f"{data / 'TS_98.mrc'}: tomogram listed for processing does not exist"
    }


def test_listed_tomograms_with_a_folder_part_are_refused_as_the_one_machine_config_refuses_them(answers, folders):
    from subtomo_embed.core.config import config_from_dict
    from subtomo_embed.core.errors import ConfigError

    outside = str(folders["elsewhere"] / "TS_50.mrc")
    cases = {
        "all and an absolute train file": ("train_files", outside),
        "an absolute test file": ("test_files", outside),
        "a relative folder part": ("test_files", "../data/TS_01.mrc"),
    }
    for name, (key, listed) in cases.items():
        assert answers[f"tomograms: {name}"] == {
            "error": f"{key}: '{listed}' must be a tomogram file name without a folder part"
        }, name
        with pytest.raises(ConfigError, match="without a folder part"):
            config_from_dict({"data_folder": str(folders["data"]), key: [listed]})


def test_an_empty_or_missing_data_folder_is_an_error(answers, folders):
    from subtomo_embed.core.config import config_from_dict
    from subtomo_embed.core.errors import InputDataError
    from subtomo_embed.stages.tomograms import list_tomograms

    empty, nowhere = folders["empty"], folders["root"] / "nowhere"
    assert answers["tomograms: empty"] == {"error": f"data_folder {empty}: no '*.mrc' tomograms found (file_extension)"}
    assert answers["tomograms: nowhere"] == {"error": f"data_folder {nowhere} does not exist"}
    for folder in (empty, nowhere):  # errors on one machine too
        with pytest.raises(InputDataError, match=re.escape(str(folder))):
            list_tomograms(config_from_dict({"data_folder": str(folder)}))


def test_listed_names_are_in_the_data_folder(answers, folders):
    assert answers["listed"] == {"value": [str(folders["data"] / "TS_01.mrc"), str(folders["data"] / "TS_02.mrc")]}


def test_a_missing_listed_tomogram_ends_the_run_naming_it(folders, pipeline):
    """What error() does in a real run: the run ends (exit status 1) with the message, no stack trace."""
    root, data = folders["root"], folders["data"]
    run = root / "run_missing"
    run.mkdir()
    workflow = pipeline / "workflows" / "subtomo_embed.nf"
    (run / "missing.nf").write_text(
        f"include {{ tomogramsIn }} from '{workflow}'\n\n"
        f"workflow {{\n    tomogramsIn({groovy(str(data))}, '.mrc', ['TS_01.mrc'], ['TS_99.mrc'])\n}}\n"
    )
    proc = nextflow("run", "missing.nf", cwd=run, home=root / "nxf_home")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert f"{data / 'TS_99.mrc'}: tomogram listed for processing does not exist" in proc.stdout
    assert "Exception" not in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------------
# masks and picks


def test_masks_are_found_as_the_one_machine_run_finds_them(answers, folders):
    from subtomo_embed.core.volumes import find_mask

    for stem, extension, suffix in MASK_CASES:
        expected = find_mask(folders["masks"], stem, extension, suffix)
        assert answers[f"mask: {stem}{extension}{suffix}"] == {"value": str(expected) if expected else None}, stem
    assert answers["mask: A.mrc"] == {"value": str(folders["masks"] / "A_instance_preds.h5")}
    assert answers["mask: F.mrc"] == {"value": None}


def test_the_workflows_mask_rule_is_layouts_mask_candidates(answers, folders):
    """maskOf keeps a Groovy copy of core/layout.py mask_candidates: the same names, in the same order of
    preference, for every stem, file extension and instances suffix; nothing where no candidate is."""
    from subtomo_embed.core import layout
    from subtomo_embed.core.volumes import find_mask

    cases = mask_order_cases(folders["root"] / "mask_order")
    assert len(cases) == len(MASK_ORDER_CASES) * 5
    for name, (folder, case, i) in cases.items():
        candidates = layout.mask_candidates(folder, *case)
        present = {p.name for p in candidates[i:]} if i is not None else set()
        expected = next((p for p in candidates if p.name in present), None)
        assert answers[name] == {"value": None if expected is None else str(expected)}, name
        assert find_mask(folder, *case) == expected, name


def test_the_workflows_mask_names_are_layouts_mask_candidates(answers):
    """maskCandidates (maskOf's names, and the missing-mask error's) is layout.mask_candidates, in order."""
    from subtomo_embed.core import layout

    for case in MASK_ORDER_CASES:
        names = list(dict.fromkeys(p.name for p in layout.mask_candidates(Path("masks"), *case)))
        assert answers[f"mask names: {''.join(case)}"] == {"value": names}, case


def test_picks_files_are_paired_as_the_one_machine_run_pairs_them(answers, folders):
    from subtomo_embed.core.errors import InputDataError
    from subtomo_embed.core.picks import picks_file_for

    picks = folders["picks"]
    stems = [s for s in PICK_STEMS if not s.startswith("TS_08")]  # TS_08: the test below
    for stem in stems:
        got = answers[f"picks: {stem}"]
        try:
            expected = picks_file_for(picks, stem, frozenset(stems) - {stem})
        except InputDataError:
            assert "error" in got and f"several picks files for {stem}" in got["error"], (stem, got)
            continue
        assert got == {"value": str(expected) if expected else None}, stem
    assert answers["picks: TS_01"] == {"value": str(picks / "TS_01.star")}
    assert answers["picks: TS_07"] == {"value": None}
    assert str(picks) in answers["picks: TS_04"]["error"]  # two files: the folder named


def test_a_tomograms_own_picks_file_is_not_given_to_a_tomogram_whose_name_it_starts_with(answers, folders):
    """stages/centers.py pairs with the other tomograms' stems (``others``): TS_08_b.star is TS_08_b's."""
    from subtomo_embed.core.picks import picks_file_for

    picks, stems = folders["picks"], frozenset({"TS_08", "TS_08_b"})
    assert picks_file_for(picks, "TS_08", stems - {"TS_08"}) is None
    assert answers["picks: TS_08_b"] == {"value": str(picks / "TS_08_b.star")}
    assert answers["picks: TS_08"] == {"value": None}


# ------------------------------------------------------------------------------------------------
# flags and settings


def test_flags_are_written_as_the_tests_write_them(answers):
    """The --set flags of the workflow (Groovy's JsonOutput) equal test_pipeline.flags() for every
    process's settings, so the rendered scripts test_pipeline.py runs are the ones Nextflow would run."""
    from test_pipeline import flags

    for process, settings in flag_settings().items():
        if process != "quoted":
            assert answers[f"flags: {process}"] == {"value": flags(settings)}, process


def test_a_value_with_quotes_and_shell_characters_reaches_the_cli_as_given(answers):
    """Each flag is one shell word whatever its value holds (issue 26, 8): bash reads back the words."""
    words = answers["flags: quoted"]["value"]
    printed = subprocess.run(["bash", "-c", f"printf '%s\\n' {words}"], capture_output=True, text=True, check=True)
    lines = printed.stdout.splitlines()
    assert lines[0::2] == ["--set", "--set"]
    key, _, value = lines[1].partition("=")
    assert (key, json.loads(value)) == ("centers_file", PARAMS["awkward"])
    key, _, value = lines[3].partition("=")
    assert (key, json.loads(value)) == ("visualization_files", [PARAMS["awkward"]])


def test_a_step_gets_exactly_the_keys_params_holds_of_its_step(answers):
    """stepFlags: each key of the step's list (workflows/settings.nf) that params holds, in that order, as the
    CLI takes it ('12' given as text becomes 12); a key params lacks (a params file alone here, no defaults)
    is left out; the staging comes last."""
    from test_pipeline import flags, param_at

    from subtomo_embed.core.config_contract import step_keys

    as_numbers = {"min_particle_size": 12}  # '12' on the command line of Nextflow >= 26.04 (issue 26, 1)
    for step, keys in step_keys().items():
        want = {k: as_numbers.get(k, param_at(PARAMS, k)) for k in keys if param_at(PARAMS, k) is not KeyError}
        assert answers[f"step: {step}"] == {"value": flags(want)}, step
    assert "--set 'min_particle_size=12' --set 'max_particle_size=12'" in answers["step: extract"]["value"]
    train = answers["step: train on masks"]["value"]
    assert train.startswith("--set 'min_particle_size=12'") and train.endswith(
        "--set 'instances_mask_folder=\"masks\"'"
    )
    assert answers["stem"] == {"value": "TS_01"}
