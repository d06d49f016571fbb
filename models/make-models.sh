#!/usr/bin/env bash
# Regenerates every artifact under models/: corpora, tokenizers, training, ONNX export, parity checks,
# int8 quantization, reference.json, evaluation (eval.json) and manifest.json, for edge and regional.
# Needs python3 (3.11) and PyPI only. Usage: models/make-models.sh [edge|regional ...]
# TIERGATE_TRAIN_STEPS=N overrides the training steps (quick smoke runs; the committed models use the defaults);
# TIERGATE_MODELS_OUT=DIR writes the model directories there instead of models/ (a smoke run that keeps them).
# Takes about 35 minutes on 2 shared cores (training is most of it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv/models"
PY="$VENV/bin/python"
MODELS=("${@:-edge regional}")
# shellcheck disable=SC2206
MODELS=(${MODELS[*]})

if [[ ! -x "$PY" ]]; then
    python3 -m venv "$VENV"
fi
"$PY" -m pip install --quiet --disable-pip-version-check -r "$ROOT/models/requirements.txt"

# Deterministic CPU execution; training shares the machine, so it runs at lower priority.
export PYTHONHASHSEED=0 JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:-}"
cd "$ROOT/models/scripts"

"$PY" corpus.py
for m in "${MODELS[@]}"; do
    echo "== $m"
    "$PY" tokenizer.py "$m"
    nice -n 10 "$PY" train.py "$m"
    "$PY" export_onnx.py "$m"
    "$PY" verify.py "$m"
    "$PY" quantize.py "$m"
    "$PY" reference.py "$m"
    nice -n 10 "$PY" evaluate.py "$m"
    "$PY" manifest.py "$m"
done
"$PY" sizes.py
"$PY" summary.py
