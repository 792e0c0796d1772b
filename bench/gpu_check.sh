#!/usr/bin/env bash
# One-GPU check (about 5 minutes): bash bench/gpu_check.sh OUT_DIR, from the repo root after `make install`.
# Writes OUT_DIR/gpu_check.json (+ nvidia-smi.txt, gpu_check.log); copy the JSON to bench/results/ with the date.
set -euo pipefail
OUT=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
timeout 540 "$PY" bench/gpu_check.py "$OUT" 2>&1 | tee "$OUT/gpu_check.log"
