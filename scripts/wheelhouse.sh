#!/usr/bin/env bash
# kms and every runtime dependency (with the postgres extra) as wheels in one directory, for
# deploy/Dockerfile to install without network: `make wheelhouse` writes build/wheelhouse.
# The dependencies are the wheels for the image's Python, not this machine's: Debian bookworm's
# CPython 3.11 on this machine's architecture (manylinux up to glibc 2.36).
#
#   scripts/wheelhouse.sh PYTHON DIRECTORY     (PYTHON: a Python with pip, e.g. .venv/bin/python)
set -euo pipefail
python=$1
directory=$2
arch=$(uname -m)

# The same sources make the same kms wheel, byte for byte, so an image build reuses its cached
# layers when nothing changed.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800}

rm -rf "$directory"
mkdir -p "$directory"
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$directory" .
wheel=$(ls "$directory"/kms-*.whl)
platforms=()
for glibc in 2_36 2_35 2_34 2_28 2_27 2_26 2_24 2_17 2_12 2_5; do
  platforms+=(--platform "manylinux_${glibc}_${arch}")
done
platforms+=(--platform "manylinux2014_${arch}" --platform "manylinux2010_${arch}" --platform "manylinux1_${arch}")
"$python" -m pip download --quiet --only-binary=:all: --implementation cp --python-version 3.11 \
  --abi cp311 --abi abi3 --abi none "${platforms[@]}" --dest "$directory" "$wheel[postgres]"
