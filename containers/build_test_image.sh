#!/usr/bin/env bash
# Build containers/Dockerfile.cpu (or .cuda) here with podman, as the in-image tests use it (`make test-containers`).
#   containers/build_test_image.sh [TAG [cpu|cuda]]   (default localhost/subtomo-embed:test-cpu, cpu)
# The production file, built with two arguments changed:
#   BASE_IMAGE    a Debian bookworm base made with mmdebstrap and imported into podman
#                 (localhost/subtomo-embed-base:bookworm; made once, when missing) - no registry needed
#   TORCH_SOURCE  --find-links to a local folder holding a torch 2.13.0 wheel when there is one
#                 ($SUBTOMO_TORCH_WHEELS, the repository's .wheels/ that `make wheels` fills, $PIP_FIND_LINKS or
#                 pip's find-links setting), else PyTorch's index. Where only PyPI is reachable (our CI) that
#                 wheel is PyPI's CUDA build with its nvidia-* wheels: the test "CPU" image then carries CUDA
#                 torch too (it runs on the CPU), and the CUDA image is the same venv under another label.
# The host's CA bundle is mounted for pip (PIP_CERT) in case the package index is reached through a
# TLS-inspecting proxy. Mounts are build-time only: nothing of the host is copied into the image.
# Layer caching makes a rebuild after a source change take seconds.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tag=${1:-localhost/subtomo-embed:test-cpu}
flavour=${2:-cpu}
[[ $flavour == cpu || $flavour == cuda ]] || { echo "build_test_image: flavour $flavour is not cpu or cuda" >&2; exit 2; }
base=${SUBTOMO_BASE_IMAGE:-localhost/subtomo-embed-base:bookworm}
podman=(podman --runtime runc --cgroup-manager cgroupfs)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

seconds() { echo $((SECONDS - $1)); }

if ! "${podman[@]}" image exists "$base"; then
    start=$SECONDS
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates,procps \
        bookworm "$work/base.tar"
    "${podman[@]}" import --quiet --change 'CMD ["/bin/bash"]' "$work/base.tar" "$base" >/dev/null
    rm -f "$work/base.tar"
    echo "build_test_image: base image $base made in $(seconds "$start") s" >&2
fi

torch_wheels() {
    local dir
    for dir in ${SUBTOMO_TORCH_WHEELS:-} "$repo/.wheels" ${PIP_FIND_LINKS:-} \
        $(python3 -m pip config list 2>/dev/null | sed -n "s/^[a-z:.]*find-links='\(.*\)'$/\1/p"); do
        if compgen -G "$dir/torch-2.13.0[-+]*.whl" >/dev/null; then
            echo "$dir"
            return
        fi
    done
}

# mounted over paths every Debian base has (/mnt, the CA bundle), so the image keeps no mount points
build_args=(--build-arg "BASE_IMAGE=$base")
mounts=()
wheels=$(torch_wheels)
if [[ -n $wheels ]]; then
    build_args+=(--build-arg "TORCH_SOURCE=--find-links=/mnt")
    mounts+=(-v "$wheels:/mnt:ro")
fi
ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
if [[ -f $ca ]]; then
    build_args+=(--build-arg "PIP_CERT=/etc/ssl/certs/ca-certificates.crt")
    mounts+=(-v "$ca:/etc/ssl/certs/ca-certificates.crt:ro")
fi

# a small build context: the files the Dockerfile copies, without caches
mkdir "$work/context"
tar -C "$repo" --exclude=__pycache__ --exclude='*.egg-info' -cf - \
    pyproject.toml requirements.lock README.md src bin containers | tar -C "$work/context" -xf -

image_id() { "${podman[@]}" image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true; }
previous=$(image_id)
start=$SECONDS
"${podman[@]}" build --quiet --layers --pull=never --network host \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 "${build_args[@]}" "${mounts[@]}" \
    -f "$work/context/containers/Dockerfile.$flavour" -t "$tag" "$work/context" >/dev/null
echo "build_test_image: $tag built in $(seconds "$start") s" \
    "($("${podman[@]}" image inspect --format '{{.Size}}' "$tag") bytes)" >&2
# the image this one replaces, so that rebuilds do not pile up (cached layers stay)
if [[ -n $previous && $previous != "$(image_id)" ]]; then
    "${podman[@]}" rmi "$previous" >/dev/null 2>&1 || true
fi
