#!/usr/bin/env python3
"""Write the tiny dataset of `-profile test` (two tomograms, masks, picks, a tiny checkpoint) to a
folder, and with --expected what the one-machine run makes of it, for the nf-test files to compare:

    python tests/pipeline/make_test_data.py test_data [--expected]

--expected runs `subtomo-embed predict, kmeans, spectral, visualize` (and `predict-centers` on the
picks) with the test profile's settings (TEST_CONFIG, kept equal to conf/test.config's params by
tests/pipeline/test_pipeline.py) into test_data/expected/ and test_data/expected_picks/, and writes
test_data/expected.json: every published name (relative to the results folder) and the md5 of every
CSV and STAR file, the text files whose bytes are deterministic.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthetic import make_checkpoint, make_dataset, write_config, write_picks  # noqa: E402

# the params of conf/test.config, as write_config keys (a__b is b inside a)
TEST_CONFIG = {
    "min_particle_size": 10,
    "expand_labels": 2,
    "clustering_kmeans": {"num_clusters": 3, "visualization": True},
    "clustering_spectral": {"num_clusters": 3, "estimate_num_clusters": False, "visualization": True, "n_neighbors": 5},
    "parameters__data__patch_size": [12, 12, 12],
    "parameters__network__dim": 16,
    "hyper_parameters__batch_size": 4,
}
PICKS_PATCH_SIZE = 9  # centers_patch_size of the picks tests (tests/nf-test/main.nf.test)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def published(folder: Path) -> list[str]:
    """The results, less hidden files and the resolved ``<step>_config.yaml`` a one-machine step keeps beside
    its outputs (a pipeline task's would name its own staging folders; the pipeline does not publish them)."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and not p.name.endswith("_config.yaml")
    )


def one_machine_run(root: Path, name: str, commands: list[str], **extra) -> dict:
    out = root / name
    config = write_config(
        root / f"{name}.yaml",
        data_folder=root / "data",
        instances_mask_folder=root / "masks",
        prediction_folder=out,
        trained_model=root / "model.ckpt",
        **TEST_CONFIG,
        **extra,
    )
    for command in commands:
        subprocess.run(["subtomo-embed", command, "-c", str(config)], check=True)
    names = published(out)
    return {"files": names, "md5": {n: md5(out / n) for n in names if n.endswith((".csv", ".star"))}}


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    root = Path(args[0] if args else "test_data").absolute()
    root.mkdir(parents=True, exist_ok=True)
    make_dataset(root, n_tomograms=2, n_instances=10)
    make_checkpoint(root / "model.ckpt")
    write_picks(root / "picks.star", root / "masks")  # RELION 5 picks at the instances' centroids (-profile test,picks)
    if "--expected" in sys.argv:
        expected = {
            "masks": one_machine_run(root, "expected", ["predict", "kmeans", "spectral", "visualize"]),
            "picks": one_machine_run(
                root,
                "expected_picks",
                ["predict-centers", "kmeans", "spectral", "visualize"],
                centers_file=root / "picks.star",
                centers_patch_size=PICKS_PATCH_SIZE,
            ),
        }
        (root / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"test data in {root}")


if __name__ == "__main__":
    main()
