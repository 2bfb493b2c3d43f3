"""manifest.json of an export folder: what it must hold, which files it names, and whether the graphs beside it
are the ones it describes.

The manifest is input like a plan: every field a later stage reads is validated here, one line per problem; every
file it names is a plain name inside the folder (no `..`, no absolute path, no symbolic link); and `verify_graph`
reads each planned linear's weight back from an ONNX file at `identity.positions` (external data read by seeking,
not loaded) so that a graph exported from other weights of the same shapes is refused, not measured.
Optional (manifests written before them still load): "provenance", the versions of the packages that wrote the
export, "model.revision" (models.revision), and "weights", the plan's weight format when the graphs hold quantized
weights (then each planned weight is read back as its quantized values times their scale: the dequantized weight),
and "lm_head", the plan's lm_head format when the graphs hold a quantized lm_head (DequantizeLinear -> MatMul).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto

from .errors import WisparseError
from .files import read_json
from .identity import SAMPLES, check_samples, positions
from .models import DTYPES
from .onnx_graph import ONNX_TYPES, members_of, quantized_names, weight_name
from .plan import PROVENANCE as PLAN_PROVENANCE
from .plan import check_provenance
from .quant import WeightFormat, from_record

FORMAT = "wisparse-export"
VERSION = 3  # 2: model.weights, model.max_positions, external data and engines; 3: the runtimes' files at the root
MANIFEST = "manifest.json"
GRAPHS = ("dense", "sparse")
# files: role -> plain file name in the folder. dense/sparse always; the rest null when absent. `weights`: the
# external data file both graphs share; dense_data / sparse_data: one per graph (exports before the shared file).
# config, generation_config and genai_config are what Optimum and onnxruntime-genai read beside the graphs.
FILE_KEYS = ("dense", "sparse", "weights", "dense_data", "sparse_data", "config", "generation_config", "genai_config",
             "dense_engine", "sparse_engine", "timing_cache", "engines")
# files: role -> list of plain file names, or null: the tokenizer's files (which ones depends on the tokenizer).
LIST_KEYS = ("tokenizer",)
PROVENANCE = (*PLAN_PROVENANCE, "onnx", "onnxruntime")  # packages whose versions a manifest records
NUMPY = {TensorProto.FLOAT: np.dtype("<f4"), TensorProto.FLOAT16: np.dtype("<f2"),
         TensorProto.BFLOAT16: np.dtype("<u2"), TensorProto.INT8: np.dtype("i1"),
         TensorProto.FLOAT8E4M3FN: np.dtype("u1")}


def _int(d: dict, key: str, where: str) -> None:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise WisparseError(f"invalid manifest: {where}.{key} must be a positive integer, got {v!r}")


def _obj(d: dict, key: str, where: str = "manifest") -> dict:
    v = d.get(key)
    if not isinstance(v, dict):
        raise WisparseError(f"invalid manifest: {where}.{key} must be an object")
    return v


def _str(d: dict, key: str, where: str) -> None:
    if not isinstance(d.get(key), str):
        raise WisparseError(f"invalid manifest: {where}.{key} must be a string")


def _plain_name(v, where: str) -> None:
    """A file directly inside the export folder: no separators, no `.`/`..`, not hidden, not the manifest."""
    if not isinstance(v, str) or not v or "/" in v or "\\" in v or v.startswith(".") or v == MANIFEST \
            or Path(v).is_absolute():
        raise WisparseError(f"invalid manifest: {where} must be a plain file name inside the export folder, got {v!r}")


def validate(m: dict) -> dict:
    """Check every field a later stage reads; the first problem is one line naming the field."""
    if m.get("format") != FORMAT:
        raise WisparseError(f"not a wisparse export manifest (expected \"format\": \"{FORMAT}\")")
    version = m.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise WisparseError(f"invalid manifest: version must be an integer, got {version!r}")
    if version > VERSION:
        raise WisparseError(f"manifest version {version} is newer than this tool supports ({VERSION}); "
                            "upgrade wisparse")
    if version < VERSION:
        raise WisparseError(f"manifest version {version} predates this tool's format ({VERSION}); re-run wisparse "
                            "export into a new folder")
    plan, model, files, graph = _obj(m, "plan"), _obj(m, "model"), _obj(m, "files"), _obj(m, "graph")
    _str(plan, "digest", "plan")
    layers = _obj(plan, "layers", "plan")
    _obj(plan, "calibration", "plan")
    for key in ("source", "fingerprint"):
        _str(model, key, "model")
    _int(model, "max_positions", "model")
    if model.get("revision") is not None:
        _str(model, "revision", "model")
    check_provenance(m.get("provenance"), "invalid manifest: ")
    if "weights" in m:
        from_record(m["weights"], "invalid manifest: ")
    if "lm_head" in m:
        from_record(m["lm_head"], "invalid manifest: ", "lm_head")
    weights = _obj(model, "weights", "model")
    if not layers or set(weights) != set(layers):
        raise WisparseError("invalid manifest: model.weights must hold a sample for every planned layer")
    for name, w in weights.items():
        if not (isinstance(w, list) and len(w) == SAMPLES and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in w)):
            raise WisparseError(f"invalid manifest: model.weights[{name!r}] must be {SAMPLES} finite numbers")
    if m.get("dtype") not in DTYPES:
        raise WisparseError(f"invalid manifest: dtype must be one of {', '.join(DTYPES)}, got {m.get('dtype')!r}")
    unknown = sorted(set(files) - set(FILE_KEYS) - set(LIST_KEYS))
    if unknown:
        raise WisparseError(f"invalid manifest: files.{unknown[0]} is not a file this tool writes")
    for key in FILE_KEYS:
        if key in GRAPHS or files.get(key) is not None:
            _plain_name(files.get(key), f"files.{key}")
    for key in LIST_KEYS:
        v = files.get(key)
        if v is not None and not (isinstance(v, list) and v):
            raise WisparseError(f"invalid manifest: files.{key} must be a non-empty list of file names or null")
        for i, name in enumerate(v or ()):
            _plain_name(name, f"files.{key}[{i}]")
    names = named(files)
    if len(set(names)) != len(names):
        raise WisparseError("invalid manifest: files names one file twice")
    for key in ("layers", "kv_heads", "head_dim", "vocab"):
        _int(graph, key, "graph")
    return m


def read_manifest(out: str | os.PathLike) -> dict:
    """The validated manifest of an export folder; anything else is refused in one line."""
    out = Path(out)
    if not out.exists():
        raise WisparseError(f"export folder not found: {out}")
    if not out.is_dir():
        raise WisparseError(f"{out} is a file; pass the folder written by wisparse export")
    path = out / MANIFEST
    if not path.is_file():
        raise WisparseError(f"{out} has no {MANIFEST}: not a folder written by wisparse export")
    try:
        return validate(read_json(path, "export manifest"))
    except WisparseError as e:
        raise WisparseError(f"{path}: {e}") from None


def named(files: dict) -> list[str]:
    """Every file name in a manifest's `files`, the tokenizer's list flattened."""
    return [n for v in files.values() if v is not None for n in (v if isinstance(v, list) else [v])]


def owned(manifest: dict) -> set[str]:
    """The entries of an export folder that wisparse wrote: the manifest and every file it names."""
    return {MANIFEST, *named(manifest["files"])}


def confined(out: Path, name: str) -> Path:
    """OUT/name, refused if it is a symbolic link (which could point anywhere)."""
    path = out / name
    if path.is_symlink() or (path.exists() and path.resolve().parent != out.resolve()):
        raise WisparseError(f"{path} is a symbolic link; an export folder holds its own files")
    return path


def file_path(out: Path, manifest: dict, key: str) -> Path | None:
    """OUT/<files[key]>, confined to OUT; None when the manifest names no such file."""
    name = manifest["files"].get(key)
    return None if name is None else confined(out, name)


def tokenizer_files(out: Path, manifest: dict) -> list[Path]:
    """The tokenizer's files at OUT's root, each present and confined to OUT; refused when there are none."""
    names = manifest["files"].get("tokenizer") or []
    if not names:
        raise WisparseError(f"{out} holds no tokenizer; re-run wisparse export with a model that has one")
    paths = [confined(out, n) for n in names]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise WisparseError(f"{missing} is missing; re-run wisparse export")
    return paths


def verify_graph(out: Path, manifest: dict, role: str) -> Path:
    """OUT's <role>.onnx, refused unless it is the graph the manifest describes: its role and plan, its element
    type, its external data file, and the values of every planned weight."""
    path = file_path(out, manifest, role)
    if not path.is_file():
        raise WisparseError(f"{path} is missing; re-run wisparse export")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf decode errors have no common type
        raise WisparseError(f"{path} is not a readable ONNX file: {str(e).splitlines()[0]}") from e
    props = {p.key: p.value for p in proto.metadata_props}
    digest = manifest["plan"]["digest"]
    if props.get("wisparse.role") != role or props.get("wisparse.plan") != digest:
        raise WisparseError(f"{path} does not belong to {out / MANIFEST} (not the {role} graph of plan {digest}); "
                            "re-run wisparse export")
    want = ONNX_TYPES[DTYPES[manifest["dtype"]]]
    past = next((i for i in proto.graph.input if i.name == "past_key_values.0.key"), None)
    if past is None or past.type.tensor_type.elem_type != want:
        raise WisparseError(f"{path}: its cache is not {manifest['dtype']}, the dtype {MANIFEST} names")
    inits = {t.name: t for t in proto.graph.initializer}
    fmt = from_record(manifest["weights"], "") if "weights" in manifest else None
    fused = fused_members(proto, path)
    actual = {}
    with ExternalData(out, manifest, role, path) as data:
        for name in manifest["model"]["weights"]:
            if fmt is not None:
                actual.update(quantized_sample(path, inits, name, fmt, data, fused.get(name)))
                continue
            t, cols = inits.get(weight_name(name)), None
            if t is None and name in fused:  # a member of a fused node: its columns of the group's weight
                (w_name, _), cols = fused[name]
                t = inits.get(w_name)
            if t is not None:
                if t.data_type != want or len(t.dims) != 2:
                    raise WisparseError(f"{path}: weight {name} is not a {manifest['dtype']} matrix, as {MANIFEST} "
                                        "says")
                actual[name] = sample(t, data, columns(path, t, name, cols))
    check_samples(manifest["model"]["weights"], actual, what=path.name)
    return path


def fused_members(proto: onnx.ModelProto, path: Path) -> dict[str, tuple[tuple[str, str], tuple[int, int]]]:
    """member -> ((weight, scale) initializer names, (first column, width)) for every node that computes several
    linears at once, its name joining theirs with "+" (onnx_graph.group_name): a SparseLinear node of any member
    count (SparseLinear2, SparseLinear3: onnx_graph.op_type), its `splits` their widths and as many as its op type
    says, or the dense graph's MatMul on the same weight, cut into them by the Split that reads it."""
    found = {}
    inits = {t.name: t for t in proto.graph.initializer}
    produced = {o: n for n in proto.graph.node for o in n.output}
    for n in proto.graph.node:
        if members_of(n):
            splits = next((list(a.ints) for a in n.attribute if a.name == "splits"), [])
            weights = (n.input[4], n.input[5]) if len(n.input) == 6 else (n.input[1], "") if len(n.input) == 3 \
                else None
            if max(len(splits), 1) != members_of(n):  # a SparseLinear node written before `splits` has none
                raise WisparseError(f"{path}: {n.op_type} node {n.name} has {len(splits)} splits; re-run wisparse "
                                    "export")
        elif n.domain == "" and n.op_type == "MatMul" and "+" in n.name:
            splits = split_sizes(proto, n.output[0], inits)
            weights = matmul_weights(n.input[1], produced)
        else:
            continue
        names = n.name.split("+")
        if len(names) == 1 and len(splits) < 2:
            continue
        if len(names) != len(splits) or weights is None:
            what = f"names {len(names)}" if weights else f"has {len(n.input)} inputs"
            raise WisparseError(f"{path}: {n.op_type} node {n.name} fuses {len(splits)} linears but {what}; re-run "
                                "wisparse export")
        for i, name in enumerate(names):
            found[name] = weights, (sum(splits[:i]), splits[i])
    return found


