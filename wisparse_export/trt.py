"""TensorRT: build `OUT/dense.engine` and `OUT/sparse.engine` from an export, and check them.

TensorRT is imported lazily: where it is absent, `wisparse build` and `wisparse check --engine` stop with one
line (exit 2). TensorRT 10 with STRONGLY_TYPED, and TensorRT 11 always, take precision from the ONNX types, so
engines are built from float16 / bfloat16 exports. The sparse graph's SparseLinear nodes carry
`plugin_namespace` and `plugin_version`, so once `plugins/trt_plugin.py` has registered `wisparse::SparseLinear`
the ONNX parser maps each node to the plugin instead of importing the function body. A quantized export's nodes
(op version 2) reach the parser as `SparseLinearQ` in the kernel's input order (`onnx_graph.tensorrt_view`, in
memory: sparse.onnx is not rewritten), which maps them to `wisparse::SparseLinearQ`.

Each engine has two optimization profiles: 0 = decode (one new token after up to max_context - 1 cached ones),
1 = prefill (up to max_prefill tokens, empty cache). A timing cache in OUT/timing.cache speeds up rebuilds.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import torch
from tqdm.auto import tqdm

from .errors import WisparseError
from .evaluate import Metrics
from .files import write_atomic, write_json
from .manifest import MANIFEST, file_path, read_manifest, verify_graphs
from .onnx_graph import OP_TYPE, OP_TYPE_Q, op_types, tensorrt_view
from .ort import GraphSession, step_ms

DECODE, PREFILL = 0, 1
HEARTBEAT_S = 30.0  # a line this often while TensorRT builds (it says nothing for minutes on a large model)
# What build writes, as manifest.json's files records it (so a later export knows them as ours).
WRITES = {"dense_engine": "dense.engine", "sparse_engine": "sparse.engine", "timing_cache": "timing.cache",
          "engines": "engines.json"}


def require():
    """The tensorrt module, or one line saying it is missing."""
    try:
        import tensorrt
    except ImportError as e:
        raise WisparseError("TensorRT is not installed: `wisparse build` and `check --engine` need the tensorrt "
                            "Python package (pip install tensorrt) on a machine with an NVIDIA GPU") from e
    return tensorrt


_registered = False


def load_plugin() -> None:
    """Register wisparse::SparseLinear with TensorRT (the kernels' ahead-of-time PTX) before parsing or loading,
    under each op type a graph may hold (SparseLinear2, SparseLinearQ3, ...: onnx_graph.op_types); once per
    process, as tensorrt.plugin refuses a second definition."""
    global _registered
    if _registered:
        return
    try:
        from .plugins import trt_plugin

        trt_plugin.register(op_types(OP_TYPE), op_types(OP_TYPE_Q))
    except (ImportError, AttributeError) as e:
        raise WisparseError(f"cannot register the TensorRT plugin wisparse::SparseLinear: {e}") from e
    _registered = True


def profiles(manifest: dict, max_batch: int, max_prefill: int, max_context: int) -> list[dict]:
    """(min, opt, max) shapes per input for the decode and prefill profiles, in that order."""
    kv, d = manifest["graph"]["kv_heads"], manifest["graph"]["head_dim"]
    layers = manifest["graph"]["layers"]
    if not 1 <= max_prefill <= max_context:
        raise WisparseError(f"need 1 <= --max-prefill ({max_prefill}) <= --max-context ({max_context})")
    if max_batch < 1:
        raise WisparseError(f"--max-batch must be at least 1, got {max_batch}")
    b = (1, 1, max_batch)
    half = max(max_context // 2, 1)
    decode = {"input_ids": [(b[0], 1), (b[1], 1), (b[2], 1)],
              "position_ids": [(b[0], 1), (b[1], 1), (b[2], 1)],
              "attention_mask": [(b[0], 1), (b[1], half), (b[2], max_context)],
              "past": [(b[0], kv, 0, d), (b[1], kv, half - 1, d), (b[2], kv, max_context - 1, d)]}
    prefill = {"input_ids": [(b[0], 1), (b[1], max_prefill), (b[2], max_prefill)],
               "position_ids": [(b[0], 1), (b[1], max_prefill), (b[2], max_prefill)],
               "attention_mask": [(b[0], 1), (b[1], max_prefill), (b[2], max_prefill)],
               "past": [(b[0], kv, 0, d), (b[1], kv, 0, d), (b[2], kv, 0, d)]}
    out = []
    for p in (decode, prefill):
        shapes = {k: v for k, v in p.items() if k != "past"}
        for i in range(layers):
            for kind in ("key", "value"):
                shapes[f"past_key_values.{i}.{kind}"] = p["past"]
        out.append(shapes)
    return out


def network_flags(trt) -> int:
    """STRONGLY_TYPED where the flag still exists (TensorRT 10; 11 is strongly typed always), and prefer the
    plugin's ahead-of-time implementation when it has both."""
    flags = 0
    for name in ("STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS"):
        flag = getattr(trt.NetworkDefinitionCreationFlag, name, None)
        if flag is not None:
            flags |= 1 << int(flag)
    return flags


def record(out: Path, manifest: dict, roles: tuple[str, ...]) -> dict:
    """Name in manifest.json the files build is about to write, refusing to overwrite a file it does not name."""
    keys = [f"{r}_engine" for r in roles] + ["timing_cache", "engines"]
    for key in keys:
        path = out / WRITES[key]
        if os.path.lexists(path) and manifest["files"].get(key) != WRITES[key]:
            raise WisparseError(f"{path} exists and {MANIFEST} does not name it; move it before building")
    manifest["files"].update({key: WRITES[key] for key in keys})
    write_json(out / MANIFEST, manifest)
    return manifest


@contextmanager
def heartbeat(log: Callable[[str], None], what: str, every: float | None = None):
    """log(f"still {what} (N s)") every `every` seconds (default HEARTBEAT_S) until the block ends."""
    start, done = time.monotonic(), threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT_S if every is None else every):
            log(f"  still {what} ({time.monotonic() - start:.0f} s)")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def build(out: str | os.PathLike, workspace_gib: float = 4.0, max_batch: int = 1, max_prefill: int = 512,
          max_context: int = 2048, roles: tuple[str, ...] = ("dense", "sparse"),
          log: Callable[[str], None] | None = None) -> dict:
    """Build OUT/<role>.engine for each role; returns what was written (also saved as OUT/engines.json).
    log (None: silent) hears a line as each engine starts and ends, and a heartbeat while TensorRT works."""
    log = log or (lambda line: None)
    trt = require()
    out = Path(out)
    manifest = read_manifest(out)
    if manifest["dtype"] == "float32":
        raise WisparseError("TensorRT engines are built from float16 or bfloat16 exports (TensorRT is strongly "
                            "typed; the plugin runs float16/bfloat16): re-export with --dtype float16")
    paths = verify_graphs(out, manifest, roles)
    shapes = profiles(manifest, max_batch, max_prefill, max_context)
    load_plugin()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise WisparseError("TensorRT could not create a builder (no usable NVIDIA GPU?)")
    manifest = record(out, manifest, roles)
    cache_path = out / WRITES["timing_cache"]
    built = {}
    for i, role in enumerate(roles, 1):
        name, start = WRITES[f"{role}_engine"], time.monotonic()
        log(f"building {name} ({i}/{len(roles)}) from {paths[role].name} with TensorRT {trt.__version__}")
        with heartbeat(log, f"building {name}"):
            engine, cache = build_engine(trt, builder, logger, paths[role], shapes, workspace_gib, cache_path)
        path = write_atomic(out / name, lambda p, e=engine: p.write_bytes(bytes(e)))
        write_atomic(cache_path, lambda p, c=cache: p.write_bytes(bytes(c.serialize())))
        built[role] = {"file": path.name, "bytes": path.stat().st_size}
        log(f"built {name} in {time.monotonic() - start:.1f} s ({path.stat().st_size / 2**20:.1f} MiB)")
    info = {"tensorrt": trt.__version__, "plan": manifest["plan"]["digest"], "dtype": manifest["dtype"],
            "engines": built, "profiles": {"decode": DECODE, "prefill": PREFILL},
            "limits": {"max_batch": max_batch, "max_prefill": max_prefill, "max_context": max_context},
            "workspace_gib": workspace_gib, "timing_cache": cache_path.name}
    write_json(out / WRITES["engines"], info)
    return info


