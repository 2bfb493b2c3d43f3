#!/usr/bin/env bash
# End to end on the embedded SmolLM2-135M: calibrate -> export -> check in ONNX Runtime, then, where TensorRT and a
# GPU exist, build engines from a float16 export and check them.
#
#   examples/end_to_end.sh [WORKDIR]          (default WORKDIR: runs/end_to_end)
#
# Environment: SPARSITY (0.5), METHOD (wisparse), MODEL (embedded default), and the gates of `wisparse check`:
# MAX_PPL_INCREASE, MAX_KL, MIN_AGREEMENT (unset: report only). CPU only, it takes ~15-25 minutes on 2 cores
# (calibration dominates). Exit status: that of the first failing step; 1 means a gate failed.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/end_to_end}
WISPARSE=${WISPARSE:-"python3 -m wisparse_export"}
MODEL_ARGS=()
[[ -n "${MODEL:-}" ]] && MODEL_ARGS=(--model "$MODEL")
GATES=()
[[ -n "${MAX_PPL_INCREASE:-}" ]] && GATES+=(--max-ppl-increase "$MAX_PPL_INCREASE")
[[ -n "${MAX_KL:-}" ]] && GATES+=(--max-kl "$MAX_KL")
[[ -n "${MIN_AGREEMENT:-}" ]] && GATES+=(--min-agreement "$MIN_AGREEMENT")
mkdir -p "$WORK"

# 1. Thresholds for the target sparsity, calibrated on the embedded corpus's calibration split.
$WISPARSE calibrate "${MODEL_ARGS[@]}" --sparsity "${SPARSITY:-0.5}" --method "${METHOD:-wisparse}" --quiet \
  -o "$WORK/plan.json"

# 2. dense.onnx (standard ops) and sparse.onnx (wisparse::SparseLinear + its function body), float32.
$WISPARSE export "${MODEL_ARGS[@]}" --plan "$WORK/plan.json" -o "$WORK/onnx" --quiet

# 3. Both graphs in ONNX Runtime on the evaluation split: perplexity, KL, top-1 agreement, decode-step latency.
$WISPARSE check "$WORK/onnx" "${GATES[@]}" --quiet --json "$WORK/check_onnx.json"

# 4. TensorRT, where it is installed: engines are built from a float16 export (TensorRT is strongly typed).
if python3 -c "import tensorrt" 2>/dev/null && nvidia-smi >/dev/null 2>&1; then
  $WISPARSE export "${MODEL_ARGS[@]}" --plan "$WORK/plan.json" -o "$WORK/onnx_fp16" --dtype float16 --quiet
  $WISPARSE build "$WORK/onnx_fp16"
  $WISPARSE check "$WORK/onnx_fp16" --engine "${GATES[@]}" --quiet --json "$WORK/check_engine.json"
else
  echo "TensorRT or an NVIDIA GPU is not available: skipped build and check --engine"
fi
echo "reports in $WORK: check_onnx.json (and check_engine.json where TensorRT ran)"