def matmul_weights(w: str, produced: dict[str, onnx.NodeProto]) -> tuple[str, str]:
    """(weight, scale) of a dense MatMul's weight input w: the DequantizeLinear's (behind its Cast) that makes w,
    else (w, "")."""
    src = produced.get(w)
    src = produced.get(src.input[0]) if src is not None and src.op_type == "Cast" else src
    return (src.input[0], src.input[1]) if src is not None and src.op_type == "DequantizeLinear" else (w, "")


def split_sizes(proto: onnx.ModelProto, y: str, inits: dict) -> list[int]:
    """The part widths of the Split reading y along its last axis (inline int64 sizes), [] where none does."""
    split = next((n for n in proto.graph.node if n.op_type == "Split" and n.domain == "" and n.input[0] == y), None)
    axis = next((a.i for a in split.attribute if a.name == "axis"), 0) if split is not None else 0
    sizes = inits.get(split.input[1]) if axis == -1 and len(split.input) == 2 else None
    if sizes is None or sizes.data_type != TensorProto.INT64 or sizes.data_location != TensorProto.DEFAULT:
        return []
    return [int(v) for v in onnx.numpy_helper.to_array(sizes).reshape(-1)]


def columns(path: Path, t: TensorProto, name: str, cols: tuple[int, int] | None) -> tuple[int, int]:
    """(first column, width) of linear `name` in weight t [in, out]: all of it, or a fused member's own columns,
    refused when they lie outside t."""
    first, width = cols or (0, t.dims[1])
    if first + width > t.dims[1]:
        raise WisparseError(f"{path}: the fused weight {t.name} has {t.dims[1]} columns, fewer than its node's "
                            f"splits give {name}; re-run wisparse export")
    return first, width


