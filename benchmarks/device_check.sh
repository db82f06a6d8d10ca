#!/usr/bin/env bash
# One-shot GPU check (issue #16), in under 8 minutes on one GPU (each part has a limit):
#   1. parity on the GPU: the reference vs scan vs fused tests (tests/test_fused.py,
#      test_bidirectional.py, test_recurrence.py; float32 with full-precision matmuls, and
#      fused bfloat16 against float32 with loose tolerances), plus a direct check at a larger
#      shape whose errors go into the summary;
#   2. benchmarks/bench_rnn.py --device=gpu, float32 (LSTM, GRU) and bfloat16 (LSTM): fused
#      vs flax.linen vs torch/cuDNN at B,T,D,H = 64,256,512,512; 16,1024,256,256;
#      256,128,512,1024;
#   3. benchmarks/bench_train.py --device=gpu: trainer vs bare step, POS vs a torch loop;
#   4. benchmarks/bench_seeds.py --device=gpu: POS, 8 members in one program vs one member
#      (the target: 8 members' step <= 1.5x one member's);
# then prints one summary table. It installs nothing (the GPU machine has no network);
# without torch, or without pytest, those parts are skipped and the summary says so.
#
#   bash benchmarks/device_check.sh           # on the GPU machine
#   bash benchmarks/device_check.sh --quick   # on a CPU, tiny shapes: tests this script
#
# Results: $OUT_DIR (default: $OUT if set, as the device tool sets it, else benchmarks/):
# results_gpu.json, results_gpu_bf16.json, results_train_gpu.json (results_*_quick.json
# with --quick), device_check_summary.json and device_check.log. Each part has a time limit
# so the script always finishes and reports what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."

QUICK=0
if [[ "${1:-}" == "--quick" ]]; then QUICK=1; fi
OUT_DIR=${OUT_DIR:-${OUT:-benchmarks}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
LOG="$OUT_DIR/device_check.log"
: > "$LOG"
STATUS="$OUT_DIR/device_check_status.txt"   # one 'part: status' line per part
: > "$STATUS"

if [[ $QUICK == 1 ]]; then
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
  DEVICE=cpu SUFFIX=_quick
  TESTS=(tests/test_fused.py -k "bfloat16 or lstm_proj")
  RNN_ARGS=(--device=cpu --shapes=2x8x4x4 --impls=fused,flax,torch --reps=2 --warmup=1
            --rounds=1)
  RNN_F32=(--cells=lstm) RNN_BF16=(--cells=lstm)
  TRAIN_ARGS=(--device=cpu --quick --tasks=synthetic)
  SEEDS_ARGS=(--device=cpu --quick --tasks=pos --steps=2)
  LIMITS=(300 300 300 300 400 300)
else
  DEVICE=gpu SUFFIX=
  TESTS=(tests/test_fused.py tests/test_bidirectional.py tests/test_recurrence.py)
  # The check against torch is left to the parity parts; bfloat16 times the LSTM only.
  RNN_ARGS=(--device=gpu --impls=fused,flax,torch --reps=20 --warmup=3 --rounds=1
            --skip_check)
  RNN_F32=(--cells=lstm,gru) RNN_BF16=(--cells=lstm)
  TRAIN_ARGS=(--device=gpu --rounds=1 --tasks=synthetic,pos)
  SEEDS_ARGS=(--device=gpu --tasks=pos --counts=8 --one_seed_runs=1 --steps=20)
  # Seconds: parity tests, direct parity, bench_rnn f32, bench_rnn bf16, bench_train,
  # bench_seeds (475 s at most; each part ends when done).
  LIMITS=(90 50 100 65 120 50)
fi

run_part() {  # name, time limit (s), command...: logs, records the status, never exits
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  local status="ok"
  if [[ $rc == 124 || $rc == 137 ]]; then status="timed out"; elif [[ $rc != 0 ]]; then
    status="failed (rc=$rc)"; fi
  echo "$name: $status in $((SECONDS - start))s" | tee -a "$LOG" "$STATUS"
}

echo "=== environment" | tee -a "$LOG"
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, platform
import jax
print("python", platform.python_version(), "| jax", jax.__version__, "| backend",
      jax.default_backend(), "|", ", ".join(str(d) for d in jax.devices()))
for name in ("flax", "optax", "orbax.checkpoint", "torch", "pytest", "hypothesis"):
  try:
    module = importlib.import_module(name)
    extra = ""
    if name == "torch":
      extra = f" (cuda {module.cuda.is_available()})"
    print(f"{name} {getattr(module, '__version__', '?')}{extra}")
  except Exception as e:  # pylint: disable=broad-except
    print(f"{name}: missing ({type(e).__name__})")
EOF
if [[ $QUICK == 0 ]] && command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    | tee -a "$LOG"
fi

# 1. Parity. Full float32 matmuls: a GPU's default precision may be TF32 (tolerances 1e-5).
if "$PY" -c "import pytest, hypothesis, absl.testing" 2> /dev/null; then
  JAX_DEFAULT_MATMUL_PRECISION=highest run_part parity_tests "${LIMITS[0]}" \
    "$PY" -m pytest -q -x -p no:cacheprovider "${TESTS[@]}"
else
  echo "parity_tests: skipped (pytest, hypothesis or absl missing)" | tee -a "$LOG" "$STATUS"
fi
JAX_DEFAULT_MATMUL_PRECISION=highest run_part parity_direct "${LIMITS[1]}" \
  "$PY" benchmarks/device_parity.py --quick=$QUICK --out="$OUT_DIR/parity_$DEVICE$SUFFIX.json"

# 2. The layer benchmark, float32 and bfloat16 (each implementation in its own process).
run_part bench_rnn_float32 "${LIMITS[2]}" "$PY" benchmarks/bench_rnn.py "${RNN_ARGS[@]}" \
  "${RNN_F32[@]}" --dtype=float32 --out="$OUT_DIR/results_$DEVICE$SUFFIX.json"
run_part bench_rnn_bfloat16 "${LIMITS[3]}" "$PY" benchmarks/bench_rnn.py "${RNN_ARGS[@]}" \
  "${RNN_BF16[@]}" --dtype=bfloat16 --skip_check \
  --out="$OUT_DIR/results_${DEVICE}_bf16$SUFFIX.json"

# 3. The training loop.
run_part bench_train "${LIMITS[4]}" "$PY" benchmarks/bench_train.py "${TRAIN_ARGS[@]}" \
  --out="$OUT_DIR/results_train_$DEVICE$SUFFIX.json"

# 4. Seeds as an axis (three processes: one seed, 8 members, one member at 8x the batch).
run_part bench_seeds "${LIMITS[5]}" "$PY" benchmarks/bench_seeds.py "${SEEDS_ARGS[@]}" \
  --out="$OUT_DIR/results_seeds_$DEVICE$SUFFIX.json"

"$PY" benchmarks/device_summary.py --dir="$OUT_DIR" --device="$DEVICE" --suffix="$SUFFIX" \
  --status="$STATUS" --out="$OUT_DIR/device_check_summary.json" 2>&1 | tee -a "$LOG"
rm -f "$STATUS"
