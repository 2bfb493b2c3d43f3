"""The decoder-step ONNX graph, written node by node from a Hugging Face model's weights.

Tracing a KV-cache decoder through torch.onnx is brittle across transformers releases, while the decoder math of
the supported families (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma2, Gemma3) fits in a page, reads the same in
every runtime, and is checked against the PyTorch model by the tests. One graph serves prefill and decode: batch,
sequence and past length are dynamic.

Inputs:  input_ids, attention_mask [batch, past + sequence], position_ids, past_key_values.{i}.key / .value
Outputs: logits (float32), present.{i}.key / .value
The SparseLinear node follows docs/KERNEL_ABI.md: inputs (X, W [in, out], tau [in]); the model carries a local
function `wisparse.SparseLinear` with a standard-op body, so any ONNX runtime runs it, and TensorRT maps the node
to the plugin through its `plugin_namespace` / `plugin_version` attributes. A linear quantized by
`models.quantize_weights` is stored as its quantized [in, out] weight and float32 scale per output channel: the
dense graph dequantizes it (DequantizeLinear, axis 1, then a Cast to the graph's dtype) in front of MatMul, and
its SparseLinear node (op version 2) takes them as inputs 4 and 5 in place of W. A quantized lm_head
(`models.quantize_lm_head`) is DequantizeLinear -> MatMul in both graphs. Linears that the runtime launches as one
kernel (q/k/v, gate/up: `fuse`) are one SparseLinear node, as there: W (or W_q and its scale) the members'
concatenated along out, tau [P, in], `splits` their widths, op type SparseLinearP (`op_type`: its own op type and
local function, not an IR-10 function overload, which ONNX Runtime before 1.27 ignores), and a Split to the members'
outputs. The dense graph computes such a group as a fused dense deployment does, one MatMul on the same
concatenated initializers (quantized: DequantizeLinear of W_q and its scale) and the same Split, so each weight is
stored once.

Weights are not held in the graph: `Graph.init` hands every initializer above INLINE_BYTES to a store, and
`WeightsFile` (the store export uses) streams its bytes to one external data file as it is produced, chunk by
chunk from wherever the model lives (CPU or GPU), once per name: the dense and the sparse graph reference the same
bytes, and the sparse graph adds only its small tau vectors, inline.

The graph is made of named pieces (io_signature, embedding, rms_norm / gemma_rms_norm, rope_tables, rotate,
attention, mlp, linear, pre_norm_block / sandwich_block, head). `describe` picks the pieces an architecture uses;
a new architecture adds a piece where its math differs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import onnx
import torch
from onnx import TensorProto, helper

from . import kernels
from .errors import WisparseError
from .models import find_blocks, get_linear, weight_format
from .plan import LayerPlan, Plan
from .scores import column_norms, tau

OPSET = 21
IR_VERSION = 10  # the oldest IR that opset 21 allows: ONNX Runtime >= 1.18 and TensorRT 10 read it
DOMAIN = "wisparse"
OP_TYPE = "SparseLinear"
OP_VERSION = 1
OP_VERSION_QUANTIZED = 2  # inputs 4 and 5: the quantized weight and its scale, in place of W (KERNEL_ABI.md)
OP_TYPE_Q = "SparseLinearQ"  # (X, W_q, tau, W_scale): what TensorRT parses in place of op version 2 (tensorrt_view)
# Attributes TensorRT's ONNX parser reads to map the node to the plugin (KERNEL_ABI.md); the parser looks the
# plugin up as (op type, plugin_version, plugin_namespace), and prefers it over the local function when present.
PLUGIN_ATTRS = {"plugin_namespace": DOMAIN, "plugin_version": "1", "aot": 1}
ONNX_TYPES = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16,
              torch.bfloat16: TensorProto.BFLOAT16, torch.int64: TensorProto.INT64, torch.bool: TensorProto.BOOL,
              torch.float8_e4m3fn: TensorProto.FLOAT8E4M3FN, torch.int8: TensorProto.INT8}
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
F32 = TensorProto.FLOAT
INLINE_BYTES = 1024  # smaller tensors (constants, scalars) stay inside the graph
ALIGN_BYTES = 1 << 20  # tensors from this size start at a page boundary of the data file (runtimes map them)
PAGE = 4096
CHUNK_BYTES = 64 << 20  # host memory a weight passes through while it is written


def weight_name(linear: str) -> str:
    """The initializer holding a linear's weight as [in, out] (the transpose of nn.Linear.weight), in both graphs."""
    return f"{linear}.weight_t"


def quantized_names(linear: str) -> tuple[str, str]:
    """The initializers of a quantized linear, in both graphs: its weight [in, out] in the storage dtype and its
    float32 scale [out] (one per output channel: axis 1 of the [in, out] weight)."""
    return f"{linear}.weight_t_q", f"{linear}.weight_scale"


