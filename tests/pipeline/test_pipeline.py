"""The Nextflow pipeline, checked without the Nextflow runtime.

* every .nf and .config file passes the official language server (nf-lang parser + type checker);
* every process's ``script:`` and ``stub:`` block runs in bash, with real staged inputs and the
  real ``bin/`` executables, and makes its declared outputs;
* the Dockerfiles pass hadolint, no image is unpinned, the example YAML validates against
  ``nextflow_schema.json``, and every config key is a documented param.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
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
MODULES = {p.parent.name.upper(): p for p in REPO.glob("modules/local/*/main.nf")}


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


def test_every_nextflow_file_passes_the_language_server(language_server):
    from nf_lang import errors

    assert len(NF_FILES) >= 8 and len(CONFIG_FILES) >= 4
    diags = language_server.diagnostics(NF_FILES + CONFIG_FILES)
    assert set(diags) == set(NF_FILES + CONFIG_FILES)
    assert errors(diags) == []


def test_language_server_reports_a_broken_file(tmp_path):
    from nf_lang import LanguageServer, errors

    bad = tmp_path / "bad.nf"
    bad.write_text("process X {\n  script:\n  \"\"\"\n  echo\n  \"\"\"\n}\nworkflow {\n  X(\n}\n")
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
        refs += [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), ref)
                 for ref in re.findall(r"^FROM\s+(\S+)", text, flags=re.M)]
    refs += re.findall(r"^From:\s*(\S+)", (REPO / "containers" / "subtomo-embed.def").read_text(), flags=re.M)
    pipeline_refs = re.findall(r"container_\w+\s*=\s*'([^']+)'", (REPO / "nextflow.config").read_text())
    assert len(refs) >= 3 and len(pipeline_refs) == 2
    for ref in refs + pipeline_refs:
        name, _, tag = ref.rpartition(":") if "@" not in ref else (ref, "", "digest")
        assert name and tag and "$" not in ref and tag not in ("latest", "dev", "main"), ref
    for ref in pipeline_refs:  # a release's digest (release.yml writes it), or the versioned tag it will push
        assert re.fullmatch(r"[\w./-]+(@sha256:[0-9a-f]{64}|:\d+\.\d+\.\d+-[\w.]+)", ref), ref


def test_lock_file_pins_every_package():
    lines = [l for l in (REPO / "requirements.lock").read_text().splitlines() if l and not l.startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+!\-]+", l) for l in lines)
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


def test_every_config_key_is_a_documented_param():
    from subtomo_embed.core.config import Config

    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    documented = {k for group in schema["$defs"].values() for k in group["properties"]}
    config_text = (REPO / "nextflow.config").read_text()
    for field, info in Config.model_fields.items():
        if field == "source":
            continue
        key = info.alias or field
        assert key in documented, key
        assert re.search(rf"^\s+{key}\s+=", config_text, flags=re.M), f"{key} has no default in nextflow.config"


# ------------------------------------------------------------------------------------------
# process blocks in bash


def block(process: str, section: str) -> str:
    """The shell template of a process's ``script:`` or ``stub:`` section."""
    text = MODULES[process].read_text()
    start = text.index(f"{section}:")
    first = text.index('"""', start)
    return text[first + 3:text.index('"""', first + 3)]


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


def run_block(process: str, section: str, workdir: Path, values: dict[str, str]) -> subprocess.CompletedProcess:
    script = render(block(process, section), {"task.process": process, **values})
    env = dict(os.environ, PATH=f"{REPO / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}"
                                f"{os.environ['PATH']}")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=workdir, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, f"{process} {section} failed:\n{script}\n{proc.stderr[-3000:]}"
    versions = yaml.safe_load((workdir / "versions.yml").read_text())
    assert versions[process]["subtomo-embed"]
    return proc


def stage(workdir: Path, *files: Path, into: str = ".") -> None:
    target = workdir / into
    target.mkdir(parents=True, exist_ok=True)
    for f in files:
        (target / f.name).symlink_to(f)


