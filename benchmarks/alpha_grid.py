"""Alpha per unit from the grid (0, 0.5, 1): wisparse `fast` at 0.5 on held-out text (docs/ACCURACY.md).

Compare with the alpha-1 row of benchmarks/accuracy.py. Prints one JSON line.
"""
import json
import time

from wisparse_export import data
from wisparse_export.calibration import calibrate
from wisparse_export.evaluate import evaluate
from wisparse_export.models import load_model

t = time.time()
loaded = load_model(progress=False)
plan = calibrate(loaded, data.load_text(None, "calibration"), 0.5, "wisparse",
                 search_settings={"budget": "fast", "alphas": [0.0, 0.5, 1.0]}, progress=False)
alphas = sorted({lp.alpha for lp in plan.layers.values()})
counts = {a: sum(lp.alpha == a for lp in plan.layers.values()) for a in alphas}
seqs = data.sequences(loaded.tokenizer, data.load_text(None, "evaluation"), 512, 16384)
r = evaluate(loaded.model, plan, seqs, progress=False)
r.pop("per_layer_sparsity")
r["alpha_counts"] = counts
r["seconds"] = time.time() - t
print(json.dumps(r))
