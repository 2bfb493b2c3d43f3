#!/usr/bin/env bash
# Every stage at a deployed size on one GPU: calibrate (default search preset), evaluate, export --dtype float16,
# check --provider cuda, bench --plan, on random-weight models of real shapes (random:NAME: seeded, no download).
# Each stage runs under /usr/bin/time -v (wall time, peak host RSS) with nvidia-smi sampled every 200 ms (peak GPU
# memory, whatever allocates it: torch or ONNX Runtime) and torch.cuda.max_memory_allocated from a small wrapper;
# one JSON line per stage goes to $OUT/scale.jsonl (with the stage's own --json report inside), logs to
# $OUT/scale.log. docs/SCALE.md says what the figures mean and where they go.
#
#   stages="calibrate evaluate" bash benchmarks/scale.sh            # one 10-minute command
#   PLAN=benchmarks/results/scale-llama-3.1-8b-plan.json stages="export check bench" bash benchmarks/scale.sh
#
# Knobs: models="llama-3.1-8b qwen2.5-7b" (default llama-3.1-8b), stages (calibrate evaluate export check bench),
# PLAN (a plan to use instead of calibrating; with several models, a folder holding <model>-plan.json),
# CALIB_ARGS (extra calibrate options, e.g. "--search-generations 8"), RESUME (a search checkpoint that an
# interrupted calibrate left in $OUT, <model>-plan.json.search.json: the search resumes from it), TOKENS (evaluate/check tokens, 16384),
# WORK (where the export folder goes, /tmp/wisparse-scale: 16 GB per 8B model, not brought back).
# Needs only this repo and the machine's torch / transformers / onnx / onnxruntime; onnxruntime-gpu is installed
# from .whl/onnxruntime_gpu-*.whl when present (check --provider cuda is refused in one line without it).
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/wisparse-scale-out}
WORK=${WORK:-/tmp/wisparse-scale}
models=${models:-llama-3.1-8b}
stages=${stages:-calibrate evaluate export check bench}
TOKENS=${TOKENS:-16384}
mkdir -p "$OUT" "$WORK"
export WISPARSE_KERNEL_CACHE=${WISPARSE_KERNEL_CACHE:-$PWD/.kcache}
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc; free -g | head -2; } \
  >>"$OUT/scale.log" 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . >>"$OUT/scale.log" 2>&1 || echo "pip install failed"
if ls .whl/onnxruntime_gpu-*.whl >/dev/null 2>&1 && ! python3 -c "import onnxruntime as o, sys; \
    sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null; then
  python3 -m pip uninstall -q -y onnxruntime >>"$OUT/scale.log" 2>&1
  python3 -m pip install -q --no-deps .whl/onnxruntime_gpu-*.whl >>"$OUT/scale.log" 2>&1 || echo "onnxruntime-gpu install failed"
fi
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" \
  2>&1 | tee -a "$OUT/scale.log"

# `wisparse ARGS` in a process that writes torch.cuda.max_memory_allocated() to $PEAK_FILE on the way out.
WRAP='import atexit, os, sys, torch
def peak():
    if torch.cuda.is_available():
        open(os.environ["PEAK_FILE"], "w").write(str(torch.cuda.max_memory_allocated()))
atexit.register(peak)
sys.argv = ["wisparse", *sys.argv[1:]]
from wisparse_export.cli import main
main()'

# stage MODEL NAME JSON_REPORT_OR_- WRITTEN_PATH_OR_- TIMEOUT_S -- wisparse arguments
stage() {
  local model=$1 name=$2 report=$3 written=$4 limit=$5
  shift 6
  local log="$WORK/$model-$name.log" smi="$WORK/$model-$name.smi" peak="$WORK/$model-$name.peak"
  rm -f "$peak"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$smi" 2>/dev/null &
  local sampler=$!
  echo "== $model $name: wisparse $*" | tee -a "$OUT/scale.log"
  PEAK_FILE=$peak timeout "$limit" /usr/bin/time -v python3 -c "$WRAP" "$@" >"$log" 2>&1
  local rc=$?
  kill "$sampler" 2>/dev/null
  grep -v "it/s\]\|s/it\]" "$log" | tail -n 40 >>"$OUT/scale.log"
  python3 - "$model" "$name" "$rc" "$log" "$smi" "$peak" "$report" "$written" "$*" >>"$OUT/scale.jsonl" <<'EOF'
import json, os, re, sys
model, name, rc, log, smi, peak, report, written, args = sys.argv[1:]
text = open(log, errors="replace").read()
def field(label):
    m = re.search(re.escape(label) + r": (.+)", text)
    return m.group(1).strip() if m else None
wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss)")
secs = None if wall is None else sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
used = [int(x) for x in open(smi).read().split() if x.isdigit()] if os.path.exists(smi) else []
def size(p):
    if not os.path.exists(p):
        return None
    return os.path.getsize(p) if os.path.isfile(p) else sum(
        os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(p) for f in fs)
rec = {"model": model, "stage": name, "exit": int(rc), "args": args, "wall_s": secs,
       "peak_rss_gib": None if field("Maximum resident set size (kbytes)") is None
       else int(field("Maximum resident set size (kbytes)")) / 2**20,
       "peak_gpu_used_gib": max(used) / 1024 if used else None,
       "torch_max_allocated_gib": int(open(peak).read()) / 2**30 if os.path.exists(peak) else None,
       "bytes_written": None if written == "-" else size(written),
       "report": json.load(open(report)) if report != "-" and os.path.exists(report) else None}
print(json.dumps(rec))
print(json.dumps({k: v for k, v in rec.items() if k != "report"}), file=sys.stderr)
EOF
}

want() { case " $stages " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
for model in $models; do
  plan="$OUT/$model-plan.json"
  if [ -n "$PLAN" ]; then
    if [ -d "$PLAN" ]; then cp "$PLAN/$model-plan.json" "$plan"; else cp "$PLAN" "$plan"; fi
  fi
  src="random:$model"
  [ -n "$RESUME" ] && cp "$RESUME" "$plan.search.json"
  want calibrate && stage "$model" calibrate - "$plan" "${CALIB_LIMIT:-590}" -- calibrate --model "$src" --sparsity 0.5 \
    --method wisparse -o "$plan" --quiet $CALIB_ARGS
  want evaluate && stage "$model" evaluate "$WORK/$model-eval.json" - 590 -- evaluate --model "$src" \
    --plan "$plan" --tokens "$TOKENS" --json "$WORK/$model-eval.json" --quiet
  want export && stage "$model" export - "$WORK/$model-fp16" 590 -- export --model "$src" --plan "$plan" \
    -o "$WORK/$model-fp16" --dtype float16 --quiet
  want check && stage "$model" check "$WORK/$model-check.json" - 590 -- check "$WORK/$model-fp16" \
    --provider cuda --tokens "$TOKENS" --json "$WORK/$model-check.json"
  want bench && stage "$model" bench "$WORK/$model-bench.json" - 590 -- bench --model "$src" --plan "$plan" \
    --json "$WORK/$model-bench.json" --quiet
done
ls -la "$WORK" >>"$OUT/scale.log" 2>&1
echo "== done: $OUT/scale.jsonl"
