"""ONNX Runtime sessions over an exported decoder-step graph, fed the way export lays out inputs and KV cache;
greedy decoding and decode-step timing on top. Used by `check` (ONNX Runtime metrics) and `trt` (the reference
runner's layout, the engines' step timing)."""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from .errors import WisparseError

NP_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# ONNX Runtime fuses an int8 DequantizeLinear -> MatMul into MatMulNBits and, by default (level 4), quantizes the
# activations to int8 there too: not the weight-only computation the graph states (logits off by ~5e-2 on a tiny
# model). Level 1 keeps the activations in float32; graphs without int8 weights are unaffected.
WEIGHT_ONLY = {"session.qdq_matmulnbits_accuracy_level": "1"}


def providers(name: str) -> list[str]:
    """ONNX Runtime providers for `name` (cpu | cuda), refused in one line when this ONNX Runtime lacks it. CUDA
    comes from the onnxruntime-gpu package; the CPU provider stays as the fallback ONNX Runtime places shape ops
    on."""
    import onnxruntime as ort

    if name not in PROVIDERS:
        raise WisparseError(f"unknown provider {name!r}; choose one of {', '.join(PROVIDERS)}")
    if PROVIDERS[name] not in ort.get_available_providers():
        raise WisparseError(f"this ONNX Runtime ({ort.__version__}) has no {name.upper()} execution provider: "
                            "pip install onnxruntime-gpu (in place of onnxruntime) on a machine with CUDA")
    if name == "cuda" and hasattr(ort, "preload_dlls"):  # CUDA / cuDNN from the nvidia-* wheels torch brings
        ort.preload_dlls()
    return [PROVIDERS[name]] + (["CPUExecutionProvider"] if name != "cpu" else [])


class GraphSession:
    """One exported graph in an ONNX Runtime session: builds its feeds, runs a step, carries the cache."""

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        for key, value in WEIGHT_ONLY.items():
            opts.add_session_config_entry(key, value)
        if threads:
            opts.intra_op_num_threads = threads
        providers = providers or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own types; the first line says what is wrong
            raise WisparseError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}") from e
        if self.session.get_providers()[0] != providers[0]:  # ORT falls back to the CPU when CUDA fails to load
            raise WisparseError(f"ONNX Runtime could not start {providers[0]} for {path} (it fell back to "
                                f"{self.session.get_providers()[0]}): check the CUDA and cuDNN libraries")
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

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits of a prefill from position 0, without bringing the cache back to the host."""
        return self.session.run(["logits"], self.feeds(ids))[0]

    def step(self, ids: np.ndarray, past: dict[str, np.ndarray] | None = None):
        """Logits [batch, seq, vocab] float32 and the cache to pass to the next step."""
        outs = self.session.run(self.outputs, self.feeds(ids, past))
        names = [n.replace("present.", "past_key_values.") for n in self.outputs[1:]]
        present = dict(zip(names, outs[1:], strict=True))
        return outs[0], present


def greedy(session: GraphSession, prompt: np.ndarray, steps: int) -> list[int]:
    """Greedy decoding with the KV cache: one prefill, then one token per step."""
    logits, past = session.step(prompt)
    tokens = []
    for _ in range(steps):
        tokens.append(int(logits[0, -1].argmax()))
        logits, past = session.step(np.array([[tokens[-1]]]), past)
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