def build_engine(trt, builder, logger, graph: Path, shapes: list[dict], workspace_gib: float, cache_path: Path):
    """One serialized engine with the decode and prefill profiles, and the timing cache it updated."""
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    view = tensorrt_view(onnx.load(str(graph), load_external_data=False))  # weights stay in their file
    if not parser.parse(view.SerializeToString(), str(graph)):
        first = parser.get_error(0).desc() if parser.num_errors else "unknown error"
        raise WisparseError(f"TensorRT cannot parse {graph}: {first}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    for p in shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in p.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise WisparseError(f"TensorRT failed to build the {graph.stem} engine (its log above says why)")
    return engine, cache


def engine_paths(out: Path, manifest: dict) -> dict[str, Path]:
    """The engines `wisparse build` recorded in the manifest, confined to OUT."""
    paths = {}
    for role in ("dense", "sparse"):
        path = file_path(out, manifest, f"{role}_engine")
        if path is None or not path.is_file():
            raise WisparseError(f"{out} has no {role} engine: run `wisparse build {out}` first")
        paths[role] = path
    return paths


def compare(reference, runners: list, feeds: list[dict], ids: list[torch.Tensor], progress: bool = True) -> dict:
    """Run every runner and the reference on the same feeds through Polygraphy's Comparator (streaming, so only
    one batch of logits is alive at a time); Metrics of each runner against the reference."""
    from polygraphy.comparator import Comparator

    metrics = {r.name: Metrics() for r in runners}
    results = Comparator.run([reference, *runners], data_loader=feeds, streaming=True)
    for batch_ids, result in tqdm(zip(ids, results, strict=False), total=len(ids), desc="check", unit="batch",
                                  disable=not progress):
        ref = torch.as_tensor(np.asarray(result[reference.name][0]["logits"]))
        for r in runners:
            metrics[r.name].update(ref, torch.as_tensor(np.asarray(result[r.name][0]["logits"])), batch_ids)
    return {name: m.result() for name, m in metrics.items()}


def runner_step(runner, layout: GraphSession):
    """step(ids, past) for a Polygraphy runner, laid out like GraphSession.step (the same input names and cache)."""

    def step(ids: np.ndarray, past: dict | None):
        outs = runner.infer(layout.feeds(ids, past))
        present = {n.replace("present.", "past_key_values."): np.asarray(v) for n, v in outs.items()
                   if n.startswith("present.")}
        return np.asarray(outs["logits"]), present

    return step


def check_engines(out: Path, manifest: dict, paths: dict[str, Path], seqs: torch.Tensor,
                  progress: bool = True) -> dict:
    """Dense and sparse engines against dense.onnx in ONNX Runtime on the evaluation sequences, plus the decode
    step latency of each engine. Same report fields as the ONNX check."""
    trt = require()
    import onnxruntime
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    if manifest["dtype"] == "bfloat16":
        raise WisparseError("check --engine compares against ONNX Runtime, which Python cannot feed bfloat16 "
                            "tensors; export and build float16 for the check")
    engines = engine_paths(out, manifest)
    load_plugin()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                 if p in onnxruntime.get_available_providers()]
    layout = GraphSession(paths["dense"], providers)  # names, cache shapes and dtype shared by all four runners
    reference = OnnxrtRunner(SessionFromOnnx(str(paths["dense"]), providers=providers), name="dense.onnx")
    prefill = {role: TrtRunner(EngineFromBytes(path.read_bytes()), name=f"{role}.engine",
                               optimization_profile=PREFILL) for role, path in engines.items()}
    ids = [seqs[i: i + 1] for i in range(len(seqs))]  # batch 1: the engines' default --max-batch
    feeds = [layout.feeds(x.numpy()) for x in ids]
    results = compare(reference, list(prefill.values()), feeds, ids, progress)
    dense, sparse = results["dense.engine"], results["sparse.engine"]
    prompt = seqs[:1, : min(64, seqs.shape[1])].numpy()
    latency = {}
    for role, path in engines.items():
        with TrtRunner(EngineFromBytes(path.read_bytes()), optimization_profile=DECODE) as runner:
            latency[role] = step_ms(runner_step(runner, layout), prompt, token_by_token=True)
    return {
        "dense": {"ppl": dense["ppl"], "step_ms": latency["dense"], "reference_ppl": dense["dense_ppl"],
                  "kl": dense["kl"], "top1_agreement": dense["top1_agreement"]},
        "sparse": {"ppl": sparse["ppl"], "kl": sparse["kl"], "top1_agreement": sparse["top1_agreement"],
                   "step_ms": latency["sparse"]},
        "reference": {"ppl": dense["dense_ppl"], "graph": "dense.onnx", "providers": providers},
        "tokens": sparse["tokens"],
        "runtime": f"TensorRT {trt.__version__} engines vs dense.onnx in onnxruntime {onnxruntime.__version__}",
    }
