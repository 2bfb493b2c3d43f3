#!/usr/bin/env bash
# The WiSparse method on the embedded model on one GPU: calibrate with the `default` search preset (timed),
# evaluate on held-out text, and decode tokens/s dense vs sparse with the real weights. Writes to $OUT.
#   M=/path/SmolLM2-135M-Instruct.Q4_1.gguf bash benchmarks/gpu_default_model.sh
# PLAN=plan.json skips the calibration and evaluates / benchmarks that plan instead.
# On the lent GPU machine the 98 MB GGUF does not travel in one call: it is carried in two halves and joined
# first (M unset and /tmp/m/gguf.part.aa present), with gguf's wheel and gensim's two text files beside it.
set -o pipefail
export PYTHONUNBUFFERED=1
[ -z "${PLAN:-}" ] || [ -f "$PLAN" ] || { echo "error: PLAN=$PLAN is not a file" >&2; exit 2; }
OUT=${OUT:-/tmp/wisparse-gpu}
mkdir -p "$OUT"
if [ -z "${M:-}" ] && [ -f /tmp/m/gguf.part.aa ] && [ -f .carry2/gguf.part.ab ]; then
  cat /tmp/m/gguf.part.aa .carry2/gguf.part.ab > /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf
  M=/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .carry2/whl/*.whl && export PYTHONPATH=/tmp/site
  export WISPARSE_TEXT_DIR=$PWD/.carry2/text
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || echo "pip install failed"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
if [ -n "${PLAN:-}" ]; then
  cp "$PLAN" "$OUT/plan_default_gpu.json"
else
  t0=$(date +%s)
  python3 -m wisparse_export calibrate --model "$M" --sparsity 0.5 --search-budget default --quiet \
    -o "$OUT/plan_default_gpu.json" 2>&1 | tail -n 5
  t1=$(date +%s)
  echo "calibrate+search+refit (default preset, GPU): $((t1 - t0)) s" | tee "$OUT/timing.txt"
fi
python3 -m wisparse_export evaluate --model "$M" --plan "$OUT/plan_default_gpu.json" --quiet \
  --json "$OUT/eval_default_gpu.json" 2>&1 | tail -n 6
python3 -m wisparse_export bench --model "$M" --plan "$OUT/plan_default_gpu.json" --steps 128 --quiet \
  --json "$OUT/bench_default_gpu.json" 2>&1 | grep -v Warning | tail -n 6
