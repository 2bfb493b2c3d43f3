"""ONNX export: `dense.onnx` (standard ops) and `sparse.onnx` (one `wisparse::SparseLinear` node per planned
linear), each a decoder step with an explicit KV cache, plus `manifest.json` and the tokenizer.

The graph is written node by node from the Hugging Face model's weights rather than traced: tracing a KV-cache
decoder through torch.onnx is brittle across transformers releases, while the decoder math of the supported
families (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma2, Gemma3) fits in a page, reads the same in every runtime,
and is checked against the PyTorch model by the tests. One graph serves prefill and decode: batch, sequence and
past length are dynamic.

Inputs:  input_ids, attention_mask [batch, past + sequence], position_ids, past_key_values.{i}.key / .value
Outputs: logits (float32), present.{i}.key / .value
The SparseLinear node follows docs/KERNEL_ABI.md: inputs (X, W [in, out], tau [in]); the model carries a local
function `wisparse.SparseLinear` with a standard-op body, so any ONNX runtime runs it, and TensorRT maps the node
to the plugin through its `plugin_namespace` / `plugin_version` attributes.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper

from .errors import WisparseError
from .files import atomic_dir, write_json
from .models import Loaded, fingerprint, get_linear
from .plan import Plan
from .scores import column_norms, tau

OPSET = 21
IR_VERSION = 10  # the oldest IR that opset 21 allows: ONNX Runtime >= 1.18 and TensorRT 10 read it
DOMAIN = "wisparse"
OP_TYPE = "SparseLinear"
OP_VERSION = 1
# Attributes TensorRT's ONNX parser reads to map the node to the plugin (KERNEL_ABI.md); the parser looks the
# plugin up as (op type, plugin_version, plugin_namespace), and prefers it over the local function when present.
PLUGIN_ATTRS = {"plugin_namespace": DOMAIN, "plugin_version": "1", "aot": 1}
FORMAT = "wisparse-export"
VERSION = 1
MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ONNX_TYPES = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16,
              torch.bfloat16: TensorProto.BFLOAT16, torch.int64: TensorProto.INT64, torch.bool: TensorProto.BOOL}
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
EXTERNAL_DATA_BYTES = 256 << 20  # weights above this go to a side file (protobuf stops at 2 GiB; big files load slowly)


@dataclass
class Arch:
    """What the graph needs to know about the model, read from its config and modules."""

    model_type: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    act: str  # silu | gelu_tanh | gelu
    gemma_norm: bool  # RMSNorm weight applied as (1 + w), in float32
    sandwich: bool  # Gemma2/3: norms after attention and MLP too
    qk_norm: bool
    scaling: float
    embed_scale: float | None
    attn_softcap: float | None
    final_softcap: float | None
    rope: list[str]  # per layer: key into rope_tables
    rope_tables: dict[str, tuple[torch.Tensor, float]] = field(default_factory=dict)  # key: (inv_freq, scaling)
    windows: list[int | None] = field(default_factory=list)  # per layer sliding window, None = full attention


ACTIVATIONS = {"SiLUActivation": "silu", "SiLU": "silu", "GELUTanh": "gelu_tanh", "NewGELUActivation": "gelu_tanh",
               "GELUActivation": "gelu"}


def describe(model: torch.nn.Module) -> Arch:
    """Read the architecture; anything the graph would get wrong is refused here, in one line."""
    cfg = model.config
    model_type = getattr(cfg, "model_type", "?")
    if model_type not in SUPPORTED:
        raise WisparseError(f"the ONNX exporter does not support {model_type!r} models "
                            f"(supported: {', '.join(SUPPORTED)})")
    base = model.model
    layer = base.layers[0]
    attn, mlp = layer.self_attn, layer.mlp
    for part, names in ((attn, ("q_proj", "k_proj", "v_proj", "o_proj")), (mlp, ("gate_proj", "up_proj", "down_proj"))):
        if not all(hasattr(part, n) for n in names):
            raise WisparseError(f"{model_type} model has an unexpected layout (no {', '.join(names)})")
    act = ACTIVATIONS.get(type(mlp.act_fn).__name__)
    if act is None:
        raise WisparseError(f"the ONNX exporter does not support the activation {type(mlp.act_fn).__name__}")
    head_dim = getattr(attn, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rotary = base.rotary_emb
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
    tables, rope = {}, []
    for i in range(cfg.num_hidden_layers):
        key = types[i] if hasattr(rotary, f"{types[i]}_inv_freq") else "default"
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
    window = getattr(cfg, "sliding_window", None)
    if getattr(cfg, "layer_types", None):
        windows = [window if t == "sliding_attention" else None for t in types]
    else:  # Mistral: one window for every layer when the config sets one
        windows = [window] * cfg.num_hidden_layers
    embed_scale = getattr(base.embed_tokens, "embed_scale", None)
    return Arch(
        model_type=model_type, layers=cfg.num_hidden_layers, hidden=cfg.hidden_size,
        heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads, head_dim=head_dim, vocab=cfg.vocab_size,
        act=act, gemma_norm=type(layer.input_layernorm).__name__.startswith("Gemma"),
        sandwich=hasattr(layer, "pre_feedforward_layernorm"), qk_norm=hasattr(attn, "q_norm"),
        scaling=float(attn.scaling), embed_scale=None if embed_scale is None else float(embed_scale),
        attn_softcap=getattr(cfg, "attn_logit_softcapping", None) if model_type == "gemma2" else None,
        final_softcap=getattr(cfg, "final_logit_softcapping", None), rope=rope, rope_tables=tables, windows=windows,
    )


def tensor_proto(name: str, t: torch.Tensor) -> TensorProto:
    """A TensorProto with raw little-endian bytes; works for bfloat16, which numpy lacks."""
    t = t.detach().cpu().contiguous()
    p = TensorProto(name=name, data_type=ONNX_TYPES[t.dtype], dims=list(t.shape))
    p.raw_data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
    return p


class Graph:
    """A list of nodes and initializers with generated value names: `g.op("Add", a, b)` returns the output name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.consts: dict[tuple, str] = {}
        self.count = 0

    def op(self, op_type: str, *inputs: str, out: str | None = None, name: str | None = None, domain: str = "",
           doc: str | None = None, **attrs) -> str:
        self.count += 1
        out = out or f"{op_type}_{self.count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name or f"{op_type}_{self.count}",
                                           domain=domain, doc_string=doc, **attrs))
        return out

    def init(self, name: str, t: torch.Tensor) -> str:
        self.inits.append(tensor_proto(name, t))
        return name

    def const(self, value, dtype: torch.dtype = torch.int64) -> str:
        """A small constant initializer, shared by every node that needs the same value."""
        key = (str(dtype), json.dumps(value))
        if key not in self.consts:
            self.consts[key] = self.init(f"const_{len(self.consts)}", torch.tensor(value, dtype=dtype))
        return self.consts[key]


