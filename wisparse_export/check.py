"""`wisparse check`: the accuracy gate on the exported graphs themselves.

dense.onnx and sparse.onnx run in ONNX Runtime over evaluation text; the same `evaluate.Metrics` as
`wisparse evaluate` turns their logits into perplexity, KL(dense || sparse) and top-1 agreement, and a decode
step with the KV cache is timed for each. Gates compare those figures with thresholds; the report says which
failed. `--engine` does the same for the TensorRT engines through Polygraphy (see `trt.check_engines`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import data, trt
from .config import EvaluationConfig
from .errors import WisparseError
from .evaluate import Metrics
from .manifest import read_manifest, tokenizer_files, verify_graphs
from .ort import GraphSession, providers, step_ms

METRICS = (("dense", "ppl"), ("sparse", "ppl"), ("sparse", "kl"), ("sparse", "top1_agreement"))


def gate_values(max_ppl_increase: float | None, max_kl: float | None, min_agreement: float | None) -> None:
    """Thresholds outside their range (or NaN) are bad input: such a gate would pass or fail everything."""
    for option, v, hi in (("--max-ppl-increase", max_ppl_increase, math.inf), ("--max-kl", max_kl, math.inf),
                          ("--min-agreement", min_agreement, 1.0)):
        if v is not None and not (math.isfinite(v) and 0.0 <= v <= hi):
            raise WisparseError(f"{option} must be a number in [0, {hi:g}], got {v}")


def non_finite(result: dict) -> list[str]:
    """The metrics that are NaN or infinite, e.g. 'sparse.ppl': a broken graph, never a pass."""
    return [f"{part}.{key}" for part in ("reference", "dense", "sparse") for key, v in result.get(part, {}).items()
            if isinstance(v, float) and not math.isfinite(v)]


def gates(dense_ppl: float, sparse: dict, max_ppl_increase: float | None = None, max_kl: float | None = None,
          min_agreement: float | None = None, broken: list[str] = ()) -> dict:
    """Each requested gate with its threshold, value and verdict, plus the always-on gate `finite` when any
    metric (`broken`) is NaN or infinite. ppl_increase is relative: sparse/dense - 1."""
    out = {}
    if broken:
        out["finite"] = {"threshold": "every metric finite", "value": ", ".join(broken), "verdict": "fail"}

    def gate(name: str, value: float, threshold: float | None, upper: bool) -> None:
        if threshold is not None:
            ok = value <= threshold if upper else value >= threshold
            out[name] = {"threshold": threshold, "value": value, "verdict": "pass" if ok else "fail"}

    gate("ppl_increase", sparse["ppl"] / dense_ppl - 1.0, max_ppl_increase, True)
    gate("kl", sparse["kl"], max_kl, True)
    gate("top1_agreement", sparse["top1_agreement"], min_agreement, False)
    return out


def evaluation_sequences(out: Path, manifest: dict, text: list[str] | None, tokens: int | None,
                         seq_len: int | None) -> tuple[torch.Tensor, str]:
    """Token sequences built exactly as `wisparse evaluate` builds them, with the tokenizer saved by export."""
    from transformers import AutoTokenizer

    preset = EvaluationConfig.preset()
    tokens = preset.tokens if tokens is None else tokens
    seq_len = preset.seq_len if seq_len is None else seq_len
    if tokens < 1:
        raise WisparseError(f"--tokens must be at least 1, got {tokens}")
    if seq_len > manifest["model"]["max_positions"]:
        raise WisparseError(f"--seq-len {seq_len} exceeds the model's context of "
                            f"{manifest['model']['max_positions']} positions")
    tokenizer_files(out, manifest)  # each present and the folder's own, before transformers reads them
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    evaluation = data.load_text(list(text) if text else None, "evaluation")
    calibration = data.reload_calibration(manifest["plan"]["calibration"])
    if calibration is not None:
        data.check_disjoint(calibration, evaluation)
    seqs = data.sequences(tokenizer, evaluation, seq_len, tokens)
    return seqs, evaluation.description


def estimate(seconds: float, batches: int, tokens: int, provider: str) -> str:
    """One line: how long the whole run will take, from the first batch's time."""
    total = seconds * batches
    when = f"{total / 60:.0f} min" if total >= 90 else f"{total:.0f} s"
    plural = "es" if batches != 1 else ""
    return (f"check: about {when} on {provider} for {tokens} tokens in {batches} batch{plural} (the first took "
            f"{seconds:.1f} s); --tokens sets the budget")


