"""End-to-end decode speed: tokens/s of a Llama-architecture model, dense vs sparse, in one runtime.

The decode step below is a plain gpt-fast style loop over the model's own modules (embedding, norms, rotary,
q/k/v/o and MLP linears, lm_head) with a static KV cache, so one step is one CUDA graph replay and the dense and
sparse runs differ only in the linears. Random-weight models of real shapes (`--model random:NAME`, or its alias
`--shape NAME`; random_models.py) measure speed only. Thresholds: with a plan, the plan's own (per-layer
thresholds and alphas from `calibrate`'s search, at its target: what deployment runs); without one, per-linear
quantiles of |x| on random tokens (alpha 0), uniform at each requested sparsity. The result says which.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .calibration import make_plan, uniform
from .errors import WisparseError
from .evaluate import weighted_sparsity
from .models import Loaded, execution_device, find_blocks, input_device, offloaded
from .plan import Plan
from .runtime import apply, sparse_linears, to_kernels, track_sparsity


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
    ms_per_step: float
    steps: int
    graphs: bool


def time_decode(dec: Decoder, steps: int = 128, graphs: bool = True, warmup: int = 3) -> Timing:
    """Time of `steps` decode steps after warm-up: CUDA events around the replays on a GPU, a wall clock on CPU."""
    if steps + warmup + 1 > dec.max_len:
        raise WisparseError(f"steps + warmup must be below the cache length {dec.max_len}")
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
    dec.reset()
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            run()
        end.record()
        end.synchronize()
        ms = start.elapsed_time(end)
    else:
        t0 = time.perf_counter()
        for _ in range(steps):
            run()
        ms = (time.perf_counter() - t0) * 1e3
    return Timing(dec.batch * steps / (ms / 1e3), ms / steps, steps, graphs and cuda)


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


def run(model: nn.Module, sparsities: list[float], batch: int = 1, steps: int = 128, graphs: bool = True,
        fuse: bool = True, plan=None, label: str = "", compile: bool = False) -> dict:
    """Dense tokens/s, then sparse tokens/s (kernels on CUDA) with realized sparsity: for `plan`, once, with its own
    per-layer thresholds; otherwise at each of `sparsities`, uniform quantile thresholds.

    With compile=True both runs go through torch.compile (then the fused q/k/v, gate/up launches are off: each
    linear is its own op in the compiled graph).
    """

    device = input_device(model)
    dec = Decoder(model, batch, max_len=steps + 16)
    dec.compile(compile)
    dense = time_decode(dec, steps, graphs)
    result = {"model": label, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "batch": batch, "steps": steps,
              "graphs": dense.graphs, "compiled": compile, "dense_tokens_per_s": dense.tokens_per_s,
              "dense_ms_per_step": dense.ms_per_step, "thresholds": "uniform" if plan is None else "plan",
              "plan": None if plan is None else plan.digest(), "sparse": []}
    samples = None
    if plan is None:
        samples = activation_samples(model)
        plan = uniform_plan(model, samples, sparsities[0])
    apply(model, plan, check=False, kernels=False)  # switched to the kernels below, unfused under torch.compile
    to_kernels(model, (plan.groups or None) if fuse and not compile else [])
    dec.compile(compile)  # the linears changed: trace again
    for s in sparsities if samples is not None else [plan.target_sparsity]:
        if samples is not None:
            set_sparsity(model, samples, s)
        dec.reset()
        with track_sparsity(model) as realized:
            for _ in range(4):
                dec.ids.copy_(dec.logits()[:, -1].argmax(-1, keepdim=True))  # eager: counting syncs the host
                dec.pos.add_(1)
            r = realized()
        t = time_decode(dec, steps, graphs)
        result["sparse"].append({"target": s, "realized": weighted_sparsity(r, plan),
                                 "tokens_per_s": t.tokens_per_s, "ms_per_step": t.ms_per_step,
                                 "speedup": t.tokens_per_s / dense.tokens_per_s})
    return result