EXTRACT_FLAGS = ("--set 'file_extension=\".mrc\"' --set 'min_particle_size=10' --set 'max_particle_size=null' "
                 "--set 'masking_type=1' --set 'expand_labels=2' --set 'parameters.data.patch_size=[12,12,12]' "
                 "--set 'parameters.data.min=0' --set 'parameters.data.max=1' --set 'parameters.data.mean=0' "
                 "--set 'parameters.data.std=1'")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Run every process's script block in order, each on the previous one's real outputs."""
    from synthetic import make_checkpoint, make_dataset

    root = tmp_path_factory.mktemp("pipeline")
    data, masks = make_dataset(root, n_tomograms=2, n_instances=10)
    ckpt = make_checkpoint(root / "model.ckpt")
    work = {}
    for stem in ("TS_01", "TS_02"):
        w = work[f"extract_{stem}"] = root / f"extract_{stem}"
        w.mkdir()
        stage(w, data / f"{stem}.mrc", masks / f"{stem}_instance_preds.h5")
        run_block("EXTRACT_PATCHES", "script", w, {
            "meta.id": stem, "tomogram": f"{stem}.mrc", "mask": f"{stem}_instance_preds.h5", "regions_arg": "",
            "settings": EXTRACT_FLAGS, "args": ""})
        e = work[f"embed_{stem}"] = root / f"embed_{stem}"
        e.mkdir()
        stage(e, w / f"{stem}_patches.h5", ckpt)
        run_block("EMBED", "script", e, {
            "meta.id": stem, "patches": f"{stem}_patches.h5", "checkpoint": ckpt.name, "device": "cpu",
            "settings": "--set 'contrastive=true' --set 'parameters.network.dim=16' --set 'mixed_precision=false'",
            "args": "--set hyper_parameters.batch_size=4"})
    m = work["merge"] = root / "merge"
    m.mkdir()
    per_tomogram = [work[f"embed_{s}"] / f"{s}{suffix}" for s in ("TS_01", "TS_02")
                    for suffix in ("_embeds.h5", "_instance_labels.h5", "_instance_regions.csv")]
    stage(m, *per_tomogram, into="per_tomogram")
    run_block("MERGE_EMBEDDINGS", "script", m, {"settings": "--set 'clustering_files=null'", "args": ""})
    for process, flags in (
        ("CLUSTER_KMEANS", "--set 'seed=0' --set 'clustering_kmeans.num_clusters=3' "
                           "--set 'clustering_kmeans.visualization=true'"),
        ("CLUSTER_SPECTRAL", "--set 'seed=0' --set 'clustering_spectral.num_clusters=3' "
                             "--set 'clustering_spectral.n_neighbors=5' --set 'clustering_spectral.visualization=true'"),
        ("VISUALIZE", "--set 'seed=0' --set 'visualization.distance=\"euclidean\"' "
                      "--set 'visualization.3d_umap=false'"),
    ):
        a = work[process] = root / process.lower()
        a.mkdir()
        stage(a, m / "embeddings.h5", m / "embeddings_table.csv")
        if process.startswith("CLUSTER"):  # `path stars`: each tomogram's regions STAR
            stage(a, *[work[f"embed_{s}"] / f"{s}_instance_regions.star" for s in ("TS_01", "TS_02")])
        run_block(process, "script", a, {"embeddings": "embeddings.h5", "table": "embeddings_table.csv",
                                         "settings": flags, "args": ""})
    return work


def test_predict_centers_script_embeds_the_picks_of_its_tomogram(tmp_path):
    from synthetic import make_checkpoint, make_dataset, write_picks

    data, masks = make_dataset(tmp_path, n_tomograms=2, n_instances=10)
    ckpt = make_checkpoint(tmp_path / "model.ckpt")
    picks = write_picks(tmp_path / "particles.star", masks)
    w = tmp_path / "work"
    w.mkdir()
    stage(w, data / "TS_02.mrc", ckpt)
    stage(w, picks, into="picks")
    run_block("PREDICT_CENTERS", "script", w, {
        "meta.id": "TS_02", "tomogram": "TS_02.mrc", "picks.name": picks.name, "checkpoint": ckpt.name,
        "device": "cpu", "settings": "--set 'centers_patch_size=9' --set 'parameters.data.patch_size=[12,12,12]' "
                                     "--set 'parameters.network.dim=16'", "args": "--set hyper_parameters.batch_size=4"})
    import pandas as pd
    import starfile

    star = starfile.read(w / "out" / "TS_02_instance_regions.star")
    original = starfile.read(picks)
    assert list(star.columns) == [*original.columns, "rlnLabel"]
    assert len(star) == (original["rlnTomoName"] == "TS_02").sum() == len(pd.read_csv(w / "out" / "TS_02_instance_regions.csv"))
    assert not list(w.glob("out/TS_01*"))


def test_extract_and_embed_scripts_make_their_outputs(chain):
    for stem in ("TS_01", "TS_02"):
        assert (chain[f"extract_{stem}"] / f"{stem}_patches.h5").is_file()
        for suffix in ("_embeds.h5", "_instance_labels.h5", "_instance_regions.csv", "_instance_regions.star"):
            assert (chain[f"embed_{stem}"] / f"{stem}{suffix}").is_file()


def test_merge_and_analysis_scripts_make_their_outputs(chain):
    import h5py

    with h5py.File(chain["merge"] / "embeddings.h5") as f:
        assert f["embeddings"].shape[1] == 16 and list(f["number_of_samples"][()]) and len(f["number_of_samples"]) == 2
    assert (chain["CLUSTER_KMEANS"] / "out" / "kmeans_clusters.h5").is_file()
    clustered = sorted((chain["CLUSTER_KMEANS"] / "out").glob("*_instance_regions_kmeans_clustered.star"))
    assert len(clustered) == 2
    import starfile

    star = starfile.read(clustered[0])  # the tomogram's predict STAR rows (RELION 5 columns too) + rlnClass
    assert {"rlnTomoName", "rlnCenteredCoordinateXAngst", "rlnLabel", "rlnClass"} <= set(star.columns)
    assert (chain["CLUSTER_SPECTRAL"] / "out" / "spectral_clusters.h5").is_file()
    assert list((chain["VISUALIZE"] / "vis").glob("*.png"))


@pytest.mark.parametrize("process", sorted(MODULES))
def test_stub_blocks_touch_every_declared_output(process, tmp_path):
    values = {"meta.id": "TS_01"}
    run_block(process, "stub", tmp_path, values)
    text = MODULES[process].read_text()
    outputs = text[text.index("output:"):text.index("script:")]
    for pattern in re.findall(r'path\s*\(?\s*"([^"]+)"', outputs) + re.findall(r"path\s*\(?\s*'([^']+)'", outputs):
        pattern = pattern.replace("${meta.id}", "TS_01")
        assert list(tmp_path.glob(pattern)), f"{process} stub does not make {pattern}"
