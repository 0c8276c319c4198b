"""The Nextflow pipeline, checked without the Nextflow runtime.

* every .nf and .config file passes the official language server (nf-lang parser + type checker);
* every process's ``script:`` and ``stub:`` block runs in bash, with real staged inputs and the
  real ``bin/`` executables, and makes its declared outputs;
* the Dockerfiles pass hadolint, no image is unpinned, and the example YAML validates against
  ``nextflow_schema.json`` (generated from the package's Config: tests/test_config_contract.py).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(REPO / "tests"))
JAR = REPO / ".venv" / "share" / "nf-lang" / "language-server-all.jar"
NF_FILES = sorted([*REPO.glob("*.nf"), *REPO.glob("workflows/*.nf"), *REPO.glob("modules/local/*/main.nf")])
CONFIG_FILES = sorted([*REPO.glob("*.config"), *REPO.glob("conf/*.config")])
import nf_runtime  # noqa: E402

MODULES = nf_runtime.process_modules()  # CLUSTER_KMEANS and CLUSTER_SPECTRAL share modules/local/cluster


# ------------------------------------------------------------------------------------------
# language server


@pytest.fixture(scope="module")
def language_server():
    if not JAR.is_file():
        pytest.fail(f"{JAR} missing: run `make nf-lang` (tests/pipeline/get_nf_language_server.sh)")
    if shutil.which("java") is None:
        pytest.fail("java (17+) is needed for the Nextflow language server")
    from nf_lang import LanguageServer

    server = LanguageServer(JAR, REPO)
    yield server
    server.close()


@pytest.mark.slow  # slow: the language server (Java) checks every file (1-3 min)
def test_every_nextflow_file_passes_the_language_server(language_server):
    """No error and no warning (unused variables, deprecated syntax...) in any file."""
    files = NF_FILES + CONFIG_FILES + [REPO / "tests" / "nf-test" / "nextflow.config"]
    assert len(NF_FILES) >= 9 and len(CONFIG_FILES) >= 7
    diags = language_server.diagnostics(files)
    assert set(diags) == set(files)
    found = [
        f"{path.name}:{d['range']['start']['line'] + 1}: severity {d.get('severity', 1)}: {d['message']}"
        for path, items in diags.items()
        for d in items
    ]
    assert found == []


def test_language_server_reports_a_broken_file(tmp_path):
    from nf_lang import LanguageServer, errors

    bad = tmp_path / "bad.nf"
    bad.write_text('process X {\n  script:\n  """\n  echo\n  """\n}\nworkflow {\n  X(\n}\n')
    server = LanguageServer(JAR, tmp_path)
    try:
        assert errors(server.diagnostics([bad]))
    finally:
        server.close()


# ------------------------------------------------------------------------------------------
# containers, pins, schema


def test_dockerfiles_pass_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    for dockerfile in (REPO / "containers").glob("Dockerfile.*"):
        proc = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_image_is_unpinned():
    refs = []
    for path in [*(REPO / "containers").glob("Dockerfile.*")]:
        text = path.read_text()
        args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))  # FROM ${BASE_IMAGE}: its default
        stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.M | re.I))  # FROM builder AS package
        refs += [
            re.sub(r"\$\{(\w+)\}", lambda m, args=args: args.get(m.group(1), m.group(0)), ref)
            for ref in re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
            if ref not in stages
        ]
    refs += re.findall(r"^From:\s*(\S+)", (REPO / "containers" / "subtomo-embed.def").read_text(), flags=re.M)
    pipeline_refs = re.findall(r"container_\w+\s*=\s*'([^']+)'", (REPO / "nextflow.config").read_text())
    assert len(refs) >= 3 and len(pipeline_refs) == 2
    for ref in refs + pipeline_refs:
        name, _, tag = ref.rpartition(":") if "@" not in ref else (ref, "", "digest")
        assert name and tag and "$" not in ref and tag not in ("latest", "dev", "main"), ref
    for ref in pipeline_refs:  # a release's digest (release.yml writes it), or the versioned tag it will push
        assert re.fullmatch(r"[\w./-]+(@sha256:[0-9a-f]{64}|:\d+\.\d+\.\d+-[\w.]+)", ref), ref


def test_lock_file_pins_every_package():
    text = (REPO / "requirements.lock").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+!\-]+", line) for line in lines)
    assert "torch==2.13.0" in lines


def test_example_config_validates_against_the_schema():
    import jsonschema

    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for name in ("subtomo_embeddings.yaml", "demo.yaml"):
        jsonschema.validate(yaml.safe_load((REPO / "configs" / name).read_text()), schema)
    bad = yaml.safe_load((REPO / "configs" / "subtomo_embeddings.yaml").read_text())
    bad["masking_type"] = 5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


# ------------------------------------------------------------------------------------------
# process blocks in bash


def block(process: str, section: str) -> str:
    """The shell template of a process's ``script:`` or ``stub:`` section."""
    text = MODULES[process].read_text()
    start = text.index(f"{section}:")
    first = text.index('"""', start)
    return text[first + 3 : text.index('"""', first + 3)]


