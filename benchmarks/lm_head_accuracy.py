"""What quantizing the lm_head costs in accuracy: the dense model with FP8/INT8 decoder blocks, its lm_head in the
model dtype (the reference) against the same model with the lm_head quantized too (`--lm-head`), on the same
batches of the evaluation text `wisparse evaluate` uses by default. One body pass per batch serves both: the
reference logits are the final hidden state times the float head (for a tied model, the embedding).

    OMP_NUM_THREADS=1 python benchmarks/lm_head_accuracy.py --weights fp8   # embedded SmolLM2-135M, ~2 min, 1 core
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from wisparse_export import data, quantize
from wisparse_export.config import EvaluationConfig
from wisparse_export.evaluate import Metrics
from wisparse_export.models import load_model
from wisparse_export.quant import OPTIONS


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="Folder, .gguf or hub id (default: the embedded SmolLM2-135M).")
    p.add_argument("--weights", default="fp8", choices=["fp8", "int8"], help="Blocks and lm_head format.")
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args()
    fmt, cfg = OPTIONS[args.weights], EvaluationConfig.preset()
    loaded = load_model(args.model, "float32", "cpu", progress=False)
    model = loaded.model
    seqs = data.sequences(loaded.tokenizer, data.load_text(None, "evaluation"), cfg.seq_len, cfg.tokens)
    head = model.get_output_embeddings().weight.detach().clone()  # the float head (tied: the embedding's values)
    quantize(model, fmt, fmt)
    metrics, t0 = Metrics(), time.time()
    for i in range(0, len(seqs), args.batch_size):
        ids = seqs[i: i + args.batch_size]
        out = model(input_ids=ids, use_cache=False, output_hidden_states=True)
        h = out.hidden_states[-1]  # after the final norm: what the lm_head reads
        if i == 0 and not torch.equal(F.linear(h, model.lm_head.weight), out.logits):
            raise SystemExit("the last hidden state is not the lm_head's input for this model")
        metrics.update(F.linear(h, head), out.logits, ids)
    r = metrics.result()
    print(json.dumps({"model": loaded.source, "format": fmt.name, "text": "evaluation split (default)",
                      "seq_len": cfg.seq_len, "tokens": r["tokens"], "ppl_blocks_quantized": r["dense_ppl"],
                      "ppl_blocks_and_lm_head_quantized": r["ppl"], "kl": r["kl"],
                      "top1_agreement": r["top1_agreement"], "seconds": round(time.time() - t0)}))


if __name__ == "__main__":
    main()