def sparse_linear_function() -> onnx.FunctionProto:
    """The standard-op body of wisparse.SparseLinear: Y = (X where float32(|X|) > tau, else 0) @ W.

    The attributes the node carries for TensorRT are declared so that ONNX Runtime accepts them; the body needs
    none of them. `splits` (several fused projections) is declared for the ABI, but the exporter emits one node
    per linear, so the body handles tau [in] only.
    """
    nodes = [
        helper.make_node("Abs", ["X"], ["absx"]),
        helper.make_node("Cast", ["absx"], ["absf"], to=TensorProto.FLOAT),
        helper.make_node("Greater", ["absf", "tau"], ["keep"]),
        helper.make_node("Constant", [], ["zero_f"], value=helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])),
        helper.make_node("CastLike", ["zero_f", "X"], ["zero"]),
        helper.make_node("Where", ["keep", "X", "zero"], ["xm"]),
        helper.make_node("MatMul", ["xm", "W"], ["Y"]),
    ]
    defaults = [helper.make_attribute(k, v) for k, v in PLUGIN_ATTRS.items()]
    return helper.make_function(DOMAIN, OP_TYPE, ["X", "W", "tau"], ["Y"], nodes, [helper.make_opsetid("", OPSET)],
                                attributes=["splits"], attribute_protos=defaults,
                                doc_string="Activation-sparse linear: input channel i is kept iff float32(|x_i|) > "
                                           "tau_i; W is [in, out]. See docs/KERNEL_ABI.md.")