def onnx_metrics(paths: dict[str, Path], seqs: torch.Tensor, batch_size: int = 4, progress: bool = True,
                 provider: str = "cpu", log: Callable[[str], None] | None = None) -> dict:
    """Dense and sparse graphs in ONNX Runtime on the same sequences: metrics and decode-step latency. `log` hears
    the time the run will take, estimated from its first batch."""
    dense, sparse = (GraphSession(paths[role], providers(provider)) for role in ("dense", "sparse"))
    metrics = Metrics()
    batches = range(0, len(seqs), batch_size)
    for i in tqdm(batches, desc="check", unit="batch", disable=not progress):
        t0 = time.perf_counter()
        ids = seqs[i: i + batch_size]
        metrics.update(torch.from_numpy(dense.logits(ids.numpy())), torch.from_numpy(sparse.logits(ids.numpy())), ids)
        if i == 0 and log is not None:
            log(estimate(time.perf_counter() - t0, len(batches), seqs.numel(), provider))
    r = metrics.result()
    prompt = seqs[:1, : min(64, seqs.shape[1])].numpy()
    return {
        "dense": {"ppl": r["dense_ppl"], "step_ms": step_ms(dense.step, prompt)},
        "sparse": {"ppl": r["ppl"], "kl": r["kl"], "top1_agreement": r["top1_agreement"],
                   "step_ms": step_ms(sparse.step, prompt)},
        "tokens": r["tokens"],
    }


def json_ready(v):
    """NaN and infinity become null: the report stays strict JSON (the `finite` gate names what was broken)."""
    if isinstance(v, dict):
        return {k: json_ready(x) for k, x in v.items()}
    return None if isinstance(v, float) and not math.isfinite(v) else v


def check(out: str | os.PathLike, text: list[str] | None = None, tokens: int | None = None,
          seq_len: int | None = None, max_ppl_increase: float | None = None, max_kl: float | None = None,
          min_agreement: float | None = None, engine: bool = False, batch_size: int = 4,
          progress: bool = True, provider: str = "cpu", log: Callable[[str], None] | None = None) -> dict:
    """Run the exported graphs (or, with engine=True, the TensorRT engines) and gate the result.

    `provider` (cpu | cuda) is ONNX Runtime's execution provider; `log` hears an estimate of the run's time.

    Returns the report: dense {ppl, step_ms}, sparse {ppl, kl, top1_agreement, step_ms}, gates, passed.
    """
    gate_values(max_ppl_increase, max_kl, min_agreement)
    out = Path(out)
    manifest = read_manifest(out)
    paths = verify_graphs(out, manifest)
    if not engine:
        providers(provider)  # before minutes of tokenizing: say at once that the provider is missing
    if engine:
        trt.require()  # before minutes of tokenizing: say at once that TensorRT is missing
        trt.engine_paths(out, manifest)
    seqs, description = evaluation_sequences(out, manifest, text, tokens, seq_len)
    if engine:
        result = trt.check_engines(out, manifest, paths, seqs, progress=progress)
        runtime = result.pop("runtime")
    else:
        import onnxruntime

        result = onnx_metrics(paths, seqs, batch_size, progress, provider, log)
        runtime = f"onnxruntime {onnxruntime.__version__} ({providers(provider)[0]})"
    reference = result.get("reference", result["dense"])  # the engine check measures against dense.onnx
    verdicts = gates(reference["ppl"], result["sparse"], max_ppl_increase, max_kl, min_agreement,
                     non_finite(result))
    report = {
        "dense": json_ready(result["dense"]),
        "sparse": json_ready(result["sparse"]),
        "gates": json_ready(verdicts),
        "passed": all(g["verdict"] == "pass" for g in verdicts.values()),
        "tokens": result["tokens"],
        "text": description,
        "runtime": runtime,
        "model": manifest["model"]["source"],
        "plan": manifest["plan"]["digest"],
        "dtype": manifest["dtype"],
    }
    if "reference" in result:
        report["reference"] = json_ready(result["reference"])
    return report


def _num(v, spec: str) -> str:
    return "nan" if v is None else v if isinstance(v, str) else format(v, spec)


def failed(report: dict) -> str:
    """The failed gates, each with its value and threshold, for one line on stderr."""
    return ", ".join(f"{n} {_num(g['value'], '.5g')} (threshold {g['threshold']})"
                     for n, g in report["gates"].items() if g["verdict"] == "fail")


def summary(report: dict) -> str:
    """The report as a few aligned lines for the terminal."""
    d, s = report["dense"], report["sparse"]
    lines = [f"{report['runtime']}, {report['dtype']}, {report['tokens']} tokens of {report['text']}",
             f"  dense   ppl {_num(d['ppl'], '10.4f')}   step {d['step_ms']:8.2f} ms",
             f"  sparse  ppl {_num(s['ppl'], '10.4f')}   step {s['step_ms']:8.2f} ms   kl {_num(s['kl'], '.5f')}   "
             f"top-1 agreement {_num(s['top1_agreement'], '.4f')}"]
    for name, g in report["gates"].items():
        op = ">=" if name == "top1_agreement" else "<="
        lines.append(f"  gate {name:15} {_num(g['value'], '.5f')} {op} {g['threshold']}: {g['verdict']}")
    lines.append("passed" if report["passed"] else "FAILED: " + ", ".join(
        n for n, g in report["gates"].items() if g["verdict"] == "fail"))
    return "\n".join(lines)
