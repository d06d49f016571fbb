#!/usr/bin/env bash
# Puts the ONNX Runtime shared library where tiergate looks for it: .tools/onnxruntime/.
# It comes from the pinned PyPI wheel (the only registry reachable here), checked by sha256.
# The wheel is only unpacked, never installed. Idempotent: does nothing when the library is there.
set -euo pipefail

ORT_VERSION=1.31.1
WHEEL=onnxruntime-${ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl
WHEEL_SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.tools/onnxruntime"
lib="$dest/libonnxruntime.so.${ORT_VERSION}"

if [ -f "$lib" ]; then
  echo "onnxruntime ${ORT_VERSION}: $lib"
  exit 0
fi
if [ "$(uname -m)" != "x86_64" ]; then
  echo "fetch-onnxruntime: only x86_64 Linux is pinned here; set ORT_DYLIB_PATH to your own libonnxruntime.so (>= 1.31)" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.11 --platform manylinux_2_28_x86_64 \
  "onnxruntime==${ORT_VERSION}" -d "$tmp"
echo "${WHEEL_SHA256}  $tmp/${WHEEL}" | sha256sum --check --quiet
python3 -m zipfile -e "$tmp/${WHEEL}" "$tmp/unpacked"
mkdir -p "$dest"
cp "$tmp/unpacked/onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}" "$lib"
ln -sf "libonnxruntime.so.${ORT_VERSION}" "$dest/libonnxruntime.so"
echo "onnxruntime ${ORT_VERSION}: $lib"
