#!/usr/bin/env bash
# The first run on a lent GPU, in one call (about 8 minutes by default):
#   1. every `pytest -m gpu` test (tests/test_gpu.py, tests/test_loader.py's CUDA check),
#   2. `satpipe bench all --device cuda` (JSON + markdown),
#   3. scripts/gpu_measure.py: SmoothGrad-50 ResNet-10 on 50k 32x32 images with/without
#      channels_last, bf16 and torch.compile; SAT and PGD-SAT ResNet-10 epochs, loader resident
#      vs streaming; AutoAttack standard on 1000 images,
# each step under its share of the time budget, everything written under $OUT (default
# ./gpu-check-out): env.txt, gpu-tests.txt/.xml, bench-all.json/.md, measurements.json/.md,
# summary.md (one line per step: status and seconds).
#
#   scripts/gpu-check.sh [--budget SECONDS] [--out DIR] [--cpu-smoke]
#
# --cpu-smoke: the same steps on a CPU at tiny sizes (bench --quick on one part, measurements
# --tiny) in a few minutes, to check the script itself; the gpu tests are then all skipped.
# A step that runs past its share is stopped and marked "timed out" in summary.md; the steps
# after it still run. bench all writes its JSON at the end: GPU_CHECK_BENCH_FLAGS=--quick
# trades figures for time when the budget is short.
set -uo pipefail

BUDGET=480
OUT_DIR="${OUT:-gpu-check-out}"
SMOKE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) BUDGET="$2"; shift 2 ;;
    --out) OUT_DIR="$2"; shift 2 ;;
    --cpu-smoke) SMOKE=1; shift ;;
    -h|--help) sed -n '2,/^set /{/^set /d;p}' "$0"; exit 0 ;;
    *) echo "gpu-check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$BUDGET" in
  ''|*[!0-9]*) echo "gpu-check.sh: --budget must be whole seconds, got '$BUDGET'" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.." || exit 2
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
mkdir -p "$OUT_DIR" || exit 2
export SATPIPE_NO_PROGRESS=1
START=$(date +%s)
SUMMARY="$OUT_DIR/summary.md"
FAILED=0

if [ "$SMOKE" = 1 ]; then
  # One quick bench part only: the CPU smoke checks the script, not the figures.
  DEVICE=cpu; BENCH_FLAGS=(--quick --parts models); MEASURE_FLAGS=(--tiny)
else
  DEVICE=cuda; BENCH_FLAGS=(); MEASURE_FLAGS=()
fi
# Extra `satpipe bench all` flags, e.g. GPU_CHECK_BENCH_FLAGS=--quick when the budget is short.
# shellcheck disable=SC2206
BENCH_FLAGS+=(${GPU_CHECK_BENCH_FLAGS:-})

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME SHARE_PERCENT CMD...: run CMD under min(share of the budget, what is left) seconds.
step() {
  local name="$1" share="$2"; shift 2
  local limit=$(( BUDGET * share / 100 )) rest
  rest=$(left)
  [ "$limit" -gt "$rest" ] && limit=$rest
  if [ "$limit" -lt 10 ]; then
    echo "| $name | skipped: time budget spent | 0 |" >> "$SUMMARY"; return
  fi
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after=15 "$limit" "$@"
  rc=$?
  local took=$(( $(date +%s) - t0 )) status="ok"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="timed out after ${limit}s"; FAILED=1
  elif [ "$rc" != 0 ]; then status="failed (exit $rc)"; FAILED=1; fi
  echo "| $name | $status | $took |" >> "$SUMMARY"
}

{
  echo "# gpu-check ($( [ "$SMOKE" = 1 ] && echo cpu smoke || echo cuda ), budget ${BUDGET}s)"
  echo
  echo "| step | status | seconds |"
  echo "|---|---|---|"
} > "$SUMMARY"

{
  date -u
  command -v nvidia-smi >/dev/null && nvidia-smi
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available(), "devices", torch.cuda.device_count())'
} > "$OUT_DIR/env.txt" 2>&1

# 1. every gpu test (about a third of the budget), then 2. the benchmarks, 3. the measurements.
step "pytest -m gpu" 35 "$PY" -m pytest -q -m gpu -p no:cacheprovider \
  --junitxml="$OUT_DIR/gpu-tests.xml" tests > "$OUT_DIR/gpu-tests.txt" 2>&1
step "satpipe bench all --device $DEVICE" 25 "$PY" -m satpipe bench all --device "$DEVICE" \
  ${BENCH_FLAGS[@]+"${BENCH_FLAGS[@]}"} --out "$OUT_DIR/bench-all.json" > "$OUT_DIR/bench-all.txt" 2>&1
MEASURE_BUDGET=$(( $(left) - 20 ))
[ "$MEASURE_BUDGET" -lt 10 ] && MEASURE_BUDGET=10
step "measurements (issue 30)" 100 "$PY" scripts/gpu_measure.py --device "$DEVICE" \
  --budget "$MEASURE_BUDGET" --out "$OUT_DIR" ${MEASURE_FLAGS[@]+"${MEASURE_FLAGS[@]}"} \
  > "$OUT_DIR/measurements.txt" 2>&1

{
  echo
  echo "Total: $(( $(date +%s) - START ))s. gpu tests: $(tail -n 1 "$OUT_DIR/gpu-tests.txt" 2>/dev/null)"
} >> "$SUMMARY"
cat "$SUMMARY"
exit "$FAILED"