def build(model: torch.nn.Module, plan: Plan | None = None, dtype: torch.dtype = torch.float32) -> onnx.ModelProto:
    """The decoder-step graph of `model`: dense when plan is None, else each planned linear a SparseLinear node."""
    arch = describe(model)
    base = model.model
    names = {m: n for n, m in model.named_modules()}
    planned = dict(plan.layers) if plan is not None else {}
    g = Graph()
    counts = {"sparse_linear": 0, "dense_linear": 0}
    f32 = TensorProto.FLOAT
    onnx_dtype = ONNX_TYPES[dtype]

    def scalar(v: float, t: torch.dtype = dtype) -> str:
        return g.const(v, t)

    def norm(x: str, module: torch.nn.Module) -> str:
        """RMSNorm as Hugging Face computes it: statistics in float32; Llama scales after, Gemma before casting."""
        eps = getattr(module, "variance_epsilon", None) or module.eps
        xf = x if dtype == torch.float32 else g.op("Cast", x, to=f32)
        var = g.op("ReduceMean", g.op("Mul", xf, xf), g.const([-1]), keepdims=1)
        y = g.op("Mul", xf, g.op("Reciprocal", g.op("Sqrt", g.op("Add", var, scalar(float(eps), torch.float32)))))
        if arch.gemma_norm:
            w = g.init(f"{names[module]}.scale", 1.0 + module.weight.detach().float())
            y = g.op("Mul", y, w)
            return y if dtype == torch.float32 else g.op("Cast", y, to=onnx_dtype)
        y = y if dtype == torch.float32 else g.op("Cast", y, to=onnx_dtype)
        return g.op("Mul", g.init(f"{names[module]}.weight", module.weight.detach().to(dtype)), y)

    def linear(x: str, module: torch.nn.Module) -> str:
        name = names[module]
        lin = get_linear(model, name)
        w = g.init(f"{name}.weight_t", lin.weight.detach().t().to(dtype))  # [in, out], as the kernel reads it
        if name in planned:
            lp = planned.pop(name)
            t = g.init(f"{name}.tau", tau(lp.threshold, column_norms(lin.weight), lp.alpha))
            y = g.op(OP_TYPE, x, w, t, domain=DOMAIN, name=name, splits=[lin.out_features], **PLUGIN_ATTRS,
                     doc=f"sparsity {lp.sparsity}, alpha {lp.alpha}, threshold {lp.threshold!r}")
            counts["sparse_linear"] += 1
        else:
            y = g.op("MatMul", x, w, name=name)
            counts["dense_linear"] += 1
        if lin.bias is not None:  # a standard Add, so the custom op keeps one fixed signature (KERNEL_ABI.md)
            y = g.op("Add", y, g.init(f"{name}.bias", lin.bias.detach().to(dtype)))
        return y

    def activation(x: str) -> str:
        if arch.act == "silu":
            return g.op("Mul", x, g.op("Sigmoid", x))
        if arch.act == "gelu":
            erf = g.op("Erf", g.op("Mul", x, scalar(1 / math.sqrt(2))))
            return g.op("Mul", g.op("Mul", x, scalar(0.5)), g.op("Add", erf, scalar(1.0)))
        inner = g.op("Add", x, g.op("Mul", g.op("Mul", g.op("Mul", x, x), x), scalar(0.044715)))
        t = g.op("Tanh", g.op("Mul", inner, scalar(math.sqrt(2 / math.pi))))
        return g.op("Mul", g.op("Mul", x, scalar(0.5)), g.op("Add", t, scalar(1.0)))

    # Positions: queries sit at past .. past+seq-1 of the cache, keys at 0 .. past+seq-1.
    past0 = "past_key_values.0.key"
    past_len = g.op("Squeeze", g.op("Shape", past0, start=2, end=3))
    total = g.op("Add", past_len, g.op("Squeeze", g.op("Shape", "input_ids", start=1, end=2)))
    q_pos = g.op("Unsqueeze", g.op("Range", past_len, total, g.const(1)), g.const([1]))  # [s, 1]
    k_pos = g.op("Unsqueeze", g.op("Range", g.const(0), total, g.const(1)), g.const([0]))  # [1, T]
    padding = g.op("Unsqueeze", g.op("Cast", "attention_mask", to=TensorProto.BOOL), g.const([1, 2, 3]))
    masks = {None: g.op("And", g.op("GreaterOrEqual", q_pos, k_pos), padding)}  # [b, 1, 1, s, T]
    for w in sorted({w for w in arch.windows if w}):
        near = g.op("Less", g.op("Sub", q_pos, k_pos), g.const(w))  # key within the window: q - k < w
        masks[w] = g.op("And", masks[None], near)

    # RoPE tables from position_ids, in float32 as Hugging Face computes them, then cast to the model dtype.
    pos = g.op("Unsqueeze", g.op("Cast", "position_ids", to=f32), g.const([-1]))
    rope = {}
    for key, (inv_freq, scale) in arch.rope_tables.items():
        freqs = g.op("Mul", pos, g.init(f"rope.{key}.inv_freq", inv_freq))
        emb = g.op("Concat", freqs, freqs, axis=-1)
        cs = []
        for fn in ("Cos", "Sin"):
            v = g.op(fn, emb)
            v = v if scale == 1.0 else g.op("Mul", v, scalar(scale, torch.float32))
            v = v if dtype == torch.float32 else g.op("Cast", v, to=onnx_dtype)
            cs.append(g.op("Unsqueeze", v, g.const([1])))  # [b, 1, s, D]
        rope[key] = cs

    half = arch.head_dim // 2

    def rotate(x: str, key: str) -> str:
        cos, sin = rope[key]
        x1 = g.op("Slice", x, g.const([0]), g.const([half]), g.const([-1]))
        x2 = g.op("Slice", x, g.const([half]), g.const([arch.head_dim]), g.const([-1]))
        rot = g.op("Concat", g.op("Neg", x2), x1, axis=-1)
        return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rot, sin))

    h = g.op("Gather", g.init("embed_tokens.weight", base.embed_tokens.weight.detach().to(dtype)), "input_ids")
    if arch.embed_scale is not None:
        h = g.op("Mul", h, g.init("embed_scale", torch.tensor(arch.embed_scale, dtype=dtype)))
    rep = arch.heads // arch.kv_heads
    for i, layer in enumerate(base.layers):
        attn, mlp = layer.self_attn, layer.mlp
        x = norm(h, layer.input_layernorm)

        def heads(y: str, n: int) -> str:
            return g.op("Transpose", g.op("Reshape", y, g.const([0, 0, n, arch.head_dim])), perm=[0, 2, 1, 3])

        q = heads(linear(x, attn.q_proj), arch.heads)  # [b, H, s, D]
        k = heads(linear(x, attn.k_proj), arch.kv_heads)
        v = heads(linear(x, attn.v_proj), arch.kv_heads)
        if arch.qk_norm:
            q, k = norm(q, attn.q_norm), norm(k, attn.k_norm)
        q, k = rotate(q, arch.rope[i]), rotate(k, arch.rope[i])
        k = g.op("Concat", f"past_key_values.{i}.key", k, axis=2, out=f"present.{i}.key")
        v = g.op("Concat", f"past_key_values.{i}.value", v, axis=2, out=f"present.{i}.value")
        # Grouped-query attention without copying the cache: queries [b, KV, rep, s, D] against keys [b, KV, 1, T, D].
        q5 = g.op("Reshape", q, g.const([0, arch.kv_heads, rep, -1, arch.head_dim]))
        k5, v5 = g.op("Unsqueeze", k, g.const([2])), g.op("Unsqueeze", v, g.const([2]))
        scores = g.op("Mul", g.op("MatMul", q5, g.op("Transpose", k5, perm=[0, 1, 2, 4, 3])), scalar(arch.scaling))
        if arch.attn_softcap:
            cap = scalar(float(arch.attn_softcap))
            scores = g.op("Mul", g.op("Tanh", g.op("Div", scores, cap)), cap)
        scores = scores if dtype == torch.float32 else g.op("Cast", scores, to=f32)
        scores = g.op("Where", masks[arch.windows[i]], scores, scalar(torch.finfo(torch.float32).min, torch.float32))
        probs = g.op("Softmax", scores, axis=-1)
        probs = probs if dtype == torch.float32 else g.op("Cast", probs, to=onnx_dtype)
        o = g.op("Reshape", g.op("MatMul", probs, v5), g.const([0, arch.heads, -1, arch.head_dim]))
        o = g.op("Reshape", g.op("Transpose", o, perm=[0, 2, 1, 3]), g.const([0, 0, arch.heads * arch.head_dim]))
        o = linear(o, attn.o_proj)
        if arch.sandwich:
            o = norm(o, layer.post_attention_layernorm)
        h = g.op("Add", h, o)
        x = norm(h, layer.pre_feedforward_layernorm if arch.sandwich else layer.post_attention_layernorm)
        y = linear(g.op("Mul", activation(linear(x, mlp.gate_proj)), linear(x, mlp.up_proj)), mlp.down_proj)
        if arch.sandwich:
            y = norm(y, layer.post_feedforward_layernorm)
        h = g.op("Add", h, y)

    h = norm(h, base.norm)
    head = model.lm_head
    if head.weight.data_ptr() == base.embed_tokens.weight.data_ptr():  # tied: transpose the embedding in-graph
        w = g.op("Transpose", "embed_tokens.weight", perm=[1, 0])
    else:
        w = g.init("lm_head.weight_t", head.weight.detach().t().to(dtype))
    logits = g.op("MatMul", h, w, name="lm_head")
    if head.bias is not None:
        logits = g.op("Add", logits, g.init("lm_head.bias", head.bias.detach().to(dtype)))
    if arch.final_softcap:
        cap = scalar(float(arch.final_softcap))
        logits = g.op("Mul", g.op("Tanh", g.op("Div", logits, cap)), cap)
    g.op("Cast", logits, to=f32, out="logits")
    if planned:
        raise WisparseError(f"plan layer {next(iter(planned))} is not one of the decoder's linears")

    kv = [arch.kv_heads, None, arch.head_dim]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", "sequence", arch.vocab])]
    for i in range(arch.layers):
        for kind in ("key", "value"):
            shape_past = ["batch", kv[0], "past_sequence", kv[2]]
            shape_present = ["batch", kv[0], "total_sequence", kv[2]]
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", onnx_dtype, shape_past))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", onnx_dtype, shape_present))
    graph = helper.make_graph(g.nodes, "sparse" if plan is not None else "dense", inputs, outputs, g.inits)
    opsets = [helper.make_opsetid("", OPSET)]
    functions = []
    if plan is not None:
        opsets.append(helper.make_opsetid(DOMAIN, OP_VERSION))
        functions.append(sparse_linear_function())
    proto = helper.make_model(graph, opset_imports=opsets, functions=functions, ir_version=IR_VERSION,
                              producer_name="wisparse-export")
    helper.set_model_props(proto, {"wisparse.role": graph.name, "wisparse.counts": json.dumps(counts)})
    return proto


