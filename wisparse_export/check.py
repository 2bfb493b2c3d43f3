"""`wisparse check`: the accuracy gate on the exported graphs themselves.

dense.onnx and sparse.onnx run in ONNX Runtime over evaluation text; the same `evaluate.Metrics` as
`wisparse evaluate` turns their logits into perplexity, KL(dense || sparse) and top-1 agreement, and a decode
step with the KV cache is timed for each. Gates compare those figures with thresholds; the report says which
failed. `--engine` does the same for the TensorRT engines through Polygraphy (see `trt.check_engines`).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import data
from .errors import WisparseError
from .evaluate import Metrics
from .export import DTYPES, read_manifest

NP_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class Decoder:
    """One exported graph in an ONNX Runtime session, fed the way export lays out its inputs and KV cache."""

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT raises its own types; the first line says what is wrong
            raise WisparseError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}") from e
        inputs = {i.name: i for i in self.session.get_inputs()}
        past = inputs["past_key_values.0.key"]
        if past.type not in NP_DTYPES:
            raise WisparseError(f"ONNX Runtime cannot be fed {past.type} from Python; check a float32 or float16 "
                                "export (bfloat16 exports are for TensorRT)")
        self.dtype = NP_DTYPES[past.type]
        self.kv_heads, self.head_dim = past.shape[1], past.shape[3]
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def empty(self, batch: int) -> dict[str, np.ndarray]:
        return {n: np.zeros((batch, self.kv_heads, 0, self.head_dim), self.dtype) for n in self.past_names}

    def feeds(self, ids: np.ndarray, past: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Inputs for one step: ids [batch, seq] after `past` (none: a prefill from position 0)."""
        batch, seq = ids.shape
        past = past if past is not None else self.empty(batch)
        start = past[self.past_names[0]].shape[2]
        return {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((batch, start + seq), np.int64),
                "position_ids": np.broadcast_to(np.arange(start, start + seq, dtype=np.int64), (batch, seq)).copy(),
                **past}

    def step(self, ids: np.ndarray, past: dict[str, np.ndarray] | None = None):
        """Logits [batch, seq, vocab] float32 and the cache to pass to the next step."""
        outs = self.session.run(self.outputs, self.feeds(ids, past))
        names = [n.replace("present.", "past_key_values.") for n in self.outputs[1:]]
        present = dict(zip(names, outs[1:], strict=True))
        return outs[0], present


def greedy(decoder: Decoder, prompt: np.ndarray, steps: int) -> list[int]:
    """Greedy decoding with the KV cache: one prefill, then one token per step."""
    logits, past = decoder.step(prompt)
    tokens = []
    for _ in range(steps):
        tokens.append(int(logits[0, -1].argmax()))
        logits, past = decoder.step(np.array([[tokens[-1]]]), past)
    return tokens


def step_ms(step, prompt: np.ndarray, steps: int = 16, warmup: int = 2, token_by_token: bool = False) -> float:
    """Median milliseconds of one decode step (batch 1) after a prefill of `prompt`; `step(ids, past)`.

    token_by_token fills the cache one token at a time (a TensorRT decode profile takes one token per step).
    """
    if token_by_token:
        logits, past = step(prompt[:, :1], None)
        for t in range(1, prompt.shape[1]):
            logits, past = step(prompt[:, t: t + 1], past)
    else:
        logits, past = step(prompt, None)
    times = []
    for i in range(warmup + steps):
        token = np.array([[int(logits[0, -1].argmax())]])
        t0 = time.perf_counter()
        logits, past = step(token, past)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def gates(dense_ppl: float, sparse: dict, max_ppl_increase: float | None = None, max_kl: float | None = None,
          min_agreement: float | None = None) -> dict:
    """Each requested gate with its threshold, value and verdict. ppl_increase is relative: sparse/dense - 1."""
    out = {}

    def gate(name: str, value: float, threshold: float | None, upper: bool) -> None:
        if threshold is not None:
            ok = value <= threshold if upper else value >= threshold
            out[name] = {"threshold": threshold, "value": value, "verdict": "pass" if ok else "fail"}

    gate("ppl_increase", sparse["ppl"] / dense_ppl - 1.0, max_ppl_increase, True)
    gate("kl", sparse["kl"], max_kl, True)
    gate("top1_agreement", sparse["top1_agreement"], min_agreement, False)
    return out


def verify(out: Path, manifest: dict, roles=("dense", "sparse")) -> dict[str, Path]:
    """The ONNX files of an export folder, each carrying the metadata that ties it to this manifest."""
    import onnx

    paths = {}
    for role in roles:
        path = out / manifest["files"][role]
        if not path.is_file():
            raise WisparseError(f"{path} is missing; re-run wisparse export")
        try:
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        except Exception as e:  # noqa: BLE001 - protobuf decode errors have no common type
            raise WisparseError(f"{path} is not a readable ONNX file: {str(e).splitlines()[0]}") from e
        if props.get("wisparse.role") != role or props.get("wisparse.plan") != manifest["plan"]["digest"]:
            raise WisparseError(f"{path} does not belong to {out / 'manifest.json'} (not the {role} graph of plan "
                                f"{manifest['plan']['digest']}); re-run wisparse export")
        paths[role] = path
    return paths


