#!/usr/bin/env bash
# GPU check (issue 30): benchmarks/gpu_check.py with the venv's python, its tables written into $OUT when
# that is set (the device machine's output folder), else into the folder given as the first argument.
#   bash benchmarks/gpu_check.sh OUTDIR [gpu_check.py options, e.g. --budget-s 300 --skip torch_compile]
#   OUT=/some/dir bash benchmarks/gpu_check.sh [options]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
python="${PYTHON:-$repo/.venv/bin/python}"

folder=""
if [[ $# -gt 0 && "$1" != -* ]]; then
    folder="$1"
    shift
fi
out="${OUT:-$folder}"
if [[ -z "$out" ]]; then
    echo "usage: bash benchmarks/gpu_check.sh OUTDIR [options]   (or set OUT)" >&2
    exit 2
fi
if [[ ! -x "$python" ]]; then
    echo "no python at $python: run 'make install' first (or set PYTHON)" >&2
    exit 2
fi
mkdir -p "$out"
cd "$repo"
echo "gpu_check: writing into $out" >&2
exec "$python" "$here/gpu_check.py" --out "$out" "$@"