def quantized_sample(path: Path, inits: dict, name: str, fmt: WeightFormat, data: ExternalData,
                     fused: tuple[tuple[str, str], tuple[int, int]] | None = None) -> dict:
    """{name: dequantized values at identity.positions} of a quantized weight ([in, out] values in the storage
    dtype, float32 scale [out]; `fused`: a member's initializers and columns, from `fused_members`), or {} when
    the graph holds no such weight."""
    (q_name, scale_name), cols = (quantized_names(name), None) if fused is None else fused
    q, scale = inits.get(q_name), inits.get(scale_name)
    if q is None:
        return {}
    if q.data_type != ONNX_TYPES[fmt.storage] or len(q.dims) != 2 or scale is None \
            or scale.data_type != TensorProto.FLOAT or list(scale.dims) != [q.dims[1]]:
        raise WisparseError(f"{path}: weight {name} is not {fmt.name} with a float32 scale per output channel, as "
                            f"{MANIFEST} says")
    first, width = columns(path, q, name, cols)
    pos = positions((width, q.dims[0]))
    values = values_at(q, [c * q.dims[1] + first + r for r, c in pos], data)
    scales = values_at(scale, [first + r for r, _ in pos], data)
    return {name: [float(np.float32(v) * np.float32(s)) for v, s in zip(values, scales, strict=True)]}