def evaluation_sequences(out: Path, manifest: dict, text: list[str] | None, tokens: int | None,
                         seq_len: int | None) -> tuple[torch.Tensor, str]:
    """Token sequences built exactly as `wisparse evaluate` builds them, with the tokenizer saved by export."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    preset = data.recipe("presets")["evaluate"]
    folder = manifest["files"].get("tokenizer")
    if not folder or not (out / folder).is_dir():
        raise WisparseError(f"{out} holds no tokenizer; re-run wisparse export with a model that has one")
    tokenizer = AutoTokenizer.from_pretrained(str(out / folder))
    evaluation = data.load_text(list(text) if text else None, "evaluation")
    calibration = data.reload_calibration(manifest["plan"].get("calibration") or {})
    if calibration is not None:
        data.check_disjoint(calibration, evaluation)
    seqs = data.sequences(tokenizer, evaluation, seq_len or preset["seq_len"], tokens or preset["eval_tokens"])
    return seqs, evaluation.description


def onnx_metrics(paths: dict[str, Path], seqs: torch.Tensor, batch_size: int = 4, progress: bool = True) -> dict:
    """Dense and sparse graphs in ONNX Runtime (CPU) on the same sequences: metrics and decode-step latency."""
    dense, sparse = Decoder(paths["dense"]), Decoder(paths["sparse"])
    metrics = Metrics()
    for i in tqdm(range(0, len(seqs), batch_size), desc="check", unit="batch", disable=not progress):
        ids = seqs[i: i + batch_size]
        d_logits, _ = dense.step(ids.numpy())
        s_logits, _ = sparse.step(ids.numpy())
        metrics.update(torch.from_numpy(d_logits), torch.from_numpy(s_logits), ids)
    r = metrics.result()
    prompt = seqs[:1, : min(64, seqs.shape[1])].numpy()
    return {
        "dense": {"ppl": r["dense_ppl"], "step_ms": step_ms(dense.step, prompt)},
        "sparse": {"ppl": r["ppl"], "kl": r["kl"], "top1_agreement": r["top1_agreement"],
                   "step_ms": step_ms(sparse.step, prompt)},
        "tokens": r["tokens"],
    }


def check(out: str | os.PathLike, text: list[str] | None = None, tokens: int | None = None,
          seq_len: int | None = None, max_ppl_increase: float | None = None, max_kl: float | None = None,
          min_agreement: float | None = None, engine: bool = False, batch_size: int = 4,
          progress: bool = True) -> dict:
    """Run the exported graphs (or, with engine=True, the TensorRT engines) and gate the result.

    Returns the report: dense {ppl, step_ms}, sparse {ppl, kl, top1_agreement, step_ms}, gates, passed.
    """
    out = Path(out)
    manifest = read_manifest(out)
    if manifest.get("dtype") not in DTYPES:
        raise WisparseError(f"{out / 'manifest.json'} names an unsupported dtype {manifest.get('dtype')!r}")
    paths = verify(out, manifest)
    if engine:
        from . import trt

        trt.require()  # before minutes of tokenizing: say at once that TensorRT is missing
    seqs, description = evaluation_sequences(out, manifest, text, tokens, seq_len)
    if engine:
        result = trt.check_engines(out, manifest, paths, seqs, progress=progress)
        runtime = result.pop("runtime")
    else:
        import onnxruntime

        result = onnx_metrics(paths, seqs, batch_size, progress)
        runtime = f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)"
    reference = result.get("reference", result["dense"])  # the engine check measures against dense.onnx
    verdicts = gates(reference["ppl"], result["sparse"], max_ppl_increase, max_kl, min_agreement)
    report = {
        "dense": result["dense"],
        "sparse": result["sparse"],
        "gates": verdicts,
        "passed": all(g["verdict"] == "pass" for g in verdicts.values()),
        "tokens": result["tokens"],
        "text": description,
        "runtime": runtime,
        "model": manifest["model"]["source"],
        "plan": manifest["plan"]["digest"],
        "dtype": manifest["dtype"],
    }
    if "reference" in result:
        report["reference"] = result["reference"]
    return report


def summary(report: dict) -> str:
    """The report as a few aligned lines for the terminal."""
    d, s = report["dense"], report["sparse"]
    lines = [f"{report['runtime']}, {report['dtype']}, {report['tokens']} tokens of {report['text']}",
             f"  dense   ppl {d['ppl']:10.4f}   step {d['step_ms']:8.2f} ms",
             f"  sparse  ppl {s['ppl']:10.4f}   step {s['step_ms']:8.2f} ms   kl {s['kl']:.5f}   "
             f"top-1 agreement {s['top1_agreement']:.4f}"]
    for name, g in report["gates"].items():
        op = ">=" if name == "top1_agreement" else "<="
        lines.append(f"  gate {name:15} {g['value']:.5f} {op} {g['threshold']}: {g['verdict']}")
    lines.append("passed" if report["passed"] else "FAILED: " + ", ".join(
        n for n, g in report["gates"].items() if g["verdict"] == "fail"))
    return "\n".join(lines)
