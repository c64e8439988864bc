#!/usr/bin/env bash
# Create .venv-bench: a separate virtual environment for benchmarks/loader_bench.py, which
# compares the LAS loader with TorchGeo. TorchGeo needs torchvision, and PyPI's torchvision does
# not import beside the torch 2.13.0 CPU build of .venv, so this venv takes the
# torch 2.14.1 + torchvision 0.29.1 pair (pip finds both on this machine's disk on x86_64; a
# CUDA build, about 5.5 GB) and pins them with a constraints file so that installing torchgeo
# and las-builder cannot move them. TorchGeo 0.8.1 is the newest release for Python 3.11
# (0.9 and later require Python >= 3.12). .venv is never touched.
#
#   bash scripts/bench-venv.sh      # idempotent: nothing to do while .venv-bench/.installed is
#                                   # newer than pyproject.toml and this script
#   .venv-bench/bin/python benchmarks/loader_bench.py
set -euo pipefail

SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$SELF")/.."
PYTHON="${PYTHON:-python3}"
VENV="${BENCH_VENV:-.venv-bench}"
TORCH="${BENCH_TORCH:-2.14.1}"
TORCHVISION="${BENCH_TORCHVISION:-0.29.1}"
TORCHGEO="${BENCH_TORCHGEO:-0.8.1}"
MARKER="$VENV/.installed"

if [ -f "$MARKER" ] && [ "$MARKER" -nt pyproject.toml ] && [ "$MARKER" -nt "$SELF" ]; then
    echo "bench-venv: $VENV is up to date ($(cat "$MARKER"))"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "bench-venv: creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
else
    echo "bench-venv: $VENV exists; (re)installing its packages"
fi

CONSTRAINTS="$VENV/constraints.txt"
printf 'torch==%s\ntorchvision==%s\ntorchgeo==%s\n' "$TORCH" "$TORCHVISION" "$TORCHGEO" \
    >"$CONSTRAINTS"

# pip with the pins; the machine's extra local indexes warn about every package they lack.
pip_install() {
    "$VENV/bin/pip" install -q --disable-pip-version-check -c "$CONSTRAINTS" "$@" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

echo "bench-venv: installing torch==$TORCH torchvision==$TORCHVISION (several GB, once)"
pip_install "torch==$TORCH" "torchvision==$TORCHVISION"

echo "bench-venv: installing torchgeo==$TORCHGEO and las-builder (editable), torch pinned"
pip_install "torchgeo==$TORCHGEO" -e .

"$VENV/bin/python" -c "
import torch, torchgeo, torchvision, zarr
print(f'torch {torch.__version__} torchvision {torchvision.__version__} '
      f'torchgeo {torchgeo.__version__} zarr {zarr.__version__}')
" >"$MARKER.tmp"
mv "$MARKER.tmp" "$MARKER"
echo "bench-venv: done ($(cat "$MARKER"))"
