"""wisparse-export: training-free weight-aware activation sparsity for LLMs, exported to ONNX and TensorRT.

    import wisparse_export as ws
    loaded = ws.load_model()                 # the embedded SmolLM2-135M, or a path / hub id
    plan = ws.load_plan("plan.json")         # made by `wisparse calibrate`
    ws.quantize(loaded.model, plan.weights, plan.lm_head)  # a plan made on FP8/INT8 weights: quantize first
    ws.apply(loaded.model, plan)             # in place; ws.remove(model) undoes it
    ws.save(loaded.model, plan, "ckpt/", loaded.tokenizer)   # save_pretrained's folder + the plan beside it
    loaded, plan = ws.load("ckpt/")          # back, sparse
"""

from .checkpoint import load, save
from .errors import WisparseError
from .models import load_model
from .models import quantize_weights as quantize
from .plan import Plan, load_plan, save_plan
from .runtime import apply, remove

__version__ = "0.1.0"
__all__ = ["WisparseError", "Plan", "apply", "remove", "load", "load_model", "load_plan", "quantize", "save",
           "save_plan", "__version__"]
