#!/usr/bin/env bash
# Download the wheels the GPU machine lacks (Python 3.12, manylinux x86-64) into one folder, for
# benchmarks/gpu_check.py to install there; print their sizes and fail if they exceed 60 MiB together
# (the device tool carries 64 MiB per call, the working tree included).
#
#   scripts/gpu_wheels.sh [DIR]          # DIR defaults to wheels/ at the repository root (git-ignored)
#
# What travels and why: faiss-cpu (CPU FAISS, the reference for exact search and the on-disk format),
# open_clip_torch + ftfy + wcwidth (ftfy's dependency; regex, timm, huggingface-hub are already there),
# qwen-vl-utils (its av dependency is only for video and is left out: 35 MB), pymupdf 1.x (no
# dependencies; 2.x is 69 MB and pulls in onnxruntime and more). All --no-deps.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/wheels}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
LIMIT_MIB=60
PACKAGES=(faiss-cpu open_clip_torch ftfy wcwidth qwen-vl-utils "pymupdf>=1.24,<2")

mkdir -p "$DIR"
rm -f "$DIR"/*.whl  # one version of each: two would stop the install there
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$DIR" "${PACKAGES[@]}"

total=0
for wheel in "$DIR"/*.whl; do
    size=$(stat -c %s "$wheel")
    total=$((total + size))
    printf '%8.2f MiB  %s\n' "$(echo "$size / 1048576" | bc -l)" "$(basename "$wheel")"
done
printf '%8.2f MiB  total (limit %d MiB)\n' "$(echo "$total / 1048576" | bc -l)" "$LIMIT_MIB"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # what else travels with them: tracked and untracked-not-ignored files (64 MiB in all per call)
    tree=$(cd "$ROOT" && { git ls-files -z; git ls-files -z --others --exclude-standard; } \
        | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
    printf '%8.2f MiB  working tree that travels too; with the wheels %.2f of 64 MiB\n' \
        "$(echo "$tree / 1048576" | bc -l)" "$(echo "($tree + $total) / 1048576" | bc -l)"
    if [ $((tree + total)) -gt $((64 * 1048576)) ]; then
        echo "warning: working tree + wheels exceed 64 MiB: ignore large untracked files before the run." >&2
    fi
fi
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "error: the wheels in $DIR exceed $LIMIT_MIB MiB together; the device tool carries 64 MiB per call." >&2
    exit 1
fi