def render(template: str, values: dict[str, str]) -> str:
    """Interpolate a Groovy GString the way Nextflow does for these blocks."""

    def sub(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no test value for ${{{name}}}: keep the test in step with the module")
        return str(values[name])

    out = re.sub(r"(?<!\\)\$\{([^}]+)\}|(?<!\\)\$([A-Za-z_][\w.]*)", sub, template)
    # Nextflow strips the block's common indentation (stripIndent) before running it
    return textwrap.dedent(out.replace("\\$", "$").replace("\\\\", "\\"))


def _task_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(
        os.environ, PATH=f"{REPO / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    env.pop("SUBTOMO_EMBED_BATCH_SIZE", None)
    return {**env, **(extra or {})}


def run_block(
    process: str, section: str, workdir: Path, values: dict[str, str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    script = render(block(process, section), {"task.process": process, **values})
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=workdir, env=_task_env(env), capture_output=True, text=True
    )
    assert proc.returncode == 0, f"{process} {section} failed:\n{script}\n{proc.stderr[-3000:]}"
    return proc


def stage(workdir: Path, *files: Path, into: str = ".") -> None:
    target = workdir / into
    target.mkdir(parents=True, exist_ok=True)
    for f in files:
        (target / f.name).symlink_to(f)


def flags(settings: dict) -> str:
    """``--set`` flags as the workflow's ``flags()`` writes them (values as JSON, which is YAML)."""
    return " ".join(f"--set '{key}={json.dumps(value, separators=(',', ':'))}'" for key, value in settings.items())


# The step (core/config_sections.py) whose keys each process gets, and what the workflow adds (staging).
STEP_OF = {
    "EXTRACT_PATCHES": ("extract", {}),
    "EMBED": ("embed", {}),
    # a run with picks: --picks and --centers_patch_size 9
    "PREDICT_CENTERS": ("predict_centers", {"centers_patch_size": 9}),
    "MERGE_EMBEDDINGS": ("merge", {}),
    "CLUSTER_KMEANS": ("kmeans", {}),
    "CLUSTER_SPECTRAL": ("spectral", {}),
    "VISUALIZE": ("visualize", {}),
    # TRAIN on masks (a run with --train true --hyper_parameters.max_steps 3): staged as masks/
    "TRAIN": ("train", {"hyper_parameters.max_steps": 3, "instances_mask_folder": "masks"}),
    # TRAIN with params.picks: one picks file for all tomograms, staged as picks/<file>
    "TRAIN_ON_PICKS": (
        "train",
        {
            "centers_patch_size": 9,
            "hyper_parameters.max_steps": 3,
            "instances_mask_folder": None,
            "centers_file": "picks/particles.star",
        },
    ),
}


@functools.cache
def profile_params() -> dict:
    """`-profile test`'s params as Nextflow resolves them (conf/test.config over conf/config_params.config)."""
    nf_runtime.require_nextflow()
    with tempfile.TemporaryDirectory(prefix="nxf_home_") as folder:
        home = Path(folder)
        pipeline = nf_runtime.offline_copy(home / "pipeline")
        return nf_runtime.resolved_config(pipeline, "test", home)["params"]


def param_at(params: dict, dotted: str, absent: object = KeyError) -> object:
    """The value at a dotted key of nested params, or ``absent`` (the workflow's paramAt)."""
    from subtomo_embed.core.config import dotted_value

    return dotted_value(params, dotted, absent)


def settings(process: str) -> dict:
    """The settings ``process`` gets on `-profile test`: its step's keys that params holds, and the staging."""
    from subtomo_embed.core.config_contract import step_keys

    step, extra = STEP_OF[process]
    held = {key: param_at(profile_params(), key) for key in step_keys()[step]}
    return {**{key: value for key, value in held.items() if value is not KeyError}, **extra}


# Every `${...}` of each process's script block, for a task staged as Nextflow stages it (the input
# files under their own names in the task folder; data/ and masks/ in the clustering and VISUALIZE
# tasks); `meta.id` is the tomogram's stem.
SCRIPT_VALUES = {  # "settings": the process whose flags() to use (settings())
    "EXTRACT_PATCHES": {
        "tomogram": "TS_01.mrc",
        "mask": "TS_01_instance_preds.h5",
        "regions_arg": "",
        "settings": "EXTRACT_PATCHES",
        "args": "",
    },
    "EMBED": {
        "patches": "TS_01_patches.h5",
        "checkpoint": "model.ckpt",
        "device": "cpu",
        "settings": "EMBED",
        "args": "",
    },
    "PREDICT_CENTERS": {
        "tomogram": "TS_01.mrc",
        "picks.name": "picks.star",
        "checkpoint": "model.ckpt",
        "device": "cpu",
        "settings": "PREDICT_CENTERS",
        "args": "",
    },
    "MERGE_EMBEDDINGS": {"settings": "MERGE_EMBEDDINGS", "args": ""},
    "CLUSTER_KMEANS": {"method": "kmeans", "settings": "CLUSTER_KMEANS", "args": ""},
    "CLUSTER_SPECTRAL": {"method": "spectral", "settings": "CLUSTER_SPECTRAL", "args": ""},
    "VISUALIZE": {"settings": "VISUALIZE", "args": ""},
    "TRAIN": {"checkpoint": "start/model.ckpt", "device": "cpu", "settings": "TRAIN", "args": ""},
}
# What beforeScript exports for EMBED and PREDICT_CENTERS (conf/modules.config), `-profile test`'s batch size.
TASK_ENVIRONMENT = {"SUBTOMO_EMBED_BATCH_SIZE": "4"}


def script_values(process: str, **overrides: str) -> dict[str, str]:
    """The values of every ``${...}`` in ``process``'s script block (``task.process`` included), for
    :func:`render`; keyword arguments replace some (``meta_id=`` sets ``meta.id``, ``picks_name=``
    ``picks.name``)."""
    given = SCRIPT_VALUES[process]
    values = {"task.process": process, "meta.id": "TS_01", **given, "settings": flags(settings(given["settings"]))}
    dotted = {"meta_id": "meta.id", "picks_name": "picks.name"}
    values.update({dotted.get(key, key): str(value) for key, value in overrides.items()})
    return values


def declared_outputs(process: str) -> list[str]:
    """The ``path`` patterns of a process's ``output:`` section."""
    text = MODULES[process].read_text()
    outputs = text[text.index("output:") : text.index("script:")]
    return re.findall(r'path\s*\(?\s*"([^"]+)"', outputs) + re.findall(r"path\s*\(?\s*'([^']+)'", outputs)


STEMS = ("TS_01", "TS_02")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Run every process's script block in order, each on the previous one's real outputs, staged as
    the workflow stages them."""
    from synthetic import make_checkpoint, make_dataset

    root = tmp_path_factory.mktemp("pipeline")
    data, masks = make_dataset(root, n_tomograms=2, n_instances=10)
    ckpt = make_checkpoint(root / "model.ckpt")
    work = {"root": root, "data": data, "masks": masks, "ckpt": ckpt}
    for stem in STEMS:
        w = work[f"extract_{stem}"] = root / f"extract_{stem}"
        w.mkdir()
        stage(w, data / f"{stem}.mrc", masks / f"{stem}_instance_preds.h5")
        run_block(
            "EXTRACT_PATCHES",
            "script",
            w,
            script_values("EXTRACT_PATCHES", meta_id=stem, tomogram=f"{stem}.mrc", mask=f"{stem}_instance_preds.h5"),
        )
        e = work[f"embed_{stem}"] = root / f"embed_{stem}"
        e.mkdir()
        stage(e, w / f"{stem}_patches.h5", ckpt)
        run_block(
            "EMBED",
            "script",
            e,
            script_values("EMBED", meta_id=stem, patches=f"{stem}_patches.h5"),
            env=TASK_ENVIRONMENT,
        )
    m = work["MERGE_EMBEDDINGS"] = root / "merge"
    m.mkdir()
    per_tomogram = sorted(
        (
            work[f"embed_{s}"] / f"{s}{suffix}"
            for s in STEMS
            for suffix in ("_embeds.h5", "_instance_labels.h5", "_instance_regions.csv")
        ),
        key=lambda f: f.name,
    )
    stage(m, *per_tomogram, into="per_tomogram")
    run_block("MERGE_EMBEDDINGS", "script", m, script_values("MERGE_EMBEDDINGS"))
    for process in ("CLUSTER_KMEANS", "CLUSTER_SPECTRAL", "VISUALIZE"):
        a = work[process] = root / process.lower()
        a.mkdir()
        stage(a, m / "embeddings.h5", m / "embeddings_table.csv")
        stage(a, *[data / f"{s}.mrc" for s in STEMS], into="data")
        stage(a, *[masks / f"{s}_instance_preds.h5" for s in STEMS], into="masks")
        # `path stars`: each tomogram's regions STAR (cluster STAR files, the explorer's selection)
        stage(a, *[work[f"embed_{s}"] / f"{s}_instance_regions.star" for s in STEMS])
        if process == "VISUALIZE":  # `path clusters`: both clusterings, so the projections are coloured by them
            stage(
                a,
                work["CLUSTER_KMEANS"] / "out" / "kmeans_clusters.h5",
                work["CLUSTER_SPECTRAL"] / "out" / "spectral_clusters.h5",
            )
        run_block(process, "script", a, script_values(process))
    return work


@pytest.mark.slow  # slow: runs a script block end to end
def test_predict_centers_script_embeds_the_picks_of_its_tomogram(tmp_path):
    from synthetic import make_checkpoint, make_dataset, write_picks

    data, masks = make_dataset(tmp_path, n_tomograms=2, n_instances=10)
    ckpt = make_checkpoint(tmp_path / "model.ckpt")
    picks = write_picks(tmp_path / "particles.star", masks)
    w = tmp_path / "work"
    w.mkdir()
    stage(w, data / "TS_02.mrc", ckpt)
    stage(w, picks, into="picks")
    run_block(
        "PREDICT_CENTERS",
        "script",
        w,
        script_values("PREDICT_CENTERS", meta_id="TS_02", tomogram="TS_02.mrc", picks_name=picks.name),
        env=TASK_ENVIRONMENT,
    )
    import pandas as pd
    import starfile

    star = starfile.read(w / "out" / "TS_02_instance_regions.star")["particles"]
    original = starfile.read(picks)
    assert list(star.columns) == [*original.columns, "rlnLabel", "rlnOpticsGroup"]  # RELION 5: with data_optics
    rows = len(pd.read_csv(w / "out" / "TS_02_instance_regions.csv"))
    assert len(star) == (original["rlnTomoName"] == "TS_02").sum() == rows
    assert not list(w.glob("out/TS_01*"))


@pytest.mark.slow  # slow: runs a script block end to end
def test_predict_centers_without_picks_for_its_tomogram_makes_no_outputs_and_exits_0(tmp_path):
    """The outputs are optional: a picks file for all tomograms may name none of this one's."""
    from synthetic import make_checkpoint, make_dataset, write_picks

    data, masks = make_dataset(tmp_path, n_tomograms=2, n_instances=10)
    import starfile

    picks = starfile.read(write_picks(tmp_path / "all.star", masks))
    starfile.write(picks[picks["rlnTomoName"] == "TS_01"], tmp_path / "only_ts01.star")
    w = tmp_path / "work"
    w.mkdir()
    stage(w, data / "TS_02.mrc", make_checkpoint(tmp_path / "model.ckpt"))
    stage(w, tmp_path / "only_ts01.star", into="picks")
    proc = run_block(
        "PREDICT_CENTERS",
        "script",
        w,
        script_values("PREDICT_CENTERS", meta_id="TS_02", tomogram="TS_02.mrc", picks_name="only_ts01.star"),
        env=TASK_ENVIRONMENT,
    )
    assert "TS_02: no picks, skipped" in proc.stderr
    assert not (w / "out").exists() or not [f for f in (w / "out").iterdir() if not f.name.startswith(".")]
    text = MODULES["PREDICT_CENTERS"].read_text()
    outputs = text[text.index("output:") : text.index("script:")]
    assert all("optional: true" in line for line in outputs.splitlines() if "emit:" in line and "versions" not in line)


@pytest.mark.slow  # slow: the chain runs every script block
def test_embed_takes_its_batch_size_from_the_environment(tmp_path, chain):
    """SUBTOMO_EMBED_BATCH_SIZE (beforeScript) sets the batch; without it the config's default applies."""
    stage(tmp_path, chain["extract_TS_01"] / "TS_01_patches.h5", chain["ckpt"])
    script = render(block("EMBED", "script"), script_values("EMBED", patches="TS_01_patches.h5"))
    for batch, env in (("3", {"SUBTOMO_EMBED_BATCH_SIZE": "3"}), ("10", {})):
        proc = subprocess.run(
            ["bash", "-euxo", "pipefail", "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=_task_env(env),
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        launched = [line for line in proc.stderr.splitlines() if line.startswith("+ subtomo-embed-patches")]
        assert len(launched) == 1
        assert ("hyper_parameters.batch_size=3" in launched[0]) == (batch == "3")


@pytest.mark.slow  # slow: the chain runs every script block
def test_extract_and_embed_scripts_make_their_outputs(chain):
    for stem in STEMS:
        assert (chain[f"extract_{stem}"] / f"{stem}_patches.h5").is_file()
        for suffix in ("_embeds.h5", "_instance_labels.h5", "_instance_regions.csv", "_instance_regions.star"):
            assert (chain[f"embed_{stem}"] / f"{stem}{suffix}").is_file()


@pytest.mark.slow  # slow: the chain runs every script block
def test_merge_and_analysis_scripts_make_their_outputs(chain):
    import h5py

    with h5py.File(chain["MERGE_EMBEDDINGS"] / "embeddings.h5") as f:
        assert f["embeddings"].shape[1] == 16 and list(f["number_of_samples"][()]) and len(f["number_of_samples"]) == 2
    assert (chain["CLUSTER_KMEANS"] / "out" / "kmeans_clusters.h5").is_file()
    clustered = sorted((chain["CLUSTER_KMEANS"] / "out").glob("*_instance_regions_kmeans_clustered.star"))
    assert len(clustered) == 2
    import starfile

    star = starfile.read(clustered[0])["particles"]  # the tomogram's predict STAR rows (RELION 5 columns) + rlnClass
    assert {"rlnTomoName", "rlnCenteredCoordinateXAngst", "rlnLabel", "rlnClass"} <= set(star.columns)
    assert (chain["CLUSTER_SPECTRAL"] / "out" / "spectral_clusters.h5").is_file()
    assert list((chain["VISUALIZE"] / "vis").glob("*.png"))


@pytest.mark.slow  # slow: the chain runs every script block
def test_clusterings_make_galleries_and_label_volumes_from_the_staged_data_and_masks(chain):
    """data/ and masks/ staged into the task: what the pipeline used to skip silently (issue 11, point 8)."""
    import mrcfile

    from subtomo_embed.core.volumes import read_instance_mask

    for process, method in (("CLUSTER_KMEANS", "kmeans"), ("CLUSTER_SPECTRAL", "spectral")):
        task = chain[process]
        assert list((task / "vis").glob(f"{method}_cluster_*_gallery.png")), process
        for stem in STEMS:
            volume = mrcfile.read(task / "out" / f"{stem}_clusters_{method}.mrc")
            mask = read_instance_mask(chain["masks"] / f"{stem}_instance_preds.h5")
            assert volume.shape == mask.shape and ((volume > 0) <= (mask > 0)).all()
    # VISUALIZE got both clusterings: a distance map per clustering, as after kmeans + spectral on one machine
    figures = {p.name for p in (chain["VISUALIZE"] / "vis").iterdir()}
    assert {"distance_map_by_kmeans.png", "distance_map_by_spectral.png"} <= figures


# ------------------------------------------------------------------------------------------
# the published files equal the one-machine run's


def publish_rules() -> dict[str, list[tuple[str, str, str]]]:
    """Per process (withName selector, `|` split): (pattern, prefix saveAs strips, 'results' or 'vis')
    from conf/modules.config's publishDir."""
    text = (REPO / "conf" / "modules.config").read_text()
    rules: dict[str, list[tuple[str, str, str]]] = {}
    for match in re.finditer(r"withName:\s*'([^']+)'\s*\{", text):
        body = _braced(text, match.end() - 1)
        if "publishDir" not in body:
            continue
        entries = re.findall(r"path:\s*\{([^}]*)\}.*?pattern:\s*'([^']+)'(.*?)(?=path:|\Z)", body, flags=re.S)
        for path, pattern, rest in entries:
            strip = re.search(r"replaceFirst\(/\^([^/\\]+)\\/", rest)
            where = "vis" if "visualization" in path else "results"
            for process in match.group(1).split("|"):
                rules.setdefault(process, []).append((pattern, strip.group(1) + "/" if strip else "", where))
    return rules


def _braced(text: str, start: int) -> str:
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1 : i]
    raise ValueError("unbalanced braces")


def _glob_to_regex(pattern: str) -> str:
    out = re.escape(pattern).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    return re.sub(r"\\\{([^}]*)\\\}", lambda m: "(" + "|".join(m.group(1).split(",")) + ")", out)


def published(process: str, task: Path, rules: dict) -> dict[str, Path]:
    """The names a task's outputs are published under, and their files: its declared outputs
    (Nextflow's globs skip hidden files), then each publishDir rule's pattern and saveAs."""
    outputs = set()
    for pattern in declared_outputs(process):
        pattern = pattern.replace("${meta.id}", "*")
        outputs |= {
            p.relative_to(task).as_posix() for p in task.glob(pattern) if p.is_file() and not p.name.startswith(".")
        }
    names = {}
    for pattern, strip, where in rules.get(process, []):
        for output in outputs:
            if re.fullmatch(_glob_to_regex(pattern), output) and not output.endswith("_config.yaml"):  # saveAs: null
                name = output[len(strip) :] if strip and output.startswith(strip) else output
                names[f"vis/{name}" if where == "vis" else name] = task / output
    return names


@pytest.mark.slow  # slow: the chain and the one-machine run
def test_pipeline_publishes_the_same_files_as_the_one_machine_run(chain, cli_env):
    """predict, kmeans, spectral, visualize with one config on one machine, against the rendered
    scripts' outputs published by conf/modules.config's rules: the same set of names."""
    from synthetic import write_config

    root = chain["root"]
    out = root / "one_machine"
    config = write_config(
        root / "one_machine.yaml",
        data_folder=chain["data"],
        instances_mask_folder=chain["masks"],
        prediction_folder=out,
        trained_model=chain["ckpt"],
        clustering_kmeans={"num_clusters": 3, "visualization": True},
        clustering_spectral={
            "num_clusters": 3,
            "estimate_num_clusters": False,
            "visualization": True,
            "n_neighbors": 5,
        },
    )
    for command in ("predict", "kmeans", "spectral", "visualize"):
        proc = subprocess.run(
            ["subtomo-embed", command, "-c", str(config)], env=cli_env, capture_output=True, text=True
        )
        assert proc.returncode == 0, f"{command}: {proc.stderr[-2000:]}"
    # the resolved <step>_config.yaml a one-machine step keeps is not published by the pipeline
    one_machine = {
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(out).parts)
        and not p.name.endswith("_config.yaml")
    }

    rules = publish_rules()
    pipeline: dict[str, Path] = {}
    for stem in STEMS:
        pipeline |= published("EXTRACT_PATCHES", chain[f"extract_{stem}"], rules)
        pipeline |= published("EMBED", chain[f"embed_{stem}"], rules)
    for process in ("MERGE_EMBEDDINGS", "CLUSTER_KMEANS", "CLUSTER_SPECTRAL", "VISUALIZE"):
        pipeline |= published(process, chain[process], rules)
    assert len(one_machine) > 30 and any(n.endswith("_gallery.png") for n in one_machine)
    assert any(n.endswith("_clusters_kmeans.mrc") for n in one_machine)
    assert set(pipeline) == one_machine, (
        f"only in the pipeline: {sorted(set(pipeline) - one_machine)}; "
        f"only on one machine: {sorted(one_machine - set(pipeline))}"
    )
    # what the nf-test files compare by md5: every CSV and STAR file, byte for byte
    tables = sorted(n for n in one_machine if n.endswith((".csv", ".star")))
    assert len(tables) > 15
    differ = [n for n in tables if pipeline[n].read_bytes() != (out / n).read_bytes()]
    assert differ == [], differ


def test_publish_rules_are_read_from_the_config():
    rules = publish_rules()
    assert set(rules) == {
        "EMBED",
        "PREDICT_CENTERS",
        "MERGE_EMBEDDINGS",
        "CLUSTER_KMEANS",
        "CLUSTER_SPECTRAL",
        "VISUALIZE",
        "TRAIN",
    }
    assert rules["TRAIN"] == [("finetuned.ckpt", "", "results")]  # under prediction_folder/training
    assert ("vis/*", "vis/", "vis") in rules["VISUALIZE"] and ("out/*", "out/", "results") in rules["VISUALIZE"]


@pytest.mark.parametrize("process", sorted(MODULES))
def test_stub_blocks_touch_every_declared_output(process, tmp_path):
    values = {"meta.id": "TS_01", "method": SCRIPT_VALUES[process].get("method", "")}
    run_block(process, "stub", tmp_path, values)
    for pattern in declared_outputs(process):
        pattern = pattern.replace("${meta.id}", "TS_01").replace("${method}", values["method"])
        assert list(tmp_path.glob(pattern)), f"{process} stub does not make {pattern}"


def test_train_script_fine_tunes_the_staged_checkpoint(tmp_path):
    """TRAIN on tomograms staged as data/, masks as masks/, the starting checkpoint as start/: a
    fine-tuned checkpoint without optimizer state that predict loads."""
    import torch
    from synthetic import make_checkpoint, make_dataset

    from subtomo_embed.core.model import load_model, read_checkpoint
    from subtomo_embed.core.train import OPTIMIZER_KEY

    data, masks = make_dataset(tmp_path / "inputs", n_tomograms=2, n_instances=10)
    start = make_checkpoint(tmp_path / "model.ckpt")
    w = tmp_path / "train"
    stage(w, *sorted(data.glob("*.mrc")), into="data")
    stage(w, *sorted(masks.iterdir()), into="masks")
    stage(w, start, into="start")
    run_block("TRAIN", "script", w, script_values("TRAIN"))
    tuned = read_checkpoint(w / "finetuned.ckpt")
    assert tuned["global_step"] == 3 and OPTIMIZER_KEY not in tuned
    before = read_checkpoint(start)["state_dict"]
    assert any(not torch.equal(before[k], tuned["state_dict"][k]) for k in before)
    _, network = load_model(w / "finetuned.ckpt")
    assert network["dim"] == 16


@pytest.mark.parametrize("layout", ["one file", "folder"])
def test_train_script_fine_tunes_on_the_staged_picks(tmp_path, layout):
    """TRAIN with params.picks: no masks staged, the picks as picks/ (one file for all tomograms, or the
    per-tomogram files the workflow paired); it trains on every tomogram's picks."""
    import starfile
    import torch
    from synthetic import make_checkpoint, make_dataset, write_picks

    from subtomo_embed.core.model import read_checkpoint

    data, masks = make_dataset(tmp_path / "inputs", n_tomograms=2, n_instances=10)
    start = make_checkpoint(tmp_path / "model.ckpt")
    picks = write_picks(tmp_path / "inputs" / "particles.star", masks)
    w = tmp_path / "train"
    stage(w, *sorted(data.glob("*.mrc")), into="data")
    stage(w, start, into="start")
    given = settings("TRAIN_ON_PICKS")
    if layout == "one file":
        stage(w, picks, into="picks")
    else:
        table = starfile.read(picks)
        for stem in STEMS:
            starfile.write(table[table["rlnTomoName"] == stem], tmp_path / "inputs" / f"{stem}.star")
        stage(w, *[tmp_path / "inputs" / f"{stem}.star" for stem in STEMS], into="picks")
        given["centers_file"] = "picks"
    proc = run_block("TRAIN", "script", w, script_values("TRAIN", settings=flags(given)))
    for stem in STEMS:
        assert f"{stem}: 10 picks for training" in proc.stderr
    assert not (w / "masks").exists()
    tuned = read_checkpoint(w / "finetuned.ckpt")
    assert tuned["global_step"] == 3
    before = read_checkpoint(start)["state_dict"]
    assert any(not torch.equal(before[k], tuned["state_dict"][k]) for k in before)