def verify_graphs(out: Path, manifest: dict, roles: tuple[str, ...] = GRAPHS) -> dict[str, Path]:
    """role -> path of each graph, verified (`verify_graph`)."""
    return {role: verify_graph(out, manifest, role) for role in roles}


def sample(t: TensorProto, data: ExternalData, cols: tuple[int, int]) -> list[float]:
    """The values of a weight stored [in, out] at identity.positions of its [out, in] shape, (r, c) being
    W_t[c, first + r]: `cols` (first, width) are its columns of t, all of t unless t is a fused group's."""
    (n_in, n_out), (first, width) = t.dims, cols
    return values_at(t, [c * n_out + first + r for r, c in positions((width, n_in))], data)


def values_at(t: TensorProto, flat: list[int], data: ExternalData) -> list[float]:
    """The elements of a tensor at flat indices, as float32 numbers (external data read by seeking)."""
    dt = NUMPY[t.data_type]
    if t.data_location == TensorProto.EXTERNAL:
        raw = data.read(t, flat, dt.itemsize)
        vals = np.frombuffer(raw, dt)
    elif t.raw_data:
        vals = np.frombuffer(t.raw_data, dt)[flat]
    else:
        vals = onnx.numpy_helper.to_array(t).reshape(-1)[flat].astype(np.float32)
        return [float(v) for v in vals]
    if t.data_type == TensorProto.BFLOAT16:
        vals = (vals.astype(np.uint32) << 16).view(np.float32)
    elif t.data_type == TensorProto.FLOAT8E4M3FN:
        vals = torch.from_numpy(vals.copy()).view(torch.float8_e4m3fn).float().numpy()
    return [float(v) for v in vals.astype(np.float32)]


class ExternalData:
    """The external data files a graph may use (the shared `weights`, or its own `<role>_data`), each opened once;
    elements are read by seeking, never loaded whole."""

    def __init__(self, out: Path, manifest: dict, role: str, graph: Path):
        paths = (file_path(out, manifest, key) for key in ("weights", f"{role}_data"))
        self.paths = {p.name: p for p in paths if p is not None}
        self.graph, self.files = graph, {}

    def __enter__(self) -> ExternalData:
        return self

    def __exit__(self, *exc) -> None:
        for f in self.files.values():
            f.close()

    def open(self, t: TensorProto):
        """The open file holding t's bytes; refused unless the manifest names it."""
        info = {e.key: e.value for e in t.external_data}
        path = self.paths.get(info.get("location"))
        if path is None:
            raise WisparseError(f"{self.graph}: weight {t.name} lives in {info.get('location')!r}, a file "
                                f"{MANIFEST} does not name")
        if path.name not in self.files:
            if not path.is_file():
                raise WisparseError(f"{path} is missing; re-run wisparse export")
            self.files[path.name] = open(path, "rb")  # noqa: SIM115 - closed by __exit__
        return path, self.files[path.name]

    def read(self, t: TensorProto, flat: list[int], itemsize: int) -> bytes:
        info = {e.key: e.value for e in t.external_data}
        path, f = self.open(t)
        start, length = int(info.get("offset", 0)), int(info.get("length", 0))
        out = bytearray()
        for i in flat:
            if (i + 1) * itemsize > length:
                raise WisparseError(f"{path} is shorter than {self.graph.name} says")
            f.seek(start + i * itemsize)
            chunk = f.read(itemsize)
            if len(chunk) != itemsize:
                raise WisparseError(f"{path} is shorter than {self.graph.name} says")
            out += chunk
        return bytes(out)
