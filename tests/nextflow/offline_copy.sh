#!/usr/bin/env bash
# A copy of the pipeline that runs without the plugin registry: the shipped files, with the nf-schema
# lines taken out (the plugins block, its include and the validateParameters() call). Nothing else
# differs; tests/nextflow/test_nextflow.py checks that diff and validates the params against
# nextflow_schema.json with jsonschema instead.
#   tests/nextflow/offline_copy.sh DEST [CHECKOUT]   (CHECKOUT: another copy of the repository; default this one)
set -euo pipefail

dest=${1:?usage: offline_copy.sh DEST [CHECKOUT]}
repo=${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
mkdir -p "$dest"
tar -C "$repo" --exclude=__pycache__ -cf - main.nf nextflow.config nextflow_schema.json conf modules workflows bin \
    | tar -C "$dest" -xf -
# main.nf: the include of the plugin and the call
sed -i -e "/from 'plugin\/nf-schema'/d" -e '/^\s*validateParameters()\s*$/d' "$dest/main.nf"
# nextflow.config: the plugins block (three lines)
sed -i -e '/^plugins {$/,/^}$/d' "$dest/nextflow.config"
