#!/bin/sh
# The image's Python environment ($VIRTUAL_ENV), from uv.lock only: no second lock.
#   clab-install deps    VARIANT [TORCH_CPU_INDEX]   the locked dependencies
#   clab-install project VARIANT                     clab itself (editable: /app/shared)
#   clab-install export  DIR                         the cpu variant's requirement files
# VARIANT gpu: `uv sync --extra gpu`, the lock as it is.
# VARIANT cpu: every locked package but torch and what only PyPI's CUDA build of
#   torch needs (nvidia-*, cuda-*, triton), checked against the lock's hashes;
#   then torch==<the lock's version>+cpu from TORCH_CPU_INDEX, its own
#   dependencies held to the lock's versions; then a check that nothing else
#   came in and that torch has no CUDA.
set -eu
export UV_NO_CACHE=1 # the downloads would stay in the image's layer

usage() {
    echo "usage: clab-install deps|project gpu|cpu [TORCH_CPU_INDEX] | clab-install export DIR" >&2
    exit 2
}

# DIR/lock.txt: every locked package (no dev group, no extra), as constraints;
# DIR/without-torch.txt: the same less torch and what only torch needs, with hashes.
export_requirements() {
    mkdir -p "$1"
    uv export --frozen --no-dev --no-emit-project --no-header --no-annotate --no-hashes >"$1/lock.txt"
    uv export --frozen --no-dev --no-emit-project --no-header --no-annotate --prune torch \
        >"$1/without-torch.txt"
}

[ $# -ge 2 ] || usage
step=$1
case "$step" in
    deps | project) ;;
    export)
        export_requirements "$2"
        exit 0
        ;;
    *) usage ;;
esac
variant=$2
index=${3:-}
case "$variant" in
    gpu | cpu) ;;
    *)
        echo "clab-install: VARIANT must be gpu or cpu, not '$variant'" >&2
        exit 2
        ;;
esac

if [ "$variant" = gpu ]; then
    if [ "$step" = deps ]; then
        uv sync --frozen --no-dev --no-install-project --extra gpu
    else
        uv sync --frozen --no-dev --extra gpu
    fi
    exit 0
fi

if [ "$step" = project ]; then
    uv pip install --no-deps --editable .
    uv pip check
    python -m compileall -q shared # the services may run as a user who cannot write here
    exit 0
fi

if [ -z "$index" ]; then
    echo "clab-install: the cpu variant needs TORCH_CPU_INDEX (a package index with torch's CPU wheels)" >&2
    exit 2
fi
tmp=$(mktemp -d)
export_requirements "$tmp"
torch=$(sed -n 's/^torch==\([^ ;]*\).*/\1/p' "$tmp/lock.txt")
if [ -z "$torch" ]; then
    echo "clab-install: uv.lock has no torch" >&2
    exit 1
fi

uv venv --quiet "$VIRTUAL_ENV"
uv pip install --no-deps --require-hashes -r "$tmp/without-torch.txt"
uv pip install -c "$tmp/lock.txt" --index "torch-cpu=$index" "torch==$torch+cpu"

# Installed = the lock less the CUDA-only packages, at the lock's versions.
got=$(python -c 'import torch; print(torch.__version__, torch.version.cuda)')
if [ "$got" != "$torch+cpu None" ]; then
    echo "clab-install: torch is '$got', not $torch+cpu without CUDA" >&2
    exit 1
fi
uv pip freeze >"$tmp/installed.txt"
sed 's/[ ;].*//; s/==/ /' "$tmp/lock.txt" | sort -u >"$tmp/locked"
sed 's/==/ /; s/+cpu$//' "$tmp/installed.txt" | sort -u >"$tmp/have"
extra=$(comm -13 "$tmp/locked" "$tmp/have")
if [ -n "$extra" ]; then
    echo "clab-install: installed but not at the lock's version (package version):" >&2
    echo "$extra" >&2
    exit 1
fi
cuda=$(grep -iE '^(nvidia-|cuda-|triton==)' "$tmp/installed.txt" || true)
if [ -n "$cuda" ]; then
    echo "clab-install: CUDA packages in the cpu image: $cuda" >&2
    exit 1
fi
rm -rf "$tmp"
