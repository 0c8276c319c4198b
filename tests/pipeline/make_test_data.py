#!/usr/bin/env python3
"""Write the tiny dataset of `-profile test` (two tomograms, masks, a tiny checkpoint) to a folder.

    python tests/pipeline/make_test_data.py test_data
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthetic import make_checkpoint, make_dataset, write_picks  # noqa: E402


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "test_data")
    root.mkdir(parents=True, exist_ok=True)
    make_dataset(root, n_tomograms=2, n_instances=10)
    make_checkpoint(root / "model.ckpt")
    write_picks(root / "picks.star", root / "masks")  # RELION 5 picks at the instances' centroids (-profile test,picks)
    # placeholders for the module tests' stub runs (tests/nf-test/*.nf.test), which only stage them
    for name in ("TS_01_patches.h5", "TS_01_embeds.h5", "embeddings.h5", "embeddings_table.csv"):
        (root / name).touch()
    print(f"test data in {root}")


if __name__ == "__main__":
    main()