class Graph:
    """A list of nodes and initializers with generated value names: `g.op("Add", a, b)` returns the output name.

    `store(name, tensor)` makes the TensorProto of an initializer above INLINE_BYTES (None: raw bytes inline)."""

    def __init__(self, store: Callable[[str, torch.Tensor], TensorProto] | None = None) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.consts: dict[tuple, str] = {}
        self.count = 0
        self.store = store

    def op(self, op_type: str, *inputs: str, out: str | None = None, name: str | None = None, domain: str = "",
           doc: str | None = None, **attrs) -> str:
        self.count += 1
        out = out or f"{op_type}_{self.count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name or f"{op_type}_{self.count}",
                                           domain=domain, doc_string=doc, **attrs))
        return out

    def split(self, x: str, sizes: list[int]) -> list[str]:
        """x cut along its last axis into parts of `sizes`: one Split node, one output per part."""
        self.count += 1
        outs = [f"Split_{self.count}_{i}" for i in range(len(sizes))]
        self.nodes.append(helper.make_node("Split", [x, self.const(sizes)], outs, name=f"Split_{self.count}",
                                           axis=-1))
        return outs

    def init(self, name: str, t: torch.Tensor, inline: bool = False) -> str:
        small = inline or self.store is None or t.numel() * t.element_size() < INLINE_BYTES
        self.inits.append(tensor_proto(name, t) if small else self.store(name, t))
        return name

    def const(self, value, dtype: torch.dtype = torch.int64) -> str:
        """A small constant initializer, shared by every node that needs the same value."""
        key = (str(dtype), json.dumps(value))
        if key not in self.consts:
            self.consts[key] = self.init(f"const_{len(self.consts)}", torch.tensor(value, dtype=dtype))
        return self.consts[key]


def tensor_proto(name: str, t: torch.Tensor) -> TensorProto:
    """A TensorProto with raw little-endian bytes; works for bfloat16, which numpy lacks."""
    t = t.detach().cpu().contiguous()
    p = TensorProto(name=name, data_type=ONNX_TYPES[t.dtype], dims=list(t.shape))
    p.raw_data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
    return p


