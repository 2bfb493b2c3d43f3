"""Cost of wisparse's validation steps on the embedded model (docs/ACCURACY.md), in units of F, one dense forward
over 4096 tokens measured in the same process, so a loaded machine and an idle one give comparable figures.

    OMP_NUM_THREADS=2 python benchmarks/validation_cost.py
"""
import time

import torch

from wisparse_export import data, pipeline
from wisparse_export.calibration import collect, make_plan, uniform
from wisparse_export.config import CalibrationConfig
from wisparse_export.fitness import KLFitness
from wisparse_export.models import load_model
from wisparse_export.runtime import apply, remove

L = load_model(progress=False)
cfg = CalibrationConfig.preset()
s, v, _ = pipeline.split_text(data.load_text(None, "calibration"), cfg.validation, cfg.seed)
seqs = data.sequences(L.tokenizer, s, 512, 4096, shuffle=True)
val = data.sequences(L.tokenizer, v, 512, cfg.validation_tokens, shuffle=True)
print("validation tokens", val.numel(), flush=True)
with torch.no_grad():
    t = time.time()
    for i in range(0, 8, 4):
        L.model(input_ids=seqs[i:i + 4], use_cache=False)
    F = time.time() - t
print(f"F (forward, 4096 tokens) {F:.1f} s", flush=True)
t = time.time()
collect(L.model, L.blocks, seqs, (1.0,), 4, False)
A = time.time() - t
t = time.time()
st3 = collect(L.model, L.blocks, seqs, (0.0, 0.5, 1.0), 4, False)
B = time.time() - t
print(f"collect 4096 tokens: 1 alpha {A:.1f} s, 3 alphas {B:.1f} s", flush=True)
apply(L.model, make_plan(L, uniform(st3.hist, 0.5, 1.0), st3.threshold, "wisparse", 0.5, {}), check=False)
t = time.time()
fit = KLFitness(L.model, st3, [val[i:i + 4] for i in range(0, len(val), 4)])
for a in (0.0, 0.5, 1.0, 1.0, 1.0, 1.0):  # 3 uniform alphas + 3 final candidates
    fit(uniform(st3.hist, 0.5, a))
V = time.time() - t
remove(L.model)
print(f"validation: dense + 6 sparse passes over {val.numel()} tokens {V:.1f} s = {V / F:.1f} F", flush=True)
print(f"statistics, 16384 tokens: +{4 * (B - A):.1f} s = {4 * (B - A) / F:.1f} F; validation {V / F:.1f} F "
      f"(minus the one calibration pass it replaces)")
