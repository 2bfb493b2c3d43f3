"""End-to-end decode speed: tokens/s of a Llama-architecture model, dense vs sparse, in one runtime.

The decode step below is a plain gpt-fast style loop over the model's own modules (embedding, norms, rotary,
q/k/v/o and MLP linears, lm_head) with a static KV cache, so one step is one CUDA graph replay and the dense and
sparse runs differ only in the linears. Random-weight models of real shapes (`--model random:NAME`, or its alias
`--shape NAME`; random_models.py) measure speed only. Thresholds: with a plan, the plan's own (per-layer
thresholds and alphas from `calibrate`'s search, at its target: what deployment runs); without one, per-linear
quantiles of |x| on random tokens (alpha 0), uniform at each requested sparsity. The result says which.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .calibration import make_plan, uniform
from .errors import WisparseError
from .evaluate import weighted_sparsity
from .kernels import Q_ROWS
from .models import Loaded, execution_device, find_blocks, head_format, input_device, offloaded, weight_format
from .plan import Plan
from .runtime import QuantizedHead, apply, sparse_linears, to_kernels, track_sparsity


class Decoder:
    """One decode step for B sequences over a static KV cache; all state lives in device tensors (graph-safe)."""

    def __init__(self, model: nn.Module, batch: int = 1, max_len: int = 512):
        cfg = model.config
        if getattr(cfg, "model_type", None) not in ("llama", "mistral", "qwen2"):
            raise WisparseError(f"bench decodes Llama-architecture models, not {getattr(cfg, 'model_type', '?')}")
        if offloaded(model):  # the step calls the modules inside each block, which offload hooks do not reach
            raise WisparseError("bench times a model held in GPU memory: load it without cpu/disk offload")
        self.model, self.batch, self.max_len = model, batch, max_len
        dtype, device = next(model.parameters()).dtype, input_device(model)
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        shape = (batch, self.kv_heads, max_len, self.head_dim)
        self.devices = [execution_device(layer) for layer in model.model.layers]  # a device map spreads them
        self.k = [torch.zeros(shape, dtype=dtype, device=d) for d in self.devices]
        self.v = [torch.zeros(shape, dtype=dtype, device=d) for d in self.devices]
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.slots = torch.arange(max_len, device=device)
        self._logits = self.logits

    def reset(self, ids: torch.Tensor | None = None) -> None:
        self.pos.zero_()
        self.ids.copy_(ids if ids is not None else torch.ones_like(self.ids))

    @torch.no_grad()
    def logits(self) -> torch.Tensor:
        """Logits of the token in self.ids at position self.pos; writes its keys and values into the cache."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        m, b = self.model.model, self.batch
        h = m.embed_tokens(self.ids)
        cos, sin = m.rotary_emb(h, self.pos.view(1, 1))
        mask = (self.slots <= self.pos).view(1, 1, 1, -1)
        for i, layer in enumerate(m.layers):
            dev = self.devices[i]  # no-ops on one device; the hidden state follows the blocks of a device map
            h, cos, sin, mask, pos = h.to(dev), cos.to(dev), sin.to(dev), mask.to(dev), self.pos.to(dev)
            attn, a = layer.self_attn, layer.input_layernorm(h)
            q = attn.q_proj(a).view(b, 1, self.heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(a).view(b, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(a).view(b, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            self.k[i].index_copy_(2, pos, k)
            self.v[i].index_copy_(2, pos, v)
            o = F.scaled_dot_product_attention(q, self.k[i], self.v[i], attn_mask=mask, enable_gqa=True)
            h = h + attn.o_proj(o.transpose(1, 2).reshape(b, 1, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.model.lm_head(m.norm(h.to(execution_device(m.norm))))

    def step(self) -> None:
        """Greedy: the next token becomes the input, the position advances (no host synchronisation)."""
        self.ids.copy_(self._logits()[:, -1].argmax(-1, keepdim=True))
        self.pos.add_(1)

    def compile(self, on: bool = True) -> None:
        """Run the step's logits through torch.compile (fuses the norms, rotary and MLP glue around the linears)."""
        self._logits = torch.compile(self.logits) if on else self.logits


@dataclass
class Timing:
    tokens_per_s: float
    ms_per_step: float  # the median over the repetitions
    steps: int
    graphs: bool
    runs_ms: tuple[float, ...] = ()  # ms per step of each repetition


def time_decode(dec: Decoder, steps: int = 128, graphs: bool = True, warmup: int = 3, repeats: int = 3) -> Timing:
    """Median of `repeats` timings of `steps` decode steps after warm-up: CUDA events around the replays on a GPU,
    a wall clock on CPU."""
    if steps + warmup + 1 > dec.max_len:
        raise WisparseError(f"steps + warmup must be below the cache length {dec.max_len}")
    if repeats < 1:
        raise WisparseError("repeats must be at least 1")
    cuda = dec.ids.is_cuda
    run = dec.step
    dec.reset()
    if cuda:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                dec.step()
        torch.cuda.current_stream().wait_stream(side)
        if graphs:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                dec.step()
            run = graph.replay
            for _ in range(warmup):
                run()
        torch.cuda.synchronize()
    else:
        for _ in range(warmup):
            dec.step()
    runs = tuple(_timed_steps(dec, run, steps, cuda) / steps for _ in range(repeats))
    ms = statistics.median(runs)
    return Timing(dec.batch / (ms / 1e3), ms, steps, graphs and cuda, runs)


def _timed_steps(dec: Decoder, run, steps: int, cuda: bool) -> float:
    """ms of `steps` calls of `run` from a reset cache."""
    dec.reset()
    if not cuda:
        t0 = time.perf_counter()
        for _ in range(steps):
            run()
        return (time.perf_counter() - t0) * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


@torch.no_grad()
def activation_samples(model: nn.Module, tokens: int = 256, per_linear: int = 65536, seed: int = 0
                       ) -> dict[str, torch.Tensor]:
    """|x| samples at every decoder-block linear's input, from one pass over random tokens."""

    names = [n for b in find_blocks(model) for n in b.linears]
    mods = {model.get_submodule(n): n for n in names}
    out: dict[str, torch.Tensor] = {}

    def hook(mod, args):
        x = args[0].detach().float().abs().flatten()
        idx = torch.randperm(x.numel(), device=x.device)[:per_linear]
        out[mods[mod]] = x[idx]

    hooks = [m.register_forward_pre_hook(hook) for m in mods]
    try:
        g = torch.Generator(device="cpu").manual_seed(seed)
        ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=g)
        model(input_ids=ids.to(input_device(model)))
    finally:
        for h in hooks:
            h.remove()
    return out


def uniform_plan(model: nn.Module, samples: dict[str, torch.Tensor], sparsity: float) -> Plan:
    """A plan giving every linear the same target sparsity (alpha 0: thresholds are |x| quantiles)."""
    cut = {name: float(torch.quantile(s, sparsity)) if sparsity > 0 else 0.0 for name, s in samples.items()}
    return make_plan(Loaded(model, None, "bench", find_blocks(model)), uniform(samples, sparsity, 0.0),
                     lambda name, s, a: cut[name], "teal", sparsity, {"text": "random tokens"})


def set_sparsity(model: nn.Module, samples: dict[str, torch.Tensor], sparsity: float) -> None:
    """Re-threshold the applied linears in place (tau keeps its storage, so captured graphs stay valid)."""

    for name, m in sparse_linears(model).items():
        t = float(torch.quantile(samples[name], sparsity)) if sparsity > 0 else 0.0
        m.threshold, m.sparsity = t, sparsity
        m.tau.fill_(t)


def time_dense_quantized(model: nn.Module, dec: Decoder, steps: int, graphs: bool, repeats: int = 3) -> Timing:
    """A quantized model on the kernels with every threshold 0: the dense FP8/INT8 weight-only path (every 1-byte
    row read). The thresholds are restored afterwards."""
    mods = sparse_linears(model).values()
    saved = [(m.threshold, m.sparsity, m.tau.clone()) for m in mods]
    for m in mods:
        m.threshold, m.sparsity = 0.0, 0.0
        m.tau.zero_()
    try:
        return time_decode(dec, steps, graphs, repeats=repeats)
    finally:
        for m, (t, s, tau) in zip(mods, saved, strict=True):
            m.threshold, m.sparsity = t, s
            m.tau.copy_(tau)


def weight_only_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """gpt-fast's weight-only linear on a stored 1-byte weight q [out, in]: converted inside the product, then the
    scale (under torch.compile, Inductor fuses the conversion into the matmul's kernel)."""
    y = F.linear(x, q.to(x.dtype)) * scale.to(x.dtype)
    return y if bias is None else y + bias


def _weight_only_forward(lin: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return weight_only_linear(x, lin.weight_q, lin.weight_scale, lin.bias)


@contextlib.contextmanager
def weight_only(model: nn.Module) -> Iterator[None]:
    """Every quantized block linear, and a quantized lm_head, computes `weight_only_linear` (an instance `forward`,
    removed on the way out: it must not outlive the timing, or it would shadow SparseLinear's forward after
    `apply`)."""
    linears = [m for blk in find_blocks(model) for m in map(model.get_submodule, blk.linears)]
    mods = [m for m in [*linears, model.get_output_embeddings()] if getattr(m, "weight_format", None) is not None]
    for m in mods:
        m.forward = functools.partial(_weight_only_forward, m)
    try:
        yield
    finally:
        for m in mods:
            del m.forward


WEIGHT_ONLY = "torch.compile weight-only"


def time_weight_only(model: nn.Module, dec: Decoder, steps: int, graphs: bool, repeats: int = 3) -> Timing | str:
    """Dense decode with gpt-fast's compiled weight-only linears: a dense 1-byte reference besides our kernels.
    When Inductor cannot compile it (torch 2.11 fails on int8), the error's first line instead: an optional
    reference must not end the run, and the table says it was not timed."""
    try:
        with weight_only(model):
            dec.compile(True)
            return time_decode(dec, steps, graphs, repeats=repeats)
    except torch._dynamo.exc.BackendCompilerFailed as e:
        torch._dynamo.reset()
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"


def dense_q_fields(kernel: Timing, compiled: Timing | str | None) -> tuple[dict, Timing]:
    """The result's dense 1-byte fields: the faster path's figures (what the sparse rows are divided by), each
    path's, and the reference that failed to compile (if one did)."""
    paths = {"our kernels at threshold 0": kernel} | ({WEIGHT_ONLY: compiled} if isinstance(compiled, Timing) else {})
    name, best = max(paths.items(), key=lambda p: p[1].tokens_per_s)
    failed = {WEIGHT_ONLY: compiled} if isinstance(compiled, str) else {}
    return {"dense_q_tokens_per_s": best.tokens_per_s, "dense_q_ms_per_step": best.ms_per_step,
            "dense_q_ms_runs": best.runs_ms, "dense_q_path": name,
            "dense_q_paths": {k: t.tokens_per_s for k, t in paths.items()},
            "dense_q_failed": failed}, best


def head_paths(model: nn.Module, rows: int, dense_q_path: str | None) -> dict:
    """What the lm_head runs in each timed path (the result's "lm_head"), read off the model once `to_kernels` ran:
    the dense run (before `apply`) computes with its weight in the model's dtype (for a quantized head, the
    dequantized one: the unquantized model's cost); dense_q and sparse, a quantized head on the kernels, read its
    1-byte rows at threshold 0 (a compiled weight-only dense_q, gpt-fast's linear)."""
    head = model.get_output_embeddings()
    fmt = head_format(model)
    dtype = str(head.weight.dtype).replace("torch.", "")
    plain = f"{dtype} ({'cuBLAS' if head.weight.is_cuda else 'CPU matmul'}"
    plain += ")" if fmt is None else f", the dequantized {fmt.name} weight)"
    ours = f"{fmt.name} (our kernel, threshold 0)" if isinstance(head, QuantizedHead) and rows <= Q_ROWS else plain
    paths = {"format": None if fmt is None else fmt.name, "dense": plain, "sparse": ours}
    if dense_q_path is not None:
        paths["dense_q"] = f"{fmt.name} ({WEIGHT_ONLY})" if dense_q_path == WEIGHT_ONLY and fmt else ours
    return paths


def run(model: nn.Module, sparsities: list[float], batch: int = 1, steps: int = 128, graphs: bool = True,
        fuse: bool = True, plan=None, label: str = "", compile: bool = False, repeats: int = 3) -> dict:
    """Dense tokens/s, then sparse tokens/s (kernels on CUDA) with realized sparsity: for `plan`, once, with its own
    per-layer thresholds; otherwise at each of `sparsities`, uniform quantile thresholds.

    A quantized model (`models.quantize_weights`) times three paths: dense on its dequantized weights (cuBLAS in
    the model's dtype: what the unquantized model costs), dense on the 1-byte weights (`dense_q`: the faster of our
    kernels with every threshold 0 and, with compile, gpt-fast's weight-only linear), and sparse on the 1-byte
    weights. With compile=True every run goes through torch.compile, the fused q/k/v and gate/up launches included.
    Every figure is the median of `repeats` timings (each repetition's ms per step in the result's `*ms_runs`).
    The result's "lm_head" says what the lm_head runs in each path (`head_paths`).
    """

    device = input_device(model)
    dec = Decoder(model, batch, max_len=steps + 16)
    dec.compile(compile)
    dense = time_decode(dec, steps, graphs, repeats=repeats)
    result = {"model": label, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "batch": batch, "steps": steps,
              "graphs": dense.graphs, "compiled": compile, "dense_tokens_per_s": dense.tokens_per_s,
              "dense_ms_per_step": dense.ms_per_step, "repeats": repeats, "dense_ms_runs": dense.runs_ms,
              "thresholds": "uniform" if plan is None else "plan",
              "plan": None if plan is None else plan.digest(), "sparse": []}
    fmt = weight_format(model, [n for blk in find_blocks(model) for n in blk.linears])
    result["weights"] = None if fmt is None else fmt.name
    compiled_q = time_weight_only(model, dec, steps, graphs, repeats) if fmt is not None and compile else None
    samples = None
    if plan is None:
        samples = activation_samples(model)
        plan = uniform_plan(model, samples, sparsities[0])
    apply(model, plan, check=False, kernels=False)  # switched to the kernels below
    to_kernels(model, (plan.groups or None) if fuse else [])
    dec.compile(compile)  # the linears changed: trace again
    dense_q = None
    if fmt is not None:
        fields, dense_q = dense_q_fields(time_dense_quantized(model, dec, steps, graphs, repeats), compiled_q)
        result.update(fields)
    result["lm_head"] = head_paths(model, batch, result.get("dense_q_path"))
    for s in sparsities if samples is not None else [plan.target_sparsity]:
        if samples is not None:
            set_sparsity(model, samples, s)
        dec.reset()
        with track_sparsity(model) as realized:
            for _ in range(4):
                dec.ids.copy_(dec.logits()[:, -1].argmax(-1, keepdim=True))  # eager: counting syncs the host
                dec.pos.add_(1)
            r = realized()
        t = time_decode(dec, steps, graphs, repeats=repeats)
        result["sparse"].append({"target": s, "realized": weighted_sparsity(r, plan),
                                 "tokens_per_s": t.tokens_per_s, "ms_per_step": t.ms_per_step, "ms_runs": t.runs_ms,
                                 "speedup": t.tokens_per_s / dense.tokens_per_s})
        if dense_q is not None:
            result["sparse"][-1]["speedup_over_dense_q"] = t.tokens_per_s / dense_q.tokens_per_s
    return result
