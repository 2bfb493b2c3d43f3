#!/usr/bin/env bash
# One GPU run, start to finish: install, GPU tests (kernels vs float64, the TensorRT plugin's ahead-of-time PTX
# launched through the driver API), end-to-end decode benchmarks, then the kernel benchmark (its table last).
# Logs and JSON go to $OUT (the device tool brings them back).
#   bash benchmarks/gpu_run.sh
# Environment knobs: quick=1 (bf16 batch-1 kernel table only), tune=1 (quant: also the 1-byte variant sweep),
# shapes="llama3-8b" (end-to-end models),
# compiled=0 (skip the torch.compile end-to-end run), table=0 (quant: tests only), weights="fp8" and heads="fp8"
# (quant_e2e: a subset of the formats and lm_head choices), parts="tests e2e" (a subset of: tests e2e kernels profile
# fused quant quant_e2e floor; profile = benchmarks/profile_kernel.py, fused = the fused decode kernels' GPU tests and
# `bench_fused.py --ablate`, quant = the 1-byte weights' GPU tests and kernel table, quant_e2e = `wisparse bench
# --weights fp8|int8 [--lm-head] --compile` on the 8B shape, floor = `bench_floor.py`: issue 15's cells beside an empty kernel,
# the minimal dependent chain and cuBLAS on the kept bytes; none of these in the default set).
set -o pipefail
export PYTHONUNBUFFERED=1
parts=${parts:-tests e2e kernels}
for p in $parts; do
  case $p in tests | e2e | kernels | profile | fused | quant | quant_e2e | floor) ;;
    *) echo "error: unknown part '$p' (choose from: tests e2e kernels profile fused quant quant_e2e floor)" >&2
       exit 2 ;;
  esac
done
want() { case " $parts " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
OUT=${OUT:-/tmp/wisparse-gpu}
mkdir -p "$OUT"
export WISPARSE_KERNEL_CACHE=${WISPARSE_KERNEL_CACHE:-$PWD/.kcache}
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv; } \
  | tee "$OUT/run.log"
python3 -m pip install -q --no-deps --no-build-isolation -e . >>"$OUT/run.log" 2>&1 || echo "pip install failed"

# PTX from an NVRTC newer than the driver does not load: fall back to the toolkit's NVRTC if the wheel is newer.
python3 - <<'EOF' >>"$OUT/run.log" 2>&1
from wisparse_export import kernels
print("nvrtc", kernels.nvrtc_version(), "driver", kernels.driver_version())
EOF
if ! python3 -c "from wisparse_export import kernels as k; k.check_versions()" 2>/dev/null; then
  for f in /usr/local/cuda/lib64/libnvrtc.so.13 /usr/local/cuda/lib64/libnvrtc.so; do
    [ -f "$f" ] && export WISPARSE_NVRTC=$f && echo "using $f" | tee -a "$OUT/run.log" && break
  done
fi
cat "$OUT/run.log"


if want tests; then
  echo "== GPU tests"
  timeout ${tests_timeout:-560} python3 -m pytest -q -m gpu tests/test_kernels.py tests/test_trt_plugin.py tests/test_device_map.py \
    tests/test_probes.py >"$OUT/gpu_tests.log" 2>&1
  echo "pytest exit $?"; tail -n 25 "$OUT/gpu_tests.log"
fi

if want e2e; then
  echo "== end to end (CUDA graphs)"
  for shape in ${shapes:-smollm2-135m llama3-8b}; do
    timeout 200 wisparse bench --shape "$shape" --sparsity 0 --sparsity 0.5 --sparsity 0.75 --steps 128 \
      --json "$OUT/e2e_$shape.json" 2>&1 | grep -v Warning | tee -a "$OUT/run.log"
  done
fi

if want kernels; then
  echo "== kernels"
  timeout 400 python3 benchmarks/bench_kernels.py --json "$OUT/bench_kernels.json" ${quick:+--quick} \
    >"$OUT/bench_kernels.log" 2>&1
  echo "bench_kernels exit $?"
fi

if want profile; then
  echo "== profile (phases, tile-major layout, dense path)"
  timeout 500 python3 benchmarks/profile_kernel.py --json "$OUT/profile.json" >"$OUT/profile.log" 2>&1
  echo "profile_kernel exit $?"
  tail -n 60 "$OUT/profile.log"
fi

if want quant; then
  echo "== 1-byte weights: GPU tests (apply on quantized models, the op, the plugin), then the kernel table"
  timeout 240 python3 -m pytest -q -m gpu tests/test_kernels.py tests/test_trt_plugin.py tests/test_lm_head.py \
    -k "quantized and not every_quantized or apply_on_a_cuda or lm_head or per_group" >"$OUT/quant_gpu_tests.log" 2>&1
  echo "pytest exit $?"; tail -n 15 "$OUT/quant_gpu_tests.log"
  if [ "${table:-1}" != 0 ]; then
    timeout 330 python3 benchmarks/bench_kernels.py --weights fp8 int8 ${tune:+--tune} \
      --json "$OUT/kernels_quantized.json" >"$OUT/kernels_quantized.log" 2>&1
    echo "bench_kernels --weights exit $?"; tail -n 70 "$OUT/kernels_quantized.log"
  fi
fi

if want quant_e2e; then
  echo "== end to end on 1-byte weights, torch.compile (dense 1-byte = the faster of our kernels and gpt-fast's)"
  for w in ${weights:-fp8 int8}; do
    for head in ${heads:-none "$w"}; do  # lm_head in bf16, then in the blocks' format (--lm-head)
      timeout 200 wisparse bench --shape llama3-8b --weights "$w" --lm-head "$head" --compile --sparsity 0.5 \
        --sparsity 0.75 --steps 128 --json "$OUT/e2e_${w}_head-${head}_compiled.json" 2>&1 | grep -v Warning \
        | tee -a "$OUT/run.log" | tail -n 10
    done
  done
fi

if want fused; then
  echo "== fused decode kernels: the ablation (where the list GEMV's extra time goes), then the GPU tests"
  timeout 200 python3 benchmarks/bench_fused.py --ablate --json "$OUT/fused_ablate.json" >"$OUT/fused_ablate.log" 2>&1
  echo "bench_fused --ablate exit $?"; tail -n 30 "$OUT/fused_ablate.log"
  timeout 330 python3 -m pytest -q -m gpu tests/test_fused_kernels.py >"$OUT/fused_gpu_tests.log" 2>&1
  echo "pytest exit $?"; tail -n 25 "$OUT/fused_gpu_tests.log"
fi

if want floor; then
  echo "== floor: today's kernel, an empty kernel, the minimal dependent chain, cuBLAS on the kept bytes"
  timeout 300 python3 benchmarks/bench_floor.py --json "$OUT/floor.json" >"$OUT/floor.log" 2>&1
  echo "bench_floor exit $?"; tail -n 16 "$OUT/floor.log"
fi

if want e2e && [ "${compiled:-1}" != 0 ]; then
  echo "== end to end (torch.compile + CUDA graphs)"
  timeout 240 wisparse bench --shape llama3-8b --compile --sparsity 0 --sparsity 0.5 --sparsity 0.75 --steps 128 \
    --json "$OUT/e2e_compiled_llama3-8b.json" 2>&1 | grep -v Warning | tee -a "$OUT/run.log" | tail -n 6
fi

echo "== summary"
want kernels && tail -n 80 "$OUT/bench_kernels.log"
grep -A5 "random weights" "$OUT/run.log"
