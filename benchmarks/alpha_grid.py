"""Alpha per unit from the grid (0, 0.5, 1) against one alpha for the whole model chosen on validation (the
presets): wisparse `fast` at 0.5 on held-out text (docs/ACCURACY.md). Prints one JSON line per setting.

    python benchmarks/alpha_grid.py
"""
import json
import time
from dataclasses import replace

from wisparse_export import data, pipeline
from wisparse_export.config import SearchConfig
from wisparse_export.evaluate import evaluate
from wisparse_export.models import load_model

loaded = load_model(progress=False)
seqs = data.sequences(loaded.tokenizer, data.load_text(None, "evaluation"), 512, 16384)
for unit_alpha in (False, True):
    t = time.time()
    search = replace(SearchConfig.preset("fast"), unit_alpha=unit_alpha)
    plan = pipeline.calibrate(loaded, data.load_text(None, "calibration"), 0.5, method="wisparse", search=search,
                              progress=False)
    alphas = sorted({lp.alpha for lp in plan.layers.values()})
    r = evaluate(loaded.model, plan, seqs, progress=False)
    r.pop("per_layer_sparsity")
    r.update(unit_alpha=unit_alpha, alpha_counts={a: sum(lp.alpha == a for lp in plan.layers.values()) for a in alphas},
             written=plan.method, seconds=round(time.time() - t, 1))
    print(json.dumps(r), flush=True)