def write_tensor(f: BinaryIO, t: torch.Tensor) -> int:
    """Write t's bytes (row-major, little-endian) in slices of about CHUNK_BYTES, each made contiguous and brought
    to the host on its own: a transposed weight on a GPU never exists whole in host memory. Returns the length."""
    t = t.detach().reshape(1) if t.dim() == 0 else t.detach()
    row = max(1, t[0].numel() * t.element_size())
    step = max(1, CHUNK_BYTES // row)
    for i in range(0, t.shape[0], step):
        f.write(t[i: i + step].contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
    return t.numel() * t.element_size()


class WeightsFile:
    """The external data file both graphs share: each initializer's bytes appended as it is produced, once per
    name (the second graph's initializer of the same name references the same offset and length)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.file = open(self.path, "wb")  # noqa: SIM115 - closed by close() / __exit__
        self.stored: dict[str, tuple[int, int, int, list[int]]] = {}  # name -> offset, length, type, dims

    def __call__(self, name: str, t: torch.Tensor) -> TensorProto:
        if name not in self.stored:
            offset = self.file.tell()
            if t.numel() * t.element_size() >= ALIGN_BYTES and offset % PAGE:
                self.file.write(bytes(PAGE - offset % PAGE))
                offset = self.file.tell()
            self.stored[name] = (offset, write_tensor(self.file, t), ONNX_TYPES[t.dtype], list(t.shape))
        offset, length, dtype, dims = self.stored[name]
        if (dtype, dims) != (ONNX_TYPES[t.dtype], list(t.shape)):  # one name, two tensors: a bug of ours
            raise RuntimeError(f"initializer {name} stored twice with different types or shapes")
        p = TensorProto(name=name, data_type=dtype, dims=dims, data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.path.name), ("offset", str(offset)), ("length", str(length))):
            entry = p.external_data.add()
            entry.key, entry.value = key, value
        return p

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> WeightsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Step:
    """The graph being written and what every piece reads: architecture, dtype, module names, the plan."""

    g: Graph
    model: torch.nn.Module
    arch: Arch
    dtype: torch.dtype
    names: dict[torch.nn.Module, str]
    planned: dict[str, LayerPlan]
    groups: list[list[str]]  # linears sharing an input, as runtime.to_kernels groups them (plan or find_blocks)
    sparse: bool  # SparseLinear nodes; False: dense MatMuls (a plan then only says which groups are fused)
    counts: dict[str, int] = field(default_factory=lambda: {"sparse_linear": 0, "dense_linear": 0})
    masks: dict[int | None, str] = field(default_factory=dict)  # sliding window (None: full) -> mask
    rope: dict[str, tuple[str, str]] = field(default_factory=dict)  # rope table key -> (cos, sin)
    members: set[int] = field(default_factory=set)  # member counts of the fused SparseLinear nodes written

    def op(self, op_type: str, *inputs: str, **kw) -> str:
        return self.g.op(op_type, *inputs, **kw)

    def scalar(self, v: float, t: torch.dtype | None = None) -> str:
        return self.g.const(v, t or self.dtype)

    def to_f32(self, x: str) -> str:
        return x if self.dtype == torch.float32 else self.op("Cast", x, to=F32)

    def from_f32(self, x: str) -> str:
        return x if self.dtype == torch.float32 else self.op("Cast", x, to=ONNX_TYPES[self.dtype])


# ---- pieces ----

def rms_norm(s: Step, x: str, module: torch.nn.Module) -> str:
    """Llama's RMSNorm: statistics in float32, cast back, then scaled by w."""
    y = s.from_f32(rms(s, x, module))
    return s.op("Mul", s.g.init(f"{s.names[module]}.weight", module.weight.detach().to(s.dtype)), y)


def gemma_rms_norm(s: Step, x: str, module: torch.nn.Module) -> str:
    """Gemma's RMSNorm: scaled by (1 + w) in float32, then cast back."""
    y = s.op("Mul", rms(s, x, module), s.g.init(f"{s.names[module]}.scale", 1.0 + module.weight.detach().float()))
    return s.from_f32(y)


def rms(s: Step, x: str, module: torch.nn.Module) -> str:
    """x / sqrt(mean(x^2) + eps) in float32, as Hugging Face computes it."""
    eps = getattr(module, "variance_epsilon", None) or module.eps
    xf = s.to_f32(x)
    var = s.op("ReduceMean", s.op("Mul", xf, xf), s.g.const([-1]), keepdims=1)
    return s.op("Mul", xf, s.op("Reciprocal", s.op("Sqrt", s.op("Add", var, s.scalar(float(eps), torch.float32)))))


def silu(s: Step, x: str) -> str:
    return s.op("Mul", x, s.op("Sigmoid", x))


def gelu(s: Step, x: str) -> str:
    erf = s.op("Erf", s.op("Mul", x, s.scalar(1 / math.sqrt(2))))
    return s.op("Mul", s.op("Mul", x, s.scalar(0.5)), s.op("Add", erf, s.scalar(1.0)))


def gelu_tanh(s: Step, x: str) -> str:
    inner = s.op("Add", x, s.op("Mul", s.op("Mul", s.op("Mul", x, x), x), s.scalar(0.044715)))
    t = s.op("Tanh", s.op("Mul", inner, s.scalar(math.sqrt(2 / math.pi))))
    return s.op("Mul", s.op("Mul", x, s.scalar(0.5)), s.op("Add", t, s.scalar(1.0)))


ACTIVATIONS = {"SiLUActivation": silu, "SiLU": silu, "GELUTanh": gelu_tanh, "NewGELUActivation": gelu_tanh,
               "GELUActivation": gelu}


def softcap(s: Step, x: str, cap: float | None) -> str:
    """cap * tanh(x / cap) (Gemma2's attention and final logits); x unchanged without a cap."""
    if not cap:
        return x
    c = s.scalar(float(cap))
    return s.op("Mul", s.op("Tanh", s.op("Div", x, c)), c)


def weight_inputs(s: Step, name: str, lins: list[torch.nn.Linear], sparse: bool) -> tuple[str, ...]:
    """The weight of a linear (or of a fused group's members, concatenated along out) as the node reading it takes
    it: W [in, out] in the graph's dtype; for quantized linears, a MatMul gets it dequantized (DequantizeLinear, then
    Cast), a SparseLinear node the stored form (and the scales, concatenated likewise) as inputs 4, 5."""
    def cat(ts: list[torch.Tensor]) -> torch.Tensor:  # a single weight stays a view: no copy of it is made
        return ts[0] if len(ts) == 1 else torch.cat(ts, dim=-1)

    if getattr(lins[0], "weight_format", None) is None:  # [in, out], as kernels read it
        return (s.g.init(weight_name(name), cat([lin.weight.detach().t() for lin in lins]).to(s.dtype)),)
    q_name, scale_name = quantized_names(name)
    q = s.g.init(q_name, cat([lin.weight_q.t() for lin in lins]))
    scale = s.g.init(scale_name, cat([lin.weight_scale for lin in lins]))
    if sparse:
        return "", "", q, scale  # W (input 1) and B (input 3) absent; W_q, W_scale
    return (s.from_f32(s.op("DequantizeLinear", q, scale, axis=1)),)


def linear(s: Step, x: str, module: torch.nn.Module, fused: dict[str, str] | None = None) -> str:
    """x @ W^T (+ b): a SparseLinear node for a planned linear, a MatMul otherwise. W is stored [in, out].
    A member of a fused group (`fused`, from `fuse` on the same x) is its output already."""
    name = s.names[module]
    if fused and name in fused:
        return fused[name]
    lin = get_linear(s.model, name)  # a linear already wrapped by `apply` counts as its dense linear
    lp = s.planned.pop(name, None)
    y = sparse_node(s, x, name, [lin], [lp]) if lp is not None and s.sparse else dense_node(s, x, name, [lin])
    if lin.bias is not None:  # a standard Add, so the custom op keeps one fixed signature (KERNEL_ABI.md)
        y = s.op("Add", y, s.g.init(f"{name}.bias", lin.bias.detach().to(s.dtype)))
    return y


def dense_node(s: Step, x: str, name: str, lins: list[torch.nn.Linear]) -> str:
    """One MatMul of x by a linear's weight, or by a fused group's concatenated weight (the initializers the
    group's SparseLinear node reads, so the weights file holds them once)."""
    s.counts["dense_linear"] += 1
    return s.op("MatMul", x, weight_inputs(s, name, lins, sparse=False)[0], name=name)


def sparse_node(s: Step, x: str, name: str, lins: list[torch.nn.Linear], lps: list[LayerPlan]) -> str:
    """The SparseLinear node of one planned linear (tau [in]) or of a fused group (tau [P, in], op type
    `op_type(P)`): inputs (X, W, tau) or (X, "", tau, "", W_q, W_scale), `splits` the output widths."""
    w = weight_inputs(s, name, lins, sparse=True)
    taus = [tau(lp.threshold, column_norms(lin.weight), lp.alpha) for lin, lp in zip(lins, lps, strict=True)]
    t = s.g.init(f"{name}.tau", taus[0] if len(taus) == 1 else torch.stack(taus), inline=True)
    attrs = {**PLUGIN_ATTRS, "plugin_version": str(OP_VERSION_QUANTIZED)} if len(w) > 1 else PLUGIN_ATTRS
    docs = [f"sparsity {lp.sparsity}, alpha {lp.alpha}, threshold {lp.threshold!r}" for lp in lps]
    doc = docs[0] if len(lps) == 1 else "; ".join(f"{lin_name}: {d}" for lin_name, d in
                                                  zip(name.split("+"), docs, strict=True))
    s.counts["sparse_linear"] += 1
    return s.op(op_type(len(lins)), x, w[0], t, *w[1:], domain=DOMAIN, name=name,
                splits=[lin.out_features for lin in lins], doc=doc, **attrs)


def group_name(members: list[str]) -> str:
    """A fused group's node name and the stem of its initializers (`weight_name`, `quantized_names`)."""
    return "+".join(members)


def fusable_groups(s: Step, names: list[str]) -> list[list[str]]:
    """The groups among `names` (linears reading one input) that the runtime fuses (`runtime.to_kernels`): its
    groups (`Step.groups`), each planned whole and `kernels.fusable`."""
    candidates = [g for g in s.groups if set(g) <= set(names)]
    return [g for g in candidates if all(n in s.planned for n in g)
            and kernels.fusable([get_linear(s.model, n) for n in g])]


def fuse(s: Step, x: str, modules: list[torch.nn.Module]) -> dict[str, str]:
    """One SparseLinear node (dense graph: one MatMul) per fusable group of `modules` (all reading x): W their
    [in, out] weights side by side, tau [P, in], `splits` their widths; a Split cuts its output into the members'
    outputs (bias added after, as for one linear). Returns member name -> output, for `linear`."""
    out = {}
    for group in fusable_groups(s, [s.names[m] for m in modules]):
        lins, lps = [get_linear(s.model, n) for n in group], [s.planned.pop(n) for n in group]
        if s.sparse:
            y = sparse_node(s, x, group_name(group), lins, lps)
            s.members.add(len(group))
        else:
            y = dense_node(s, x, group_name(group), lins)
        for n, lin, y_p in zip(group, lins, s.g.split(y, [lin.out_features for lin in lins]), strict=True):
            b = lin.bias
            out[n] = y_p if b is None else s.op("Add", y_p, s.g.init(f"{n}.bias", b.detach().to(s.dtype)))
    return out


def embedding(s: Step, base: torch.nn.Module) -> str:
    """Token embedding lookup, times Gemma's embedding scale where the model has one."""
    h = s.op("Gather", s.g.init("embed_tokens.weight", base.embed_tokens.weight.detach().to(s.dtype)), "input_ids")
    if s.arch.embed_scale is None:
        return h
    return s.op("Mul", h, s.g.init("embed_scale", torch.tensor(s.arch.embed_scale, dtype=s.dtype)))


def attention_masks(s: Step) -> dict[int | None, str]:
    """Causal + padding mask [b, 1, 1, s, T] and one per sliding window: queries sit at past .. past+seq-1 of
    the cache, keys at 0 .. past+seq-1."""
    past_len = s.op("Squeeze", s.op("Shape", "past_key_values.0.key", start=2, end=3))
    total = s.op("Add", past_len, s.op("Squeeze", s.op("Shape", "input_ids", start=1, end=2)))
    q_pos = s.op("Unsqueeze", s.op("Range", past_len, total, s.g.const(1)), s.g.const([1]))  # [s, 1]
    k_pos = s.op("Unsqueeze", s.op("Range", s.g.const(0), total, s.g.const(1)), s.g.const([0]))  # [1, T]
    padding = s.op("Unsqueeze", s.op("Cast", "attention_mask", to=TensorProto.BOOL), s.g.const([1, 2, 3]))
    masks = {None: s.op("And", s.op("GreaterOrEqual", q_pos, k_pos), padding)}
    for w in sorted({w for w in s.arch.windows if w}):
        near = s.op("Less", s.op("Sub", q_pos, k_pos), s.g.const(w))  # key within the window: q - k < w
        masks[w] = s.op("And", masks[None], near)
    return masks


def rope_tables(s: Step) -> dict[str, tuple[str, str]]:
    """cos and sin [b, 1, s, D] per RoPE table, from position_ids in float32 as Hugging Face computes them."""
    pos = s.op("Unsqueeze", s.op("Cast", "position_ids", to=F32), s.g.const([-1]))
    tables = {}
    for key, (inv_freq, scale) in s.arch.rope_tables.items():
        freqs = s.op("Mul", pos, s.g.init(f"rope.{key}.inv_freq", inv_freq))
        emb = s.op("Concat", freqs, freqs, axis=-1)
        cs = []
        for fn in ("Cos", "Sin"):
            v = s.op(fn, emb)
            v = v if scale == 1.0 else s.op("Mul", v, s.scalar(scale, torch.float32))
            cs.append(s.op("Unsqueeze", s.from_f32(v), s.g.const([1])))
        tables[key] = (cs[0], cs[1])
    return tables


def rotate(s: Step, x: str, key: str) -> str:
    """RoPE: x * cos + rotate_half(x) * sin."""
    cos, sin = s.rope[key]
    half, d = s.arch.head_dim // 2, s.arch.head_dim
    x1 = s.op("Slice", x, s.g.const([0]), s.g.const([half]), s.g.const([-1]))
    x2 = s.op("Slice", x, s.g.const([half]), s.g.const([d]), s.g.const([-1]))
    rot = s.op("Concat", s.op("Neg", x2), x1, axis=-1)
    return s.op("Add", s.op("Mul", x, cos), s.op("Mul", rot, sin))


def heads(s: Step, y: str, n: int) -> str:
    """[b, s, n * D] -> [b, n, s, D]."""
    return s.op("Transpose", s.op("Reshape", y, s.g.const([0, 0, n, s.arch.head_dim])), perm=[0, 2, 1, 3])


def attention(s: Step, x: str, attn: torch.nn.Module, i: int) -> str:
    """Self-attention of layer i with its KV cache (present.{i}.* = past + this step's keys and values)."""
    a = s.arch
    fused = fuse(s, x, [attn.q_proj, attn.k_proj, attn.v_proj])
    q = heads(s, linear(s, x, attn.q_proj, fused), a.heads)  # [b, H, s, D]
    k = heads(s, linear(s, x, attn.k_proj, fused), a.kv_heads)
    v = heads(s, linear(s, x, attn.v_proj, fused), a.kv_heads)
    if a.qk_norm:
        q, k = a.norm(s, q, attn.q_norm), a.norm(s, k, attn.k_norm)
    q, k = rotate(s, q, a.rope[i]), rotate(s, k, a.rope[i])
    k = s.op("Concat", f"past_key_values.{i}.key", k, axis=2, out=f"present.{i}.key")
    v = s.op("Concat", f"past_key_values.{i}.value", v, axis=2, out=f"present.{i}.value")
    o = grouped_attention(s, q, k, v, s.masks[a.windows[i]])
    return linear(s, o, attn.o_proj)


def grouped_attention(s: Step, q: str, k: str, v: str, mask: str) -> str:
    """softmax(q k^T * scaling) v in float32 softmax, grouped-query without copying the cache: queries
    [b, KV, rep, s, D] against keys [b, KV, 1, T, D]. Returns [b, s, H * D]."""
    a = s.arch
    q5 = s.op("Reshape", q, s.g.const([0, a.kv_heads, a.heads // a.kv_heads, -1, a.head_dim]))
    k5, v5 = s.op("Unsqueeze", k, s.g.const([2])), s.op("Unsqueeze", v, s.g.const([2]))
    scores = s.op("Mul", s.op("MatMul", q5, s.op("Transpose", k5, perm=[0, 1, 2, 4, 3])), s.scalar(a.scaling))
    scores = s.to_f32(softcap(s, scores, a.attn_softcap))
    scores = s.op("Where", mask, scores, s.scalar(torch.finfo(torch.float32).min, torch.float32))
    probs = s.from_f32(s.op("Softmax", scores, axis=-1))
    o = s.op("Reshape", s.op("MatMul", probs, v5), s.g.const([0, a.heads, -1, a.head_dim]))
    return s.op("Reshape", s.op("Transpose", o, perm=[0, 2, 1, 3]), s.g.const([0, 0, a.heads * a.head_dim]))


def mlp(s: Step, x: str, m: torch.nn.Module) -> str:
    """down(act(gate(x)) * up(x))."""
    fused = fuse(s, x, [m.gate_proj, m.up_proj])
    act = s.arch.act(s, linear(s, x, m.gate_proj, fused))  # before up: an unfused graph stays node for node as it was
    return linear(s, s.op("Mul", act, linear(s, x, m.up_proj, fused)), m.down_proj)


def pre_norm_block(s: Step, h: str, layer: torch.nn.Module, i: int) -> str:
    """Llama / Mistral / Qwen: h + attn(norm(h)), then + mlp(norm(h))."""
    h = s.op("Add", h, attention(s, s.arch.norm(s, h, layer.input_layernorm), layer.self_attn, i))
    return s.op("Add", h, mlp(s, s.arch.norm(s, h, layer.post_attention_layernorm), layer.mlp))


def sandwich_block(s: Step, h: str, layer: torch.nn.Module, i: int) -> str:
    """Gemma2 / Gemma3: a norm before and after both attention and MLP."""
    norm = s.arch.norm
    o = attention(s, norm(s, h, layer.input_layernorm), layer.self_attn, i)
    h = s.op("Add", h, norm(s, o, layer.post_attention_layernorm))
    y = mlp(s, norm(s, h, layer.pre_feedforward_layernorm), layer.mlp)
    return s.op("Add", h, norm(s, y, layer.post_feedforward_layernorm))


def head(s: Step, h: str, model: torch.nn.Module) -> str:
    """Final norm, lm_head (the embedding transposed in-graph when tied; DequantizeLinear of its stored form when
    quantized by `models.quantize_lm_head`, in both graphs), soft-capping, float32 `logits`."""
    base, lm = model.model, model.lm_head
    h = s.arch.norm(s, h, base.norm)
    if getattr(lm, "weight_format", None) is not None:
        (w,) = weight_inputs(s, "lm_head", [lm], sparse=False)
    elif lm.weight.data_ptr() == base.embed_tokens.weight.data_ptr():
        w = s.op("Transpose", "embed_tokens.weight", perm=[1, 0])
    else:
        w = s.g.init("lm_head.weight_t", lm.weight.detach().t().to(s.dtype))
    logits = s.op("MatMul", h, w, name="lm_head")
    if lm.bias is not None:
        logits = s.op("Add", logits, s.g.init("lm_head.bias", lm.bias.detach().to(s.dtype)))
    return s.op("Cast", softcap(s, logits, s.arch.final_softcap), to=F32, out="logits")


def io_signature(arch: Arch, dtype: torch.dtype) -> tuple[list, list]:
    """Graph inputs and outputs: ids, mask, positions and the cache in; float32 logits and the new cache out."""
    kv_type = ONNX_TYPES[dtype]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"])]
    outputs = [helper.make_tensor_value_info("logits", F32, ["batch", "sequence", arch.vocab])]
    for i in range(arch.layers):
        for kind in ("key", "value"):
            past = ["batch", arch.kv_heads, "past_sequence", arch.head_dim]
            present = ["batch", arch.kv_heads, "total_sequence", arch.head_dim]
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", kv_type, past))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", kv_type, present))
    return inputs, outputs


def op_type(members: int, base: str = OP_TYPE) -> str:
    """The op type of a node computing `members` projections: `base` for one, base + P for a fused node of P
    (SparseLinear2, SparseLinear3; SparseLinearQ2, ...). Each has its own local function: distinct op types, not
    IR-10 function overloads, which ONNX Runtime before 1.27 ignores (every node would get one body)."""
    return base if members == 1 else f"{base}{members}"


def op_types(base: str = OP_TYPE) -> list[str]:
    """Every op type of `base` a graph may hold, one per member count the kernels fuse (the plugin's op types)."""
    return [op_type(p, base) for p in range(1, kernels.MAX_SPLITS + 1)]


def members_of(node: onnx.NodeProto, base: str = OP_TYPE) -> int:
    """The member count P of a `base` node of any member count (`op_type`); 0 for any other node."""
    rest = node.op_type.removeprefix(base)
    if node.domain != DOMAIN or not node.op_type.startswith(base) or not (rest == "" or rest.isdigit()):
        return 0
    return int(rest or 1)


def sparse_linear_function(quantized: bool = False, members: int = 1) -> onnx.FunctionProto:
    """The standard-op body of wisparse.SparseLinear: Y = (X where float32(|X|) > tau, else 0) @ W.

    The attributes the node carries for TensorRT are declared so that ONNX Runtime accepts them; the body needs
    none of them but `splits`. `quantized` (op version 2, every planned linear quantized): W is
    DequantizeLinear(W_q, W_scale, axis 1) cast to X's type, and the signature is (X, W, tau, B, W_q, W_scale) with
    W and B left out by the nodes. `members` > 1: a fused node (tau [P, in], W [in, sum(splits)]), op type
    `op_type(members)`, whose body cuts W by `splits` and masks X by each row of tau (`_members`).
    """
    version = {"plugin_version": str(OP_VERSION_QUANTIZED)} if quantized else {}
    inputs = ["X", "W_unused", "tau", "B_unused", "W_q", "W_scale"] if quantized else ["X", "W", "tau"]
    return _function(op_type(members), inputs, quantized, version, members)


def sparse_linear_q_function(members: int = 1) -> onnx.FunctionProto:
    """The standard-op body of wisparse.SparseLinearQ (X, W_q, tau, W_scale): op version 2's SparseLinear with its
    inputs in the kernel's (and TensorRT plugin's) order; the same arithmetic."""
    return _function(op_type(members, OP_TYPE_Q), ["X", "W_q", "tau", "W_scale"], True, {}, members)


def _members(p: int) -> list[onnx.NodeProto]:
    """The body of a fused node after |X| (absf) and zero: Y = Concat over members i of
    (X where absf > tau[i], else 0) @ W[:, columns of member i], with W cut by the node's `splits` attribute."""
    sizes = onnx.AttributeProto(name="value_ints", ref_attr_name="splits", type=onnx.AttributeProto.INTS)
    nodes = [helper.make_node("Constant", [], ["sizes"]),
             helper.make_node("Split", ["W", "sizes"], [f"W_{i}" for i in range(p)], axis=1)]
    nodes[0].attribute.append(sizes)
    for i in range(p):
        nodes += [
            helper.make_node("Constant", [], [f"row_{i}"], value=helper.make_tensor(f"i{i}", TensorProto.INT64, [],
                                                                                    [i])),
            helper.make_node("Gather", ["tau", f"row_{i}"], [f"tau_{i}"], axis=0),
            helper.make_node("Greater", ["absf", f"tau_{i}"], [f"keep_{i}"]),
            helper.make_node("Where", [f"keep_{i}", "X", "zero"], [f"xm_{i}"]),
            helper.make_node("MatMul", [f"xm_{i}", f"W_{i}"], [f"Y_{i}"]),
        ]
    return nodes + [helper.make_node("Concat", [f"Y_{i}" for i in range(p)], ["Y"], axis=-1)]


def _function(op_type: str, inputs: list[str], quantized: bool, version: dict,
              members: int = 1) -> onnx.FunctionProto:
    dq = [helper.make_node("DequantizeLinear", ["W_q", "W_scale"], ["w_f"], axis=1),
          helper.make_node("CastLike", ["w_f", "X"], ["W"])] if quantized else []
    absf = [helper.make_node("Abs", ["X"], ["absx"]),
            helper.make_node("Cast", ["absx"], ["absf"], to=TensorProto.FLOAT)]
    zero_f = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    zero = [helper.make_node("Constant", [], ["zero_f"], value=zero_f),
            helper.make_node("CastLike", ["zero_f", "X"], ["zero"])]
    if members == 1:  # node for node the body of files exported before fused nodes existed
        body = absf + [helper.make_node("Greater", ["absf", "tau"], ["keep"])] + zero + [
            helper.make_node("Where", ["keep", "X", "zero"], ["xm"]),
            helper.make_node("MatMul", ["xm", "W"], ["Y"])]
        doc = "Activation-sparse linear: input channel i is kept iff float32(|x_i|) > tau_i; W is [in, out]."
    else:
        body = absf + zero + _members(members)
        doc = (f"{members} activation-sparse linears fused: tau [{members}, in], W [in, sum(splits)]; member p keeps "
               "channel i iff float32(|x_i|) > tau[p, i] and reads its own columns of W, cut by splits.")
    defaults = [helper.make_attribute(k, v) for k, v in {**PLUGIN_ATTRS, **version}.items()]
    return helper.make_function(DOMAIN, op_type, inputs, ["Y"], dq + body, [helper.make_opsetid("", OPSET)],
                                attributes=["splits"], attribute_protos=defaults,
                                doc_string=f"{doc} See docs/KERNEL_ABI.md.")


def tensorrt_view(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The graph TensorRT parses: each op-version-2 SparseLinear node (quantized weights) of P members becomes
    `op_type(P, OP_TYPE_Q)` (SparseLinearQ, SparseLinearQ2, ...) with the kernel's input order (X, W_q, tau,
    W_scale), which the parser maps to the plugin of that op type instead of importing the dense function body.
    Other graphs come back as they are; initializers (and their external data references) are untouched. The view
    carries those op types' functions too, so any ONNX runtime runs it."""
    if not [n for n in proto.graph.node if members_of(n) and len(n.input) == 6]:
        return proto
    view = onnx.ModelProto()
    view.CopyFrom(proto)
    members = set()
    for n in view.graph.node:
        p = members_of(n)
        if p and len(n.input) == 6:
            x, _, t, _, q, scale = n.input
            n.op_type = op_type(p, OP_TYPE_Q)
            del n.input[:]
            n.input.extend([x, q, t, scale])
            next(a for a in n.attribute if a.name == "plugin_version").s = PLUGIN_ATTRS["plugin_version"].encode()
            members.add(p)
    view.functions.extend(sparse_linear_q_function(p) for p in sorted(members | {1}))
    return view


def build(model: torch.nn.Module, plan: Plan | None = None, dtype: torch.dtype = torch.float32,
          store: Callable[[str, torch.Tensor], TensorProto] | None = None, dense: bool = False) -> onnx.ModelProto:
    """The decoder-step graph of `model`: each planned linear a SparseLinear node; dense (MatMuls) when plan is
    None or `dense`, a plan then fusing the groups sparse.onnx fuses into one MatMul each, on the same weights.

    Weights go to `store` (a WeightsFile: external data, written as produced) or, without one, inline."""
    arch = describe(model)
    names = {m: n for n, m in model.named_modules()}
    groups = (plan.groups or [g for b in find_blocks(model) for g in b.groups]) if plan else []  # as to_kernels
    layers = dict(plan.layers) if plan else {}
    sparse = plan is not None and not dense
    s = Step(Graph(store), model, arch, dtype, names, layers, groups, sparse)
    s.masks, s.rope = attention_masks(s), rope_tables(s)
    h = embedding(s, model.model)
    for i, layer in enumerate(model.model.layers):
        h = arch.block(s, h, layer, i)
    head(s, h, model)
    if s.planned:
        raise WisparseError(f"plan layer {next(iter(s.planned))} is not one of the decoder's linears")
    role = "sparse" if sparse else "dense"
    graph = helper.make_graph(s.g.nodes, role, *io_signature(arch, dtype), s.g.inits)
    quantized = sparse and weight_format(model, plan.layers) is not None
    version = OP_VERSION_QUANTIZED if quantized else OP_VERSION
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(DOMAIN, version)] if sparse else [])
    functions = [sparse_linear_function(quantized, p) for p in sorted(s.members | {1})] if sparse else []
    proto = helper.make_model(graph, opset_imports=opsets, functions=functions,
                              ir_version=IR_VERSION, producer_name="wisparse-export")
    helper.set_model_props(proto, {"wisparse.role": role, "wisparse.counts": json.dumps(s.counts)})
    return proto


# ---- the architecture: which pieces a model uses ----

@dataclass
class Arch:
    """What the graph needs to know about the model, read from its config and modules, and the pieces it uses."""

    model_type: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_positions: int
    norm: Callable[[Step, str, torch.nn.Module], str]  # rms_norm | gemma_rms_norm
    block: Callable[[Step, str, torch.nn.Module, int], str]  # pre_norm_block | sandwich_block
    act: Callable[[Step, str], str]  # silu | gelu | gelu_tanh
    qk_norm: bool
    scaling: float
    embed_scale: float | None
    attn_softcap: float | None
    final_softcap: float | None
    rope: list[str]  # per layer: key into rope_tables
    rope_tables: dict[str, tuple[torch.Tensor, float]]  # key: (inv_freq, attention scaling)
    windows: list[int | None]  # per layer sliding window, None = full attention


def describe(model: torch.nn.Module) -> Arch:
    """Read the architecture; anything the graph would get wrong is refused here, in one line."""
    cfg = model.config
    model_type = getattr(cfg, "model_type", "?")
    if model_type not in SUPPORTED:
        raise WisparseError(f"the ONNX exporter does not support {model_type!r} models "
                            f"(supported: {', '.join(SUPPORTED)})")
    layer = model.model.layers[0]
    attn, mlp_ = layer.self_attn, layer.mlp
    for part, names in ((attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
                        (mlp_, ("gate_proj", "up_proj", "down_proj"))):
        if not all(hasattr(part, n) for n in names):
            raise WisparseError(f"{model_type} model has an unexpected layout (no {', '.join(names)})")
    act = ACTIVATIONS.get(type(mlp_.act_fn).__name__)
    if act is None:
        raise WisparseError(f"the ONNX exporter does not support the activation {type(mlp_.act_fn).__name__}")
    head_dim = getattr(attn, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope, tables = rope_of(model, head_dim)
    embed_scale = getattr(model.model.embed_tokens, "embed_scale", None)
    return Arch(
        model_type=model_type, layers=cfg.num_hidden_layers, heads=cfg.num_attention_heads,
        kv_heads=cfg.num_key_value_heads, head_dim=head_dim, vocab=cfg.vocab_size,
        max_positions=int(cfg.max_position_embeddings),
        norm=gemma_rms_norm if type(layer.input_layernorm).__name__.startswith("Gemma") else rms_norm,
        block=sandwich_block if hasattr(layer, "pre_feedforward_layernorm") else pre_norm_block,
        act=act, qk_norm=hasattr(attn, "q_norm"), scaling=float(attn.scaling),
        embed_scale=None if embed_scale is None else float(embed_scale),
        attn_softcap=getattr(cfg, "attn_logit_softcapping", None) if model_type == "gemma2" else None,
        final_softcap=getattr(cfg, "final_logit_softcapping", None), rope=rope, rope_tables=tables,
        windows=windows_of(cfg),
    )


def rope_of(model: torch.nn.Module, head_dim: int) -> tuple[list[str], dict[str, tuple[torch.Tensor, float]]]:
    """Per layer, the key of its RoPE table; per key, inv_freq and attention scaling (the model's own)."""
    cfg, rotary = model.config, model.model.rotary_emb
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
    tables, rope = {}, []
    for t in types[: cfg.num_hidden_layers]:
        key = t if hasattr(rotary, f"{t}_inv_freq") else "default"
        if key not in tables:
            kind = rotary.rope_type[key] if isinstance(rotary.rope_type, dict) else rotary.rope_type
            if kind in ("dynamic", "longrope"):
                raise WisparseError(f"the ONNX exporter does not support {kind!r} RoPE scaling (it depends on the "
                                    "sequence length)")
            inv = getattr(rotary, f"{key}_inv_freq" if key != "default" else "inv_freq")
            scale = getattr(rotary, f"{key}_attention_scaling" if key != "default" else "attention_scaling")
            if 2 * inv.numel() != head_dim:
                raise WisparseError("the ONNX exporter does not support partial rotary embeddings")
            tables[key] = (inv.detach().float().cpu().clone(), float(scale))
        rope.append(key)
    return rope, tables


def windows_of(cfg) -> list[int | None]:
    """Per layer sliding window; Mistral's config sets one window for every layer."""
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if types:
        return [window if t == "sliding_attention" else None for t in types[: cfg.num_hidden_layers]]
    return [window] * cfg.num_hidden_layers


def counts_of(proto: onnx.ModelProto) -> dict:
    return json.loads({p.key: p.value for p in proto.metadata_props}["wisparse.counts"])
