#!/usr/bin/env bash
# Run here (a CPU machine with PyPI), before a device call: packs the two folders the call carries.
#   .data/cifar10-jpeg.tgz  the training split (16.5 MB) from ../shared/data (skipped without it)
#   .whl/                   wheels of what our code imports and the device image lacks:
#                           ml_collections (absent from the H200 image's package list, KINDS.md of
#                           2026-11-17); gpu_common.sh installs them there only if the project
#                           does not import without them
# Then: device call `bash experiments/gpu_speed.sh "$OUT"` with carry [".data", ".whl"].
# Both folders are ignored by git (.gitignore). Usage: bash experiments/gpu_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
shared="${SHARED:-../shared}"

mkdir -p .data .whl
if [ -d "$shared/data/cifar10-jpeg/train" ]; then
  [ -f .data/cifar10-jpeg.tgz ] || tar czf .data/cifar10-jpeg.tgz -C "$shared/data" cifar10-jpeg
else
  echo "gpu_prepare: no $shared/data/cifar10-jpeg/train here; the call's training runs use synthetic data" >&2
fi

# The device runs Python 3.12 on x86-64. ml_collections is pure Python; its own needs (absl-py,
# PyYAML) are in the image. One version of each package: two would stop the install there.
version=$($py -c "import importlib.metadata as m; print(m.version('ml_collections'))")
rm -f .whl/ml_collections-*.whl
$py -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "ml_collections==$version"
ls -la .data .whl
du -sh .data .whl