def counts_of(proto: onnx.ModelProto) -> dict:
    return json.loads({p.key: p.value for p in proto.metadata_props}["wisparse.counts"])


def save(proto: onnx.ModelProto, path: Path, external: bool | None = None) -> None:
    """Write one model, weights in `<name>.data` beside it when large (or when asked), then run onnx.checker."""
    size = sum(len(t.raw_data) for t in proto.graph.initializer)
    external = size > EXTERNAL_DATA_BYTES if external is None else external
    if external:
        onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{path.name}.data", size_threshold=1024)
    else:
        onnx.save_model(proto, path)
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:  # a bug of ours, not the user's: keep the traceback
        raise RuntimeError(f"exported {path.name} fails onnx.checker: {str(e).splitlines()[0]}") from e


def is_ours(out: Path) -> bool:
    try:
        return json.loads((out / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def export(loaded: Loaded, plan: Plan, out: str | os.PathLike, dtype: str = "float32",
           external_data: bool | None = None) -> dict:
    """Write OUT/dense.onnx, OUT/sparse.onnx, OUT/tokenizer/ and OUT/manifest.json; all or nothing.

    An existing OUT is replaced only when a previous export wrote it.
    """
    if dtype not in DTYPES:
        raise WisparseError(f"unsupported dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    out = Path(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or is_ours(out))):
        raise WisparseError(f"{out} exists and was not written by wisparse export; choose another folder")
    model = loaded.model
    plan.check_model(model)
    if next(model.parameters()).dtype != torch.float32:
        raise WisparseError("export reads the model in float32 (thresholds are defined on float32 weights); "
                            "load it with dtype float32")
    arch = describe(model)
    torch_dtype = DTYPES[dtype]
    with torch.no_grad(), atomic_dir(out) as tmp:
        counts = {}
        for role, p in (("dense", None), ("sparse", plan)):
            proto = build(model, p, torch_dtype)
            helper.set_model_props(proto, {**{q.key: q.value for q in proto.metadata_props},
                                           "wisparse.plan": plan.digest(), "wisparse.format": f"{FORMAT}/{VERSION}"})
            counts[role] = counts_of(proto)
            save(proto, tmp / f"{role}.onnx", external_data)
            del proto
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp / "tokenizer")
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "plan": {"digest": plan.digest(), "method": plan.method, "target_sparsity": plan.target_sparsity,
                     "budget": round(plan.budget, 6), "calibration": plan.calibration,
                     "layers": {n: {"sparsity": lp.sparsity, "threshold": lp.threshold, "alpha": lp.alpha}
                                for n, lp in plan.layers.items()}},
            "model": {"source": loaded.source, "architecture": loaded.architecture, "model_type": arch.model_type,
                      "fingerprint": fingerprint(model)},
            "opset": OPSET,
            "ir_version": IR_VERSION,
            "dtype": dtype,
            "files": {"dense": "dense.onnx", "sparse": "sparse.onnx",
                      "tokenizer": "tokenizer" if loaded.tokenizer is not None else None},
            "graph": {"layers": arch.layers, "kv_heads": arch.kv_heads, "head_dim": arch.head_dim,
                      "vocab": arch.vocab, "sliding_windows": sorted({w for w in arch.windows if w}),
                      "inputs": ["input_ids", "attention_mask", "position_ids", "past_key_values.{i}.key",
                                 "past_key_values.{i}.value"],
                      "outputs": ["logits", "present.{i}.key", "present.{i}.value"]},
            "custom_op": {"domain": DOMAIN, "op_type": OP_TYPE, "version": OP_VERSION, **PLUGIN_ATTRS,
                          "weight_layout": "[in, out]"},
            "counts": {"sparse_linear_nodes": counts["sparse"]["sparse_linear"],
                       "dense_linear_nodes_in_sparse": counts["sparse"]["dense_linear"],
                       "dense_linear_nodes_in_dense": counts["dense"]["dense_linear"]},
        }
        write_json(tmp / MANIFEST, manifest)
    return manifest


def read_manifest(out: str | os.PathLike) -> dict:
    """The manifest of an export folder; anything else is refused in one line."""
    out = Path(out)
    if not out.exists():
        raise WisparseError(f"export folder not found: {out}")
    if not out.is_dir():
        raise WisparseError(f"{out} is a file; pass the folder written by wisparse export")
    path = out / MANIFEST
    if not path.is_file():
        raise WisparseError(f"{out} has no {MANIFEST}: not a folder written by wisparse export")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise WisparseError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise WisparseError(f"{path} is not a wisparse export manifest")
    if manifest.get("version", 0) > VERSION:
        raise WisparseError(f"{path} has version {manifest.get('version')}, newer than this tool supports")
    return manifest
