#!/usr/bin/env bash
# One GPU run, start to finish: install, GPU tests (kernels vs float64, the TensorRT plugin's ahead-of-time PTX
# launched through the driver API), end-to-end decode benchmarks, then the kernel benchmark (its table last).
# Logs and JSON go to $OUT (the device tool brings them back).
#   bash benchmarks/gpu_run.sh            # quick=1 in the environment: bf16 batch-1 kernel table only
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/wisparse-gpu}
mkdir -p "$OUT"
export WISPARSE_KERNEL_CACHE=${WISPARSE_KERNEL_CACHE:-$PWD/.kcache}
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv; } \
  | tee "$OUT/env.log"
python3 -m pip install -q --no-deps --no-build-isolation -e . >>"$OUT/env.log" 2>&1 || echo "pip install failed"

# PTX from an NVRTC newer than the driver does not load: fall back to the toolkit's NVRTC if the wheel is newer.
python3 - <<'EOF' >>"$OUT/env.log" 2>&1
from wisparse_export import kernels
print("nvrtc", kernels.nvrtc_version(), "driver", kernels.driver_version())
EOF
if ! python3 -c "from wisparse_export import kernels as k; k.check_versions()" 2>/dev/null; then
  for f in /usr/local/cuda/lib64/libnvrtc.so.13 /usr/local/cuda/lib64/libnvrtc.so; do
    [ -f "$f" ] && export WISPARSE_NVRTC=$f && echo "using $f" | tee -a "$OUT/env.log" && break
  done
fi
cat "$OUT/env.log"

echo "== GPU tests"
timeout 240 python3 -m pytest -q -m gpu tests/test_kernels.py tests/test_trt_plugin.py \
  >"$OUT/gpu_tests.log" 2>&1
echo "pytest exit $?"; tail -n 25 "$OUT/gpu_tests.log"

echo "== end to end"
for shape in smollm2-135m llama3-8b; do
  timeout 200 wisparse bench --shape "$shape" --sparsity 0 --sparsity 0.5 --sparsity 0.75 --steps 128 \
    --json "$OUT/e2e_$shape.json" 2>&1 | tee -a "$OUT/e2e.log" | grep -v Warning
done

echo "== kernels"
timeout 330 python3 benchmarks/bench_kernels.py --json "$OUT/bench_kernels.json" ${quick:+--quick} \
  2>&1 | tee "$OUT/bench_kernels.log" | tail -n 120
