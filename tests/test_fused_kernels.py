"""Issue 15's fused decode kernels: the producer (RMSNorm or SiLU(gate) * up, mask, kept-channel list) and the
Stream-K GEMV over that list. CPU: PTX builds, launch specs, the PyTorch references against the masked matmul.
GPU (run on an H200 by a later session): kernels against float64 with poisoned outputs, Stream-K scratch reuse."""

from __future__ import annotations

import re

import pytest
import torch
from _plans import gpu, nvrtc
from test_kernels import Q_FORMATS, _assert_close, _module_cache, _ref64, fake_ptx  # noqa: F401 (fixtures)

from wisparse_export import kernels, quant
from wisparse_export.errors import WisparseError

# ------------------------------------------------------------------ CPU: builds and launch specs

LIST_VARIANTS = [  # (dtype, weights, rows, tile, vec, bias): every axis at least once
    ("bf16", None, 1, 128, 8, False), ("f16", None, 2, 64, 8, True), ("bf16", None, 4, 128, 8, True),
    ("bf16", None, 2, 32, 1, False), ("bf16", "fp8_e4m3", 1, 256, 16, False), ("f16", "fp8_e4m3", 4, 256, 16, True),
    ("bf16", "int8", 2, 128, 8, True), ("f16", "int8", 4, 16, 1, False),
]


@nvrtc
@pytest.mark.parametrize("kind", list(kernels.PRODUCERS))
@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("rows", kernels.LIST_ROWS)
def test_producer_compiles_to_ptx(kind, dtype, rows):
    for cluster in (1, 8):
        spec = kernels.producer_spec(dtype, 14336, rows, kind=kind, projections=3, cluster=cluster)
        assert f".entry {spec.name}(" in spec.ptx and spec.grid == (cluster, 1, 1)
        assert spec.ptx.count(".param .u64") == (7 if kind == "rmsnorm" else 5)  # inputs, then outputs
        assert spec.ptx.count(".param .u32") == 5  # n_rows, in, ld, P, eps_bits
        assert (".explicitcluster" in spec.ptx) == (cluster > 1)


@nvrtc
@pytest.mark.parametrize("dtype,weights,rows,tile,vec,bias", LIST_VARIANTS)
def test_list_gemv_compiles_to_ptx(dtype, weights, rows, tile, vec, bias):
    spec = kernels.list_spec(dtype, 4096, [4096], rows, bias=bias, tile=tile, vec=vec, weights=weights)
    assert f".entry {spec.name}(" in spec.ptx and spec.ptx.count(".param .u32") == 6
    # idx, vals, count, w, [scale,] [bias,] y, ws, sem
    assert spec.ptx.count(".param .u64") == 7 + (weights is not None) + bias
    assert ("cvt.rn.f16x2.e4m3x2" in spec.ptx) == (weights == "fp8_e4m3")
    assert "atom.global.add" in spec.ptx and "membar.gl" in spec.ptx  # the fix-up's arrival and its fences
    assert ".explicitcluster" not in spec.ptx


@nvrtc
@pytest.mark.parametrize("dtype,weights,rows,tile,vec,bias", LIST_VARIANTS)
def test_cluster_split_list_gemv_compiles_to_ptx(dtype, weights, rows, tile, vec, bias):
    """The cluster split keeps the list GEMV's parameters (ws and sem unused) and has no fix-up: no atomics, no
    fences; its clusters reduce in distributed shared memory."""
    for cluster in (1, 8):
        spec = kernels.list_spec(dtype, 4096, [4096], rows, bias=bias, tile=tile, vec=vec, weights=weights,
                                 split="cluster", cluster=cluster)
        assert f".entry {spec.name}(" in spec.ptx and spec.name.endswith(f"_c{cluster}")
        assert spec.ptx.count(".param .u32") == 6 and spec.ptx.count(".param .u64") == 7 + (weights is not None) + bias
        assert "atom.global" not in spec.ptx and "membar.gl" not in spec.ptx
        assert (".explicitcluster" in spec.ptx) == (cluster > 1) == ("st.shared::cluster" in spec.ptx)


@nvrtc
def test_ablation_builds_compile_and_their_defaults_are_todays_ptx():
    """Every ablation macro compiles; set to its default it changes nothing (the PTX of the shipped builds is the
    one without the macro), and each non-default value changes the code it should."""
    base = {"WSP_NAME": "k", "WSP_LIST": 1, "WSP_R": 1, "WSP_TN": 128, "WSP_V": 8}
    ptx = {k: kernels.compile_ptx(kernels.SOURCE, {**base, **d}) for k, d in {
        "plain": {}, "defaults": {"WSP_SPLIT": 0, "WSP_KL": 1024, "WSP_FIXUP": 0}, "kl": {"WSP_KL": 4096},
        "fixup1": {"WSP_FIXUP": 1}, "fixup2": {"WSP_FIXUP": 2}}.items()}
    assert ptx["plain"] == ptx["defaults"] and ptx["kl"] != ptx["plain"]
    assert "st.global.cg" in ptx["plain"] and "st.global.cg" not in ptx["fixup1"] and "atom.global" in ptx["fixup1"]
    assert "atom.global" not in ptx["fixup2"] and "membar.gl" not in ptx["fixup2"]
    for e in (1, 2):
        prod = {"WSP_NAME": "k", "WSP_PRODUCER": e, "WSP_R": 1, "WSP_C": 4}
        plain = kernels.compile_ptx(kernels.SOURCE, prod)
        assert plain == kernels.compile_ptx(kernels.SOURCE, {**prod, "WSP_PMODE": 0})
        for mode in (1, 2):
            assert kernels.compile_ptx(kernels.SOURCE, {**prod, "WSP_PMODE": mode}) != plain


@nvrtc
@pytest.mark.slow
def test_every_fused_variant_compiles():
    for dtype in ("bf16", "f16"):
        for rows in kernels.LIST_ROWS:
            for kind in kernels.PRODUCERS:
                for cluster in kernels.CLUSTERS:
                    spec = kernels.producer_spec(dtype, 64, rows, kind=kind, cluster=cluster)
                    assert f".entry {spec.name}(" in spec.ptx
            for weights in (None, *Q_FORMATS):
                for vec in (16, 8, 1) if weights else (8, 1):
                    for tile in kernels.geometry._tiles(kernels.as_weight_format(weights), vec, rows):
                        for bias in (False, True):
                            spec = kernels.list_spec(dtype, 64, [64], rows, bias=bias, tile=tile, vec=vec,
                                                     weights=weights)
                            assert f".entry {spec.name}(" in spec.ptx
                            for cluster in kernels.CLUSTERS:
                                spec = kernels.list_spec(dtype, 64, [64], rows, bias=bias, tile=tile, vec=vec,
                                                         weights=weights, split="cluster", cluster=cluster)
                                assert f".entry {spec.name}(" in spec.ptx


@nvrtc
def test_fused_cubins_have_no_spills():
    """Within the register budget of the blocks per multiprocessor each asks for (list GEMV: 2 up to 2 rows, 1 for
    4 rows, as its persistent grid assumes; producer: 1)."""
    builds = [({"WSP_PRODUCER": e, "WSP_R": r, "WSP_C": 8}, 1) for e in (1, 2) for r in kernels.LIST_ROWS]
    builds += [({"WSP_LIST": 1, "WSP_R": r, "WSP_TN": 128, "WSP_V": 8, "WSP_BIAS": 1}, 1 if r > 2 else 2)
               for r in kernels.LIST_ROWS]
    builds += [({"WSP_LIST": 1, "WSP_R": r, "WSP_TN": 256, "WSP_V": 16, "WSP_BIAS": 1, "WSP_WQ": wq},
                1 if r > 2 else 2) for r in kernels.LIST_ROWS for wq in (1, 2)]
    # The cluster split asks for today's kernel's blocks per multiprocessor (WSP_MINB by rows, cluster, weights).
    builds += [({"WSP_LIST": 1, "WSP_SPLIT": 1, "WSP_C": c, "WSP_R": r, "WSP_TN": tn, "WSP_V": v, "WSP_BIAS": 1,
                 **({"WSP_WQ": wq} if wq else {})}, 1 if r > 2 else 2 if c <= 2 or (wq and r == 2) else 3)
               for c in kernels.CLUSTERS for r in kernels.LIST_ROWS
               for tn, v, wq in ((128, 8, 0), (256, 16, 1), (128, 16, 2))]
    builds += [({"WSP_LIST": 1, "WSP_R": r, "WSP_TN": 128, "WSP_V": 8, **d}, 1 if r > 2 else 2)
               for r in (1, 2) for d in ({"WSP_KL": 4096 // r}, {"WSP_FIXUP": 1}, {"WSP_FIXUP": 2})]
    for defines, blocks in builds:
        _, log = kernels.compile_ptx(kernels.SOURCE, {"WSP_NAME": "k", **defines}, 90, cubin=True,
                                     extra=["--ptxas-options=-v"])
        assert "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in log, (defines, log)
        regs = int(re.search(r"Used (\d+) registers", log).group(1))
        assert regs <= min(255, 65536 // (kernels.THREADS * blocks)), (defines, log)


@pytest.mark.usefixtures("fake_ptx")
def test_fused_launch_specs():
    p = kernels.producer_spec("bf16", 4096, 1, projections=3, eps=1e-6)
    assert p.name == "wsp_rmsnorm_bf16_r1_c4" and p.grid == (4, 1, 1) and "('WSP_PRODUCER', 1)" in p.ptx
    assert p.args[:4] == (1, 4096, 4096, 3) and torch.tensor(p.args[4], dtype=torch.int32).view(torch.float32) \
        == torch.tensor(1e-6, dtype=torch.float32)
    s = kernels.producer_spec("f16", 14336, 3, kind="silu_mul")
    assert s.name == "wsp_silu_mul_f16_r4_c8" and s.args == (3, 14336, 28672, 1, 0) and s.rows_per_block == 4
    assert kernels.producer_spec("bf16", 4096, 1, arch=80).cluster == 1
    g = kernels.list_spec("bf16", 4096, [4096, 1024, 1024], 2, sms=132)
    assert g.name == "wsp_list_bf16_r2_n128_v8" and g.grid == (264, 1, 1) and "('WSP_LIST', 1)" in g.ptx
    assert g.args == (2, 4096, 6144, 4096, 1024, 1024) and g.semaphores == 48
    assert g.workspace == (264 + 48) * 2 * 128  # one slot per (block, tile) segment: b + t < blocks + tiles
    q = kernels.list_spec("bf16", 14336, [4096], 4, weights="int8", sms=132)
    assert q.name == "wsp_list_bf16_int8_r4_n256_v16" and q.grid == (132, 1, 1) and "('WSP_WQ', 2)" in q.ptx
    assert q.workspace == (132 + 16) * 4 * 256 and q.weights == "int8"
    assert "WSP_SPLIT" not in g.ptx + q.ptx  # the shipped Stream-K build: no new define, the same PTX


@pytest.mark.usefixtures("fake_ptx")
@pytest.mark.parametrize("in_f,splits,weights", [(4096, [14336, 14336], None), (14336, [4096], None),
                                                 (4096, [14336, 14336], "fp8_e4m3"), (14336, [4096], "int8"),
                                                 (4096, [4096, 1024, 1024], None), (40, [200], None)])
def test_cluster_split_specs_take_todays_tiling(in_f, splits, weights):
    """split="cluster": today's kernel's tile and cluster for the shape (launch_spec, batch 1), C blocks per column
    tile, no scratch; tuning and ablation knobs named in the kernel name; Stream-K's grid overridable."""
    spec = kernels.list_spec("bf16", in_f, splits, 1, weights=weights, split="cluster", sms=132)
    today = kernels.launch_spec("bf16", in_f, splits, 1, weights=weights, sms=132)
    assert (spec.tile, spec.cluster) == (today.tile, today.cluster) and spec.grid == today.grid
    assert spec.workspace == spec.semaphores == 0 and "('WSP_SPLIT', 1)" in spec.ptx
    assert f"('WSP_C', {spec.cluster})" in spec.ptx and spec.name.endswith(f"_c{spec.cluster}")
    kl = kernels.list_spec("bf16", in_f, splits, 1, weights=weights, split="cluster", tune={"WSP_KL": 1024})
    assert kl.name == spec.name + "_kl1024" and "('WSP_KL', 1024)" in kl.ptx
    sk = kernels.list_spec("bf16", in_f, splits, 1, weights=weights, blocks=132, tune={"WSP_FIXUP": 2})
    assert sk.grid == (132, 1, 1) and sk.name.endswith("_fixup2") and sk.workspace == (132 + sk.semaphores) * sk.tile
    p = kernels.producer_spec("bf16", in_f, 1, tune={"WSP_PMODE": 1})
    assert p.name.endswith("_pmode1") and "('WSP_PMODE', 1)" in p.ptx


@pytest.mark.parametrize("fn,kwargs,msg", [
    ("producer_spec", dict(dtype="bf16", in_features=64, n_rows=5), "1 to 4 rows"),
    ("producer_spec", dict(dtype="bf16", in_features=64, n_rows=3, rows_per_block=2), "1 to 4 rows"),
    ("producer_spec", dict(dtype="bf16", in_features=64, kind="gelu"), "producer kind"),
    ("producer_spec", dict(dtype="bf16", in_features=64, projections=4), "unsupported producer shape"),
    ("producer_spec", dict(dtype="bf16", in_features=64, kind="silu_mul", ld=64), "unsupported producer shape"),
    ("producer_spec", dict(dtype="bf16", in_features=64, cluster=2, arch=80), "sm_90"),
    ("producer_spec", dict(dtype="float32", in_features=64), "bfloat16 or float16"),
    ("list_spec", dict(dtype="bf16", in_features=64, splits=[64], n_rows=8), "1 to 4 rows"),
    ("list_spec", dict(dtype="bf16", in_features=64, splits=[64], tile=256), "tile 256"),
    ("list_spec", dict(dtype="bf16", in_features=64, splits=[64], weights="fp8_e4m3", arch=80), "sm_89"),
    ("list_spec", dict(dtype="bf16", in_features=64, splits=[12], vec=8), "multiples of 8"),
    ("list_spec", dict(dtype="bf16", in_features=64, splits=[64], split="rows"), "split is one of"),
    ("list_spec", dict(dtype="bf16", in_features=64, splits=[64], cluster=2), "takes no clusters"),
    ("list_spec", dict(dtype="bf16", in_features=64, splits=[64], split="cluster", cluster=3), "clusters of 3"),
    ("list_spec", dict(dtype="bf16", in_features=64, splits=[64], split="cluster", cluster=2, arch=80), "sm_90"),
    ("list_spec", dict(dtype="bf16", in_features=64, splits=[64], split="cluster", tune={"WSP_FIXUP": 1}),
     "has none"),
    ("list_spec", dict(dtype="bf16", in_features=64, splits=[64], tune={"WSP_PMODE": 1}), "tuning macros"),
    ("list_spec", dict(dtype="bf16", in_features=64, splits=[64], blocks=0), "at least one block"),
    ("producer_spec", dict(dtype="bf16", in_features=64, tune={"WSP_KL": 64}), "tuning macros"),
])
@pytest.mark.usefixtures("fake_ptx")
def test_fused_launch_specs_refuse(fn, kwargs, msg):
    with pytest.raises(WisparseError, match=msg):
        getattr(kernels, fn)(**kwargs)


def _stream_k_segments(counts, widths, tile, blocks):
    """The list GEMV's Stream-K split with the kernel's integer formulas (WSP_LIST in sparse_gemv.cu): its
    segments (block, tile, k_lo, k_hi, tile's first position, tile's entries), working blocks, total entries."""
    nt = [-(-w // tile) for w in widths]
    cnt = [c if w else 0 for c, w in zip(counts, widths, strict=True)]
    spans = [n * c for n, c in zip(nt, cnt, strict=True)]
    work = sum(spans)
    g = min(blocks, work)
    segs = []
    for b in range(g):
        s, s_end = b * work // g, (b + 1) * work // g
        while s < s_end:
            sb = tb = 0
            for q in range(len(widths)):
                if s < sb + spans[q]:
                    t = tb + (s - sb) // cnt[q]
                    start, n = sb + (t - tb) * cnt[q], cnt[q]
                    break
                sb, tb = sb + spans[q], tb + nt[q]
            k_hi = min(s_end, start + n) - start
            segs.append((b, t, s - start, k_hi, start, n))
            s = start + k_hi
    return segs, g, work


@pytest.mark.usefixtures("fake_ptx")
@pytest.mark.parametrize("seed", range(40))
def test_stream_k_split_covers_each_entry_once_within_the_workspace(seed):
    """Every kept entry of every tile in exactly one segment; a tile's contributors are exactly the blocks
    owner(first entry) .. owner(last entry) the kernel's fix-up counts; blocks' shares differ by at most one entry;
    the fix-up slots (block + tile) are distinct and inside the workspace list_spec sizes."""
    g = torch.Generator().manual_seed(seed)
    widths = [int(w) * 8 for w in torch.randint(1, 600, (1 + seed % 3,), generator=g)]
    k = int(torch.randint(1, 20000, (1,), generator=g))
    counts = [int(c) for c in torch.randint(0, k + 1, (len(widths),), generator=g)]
    if seed % 5 == 0:
        counts = [min(c, seed % 3) for c in counts]  # tiny work: fewer entries than blocks, or none at all
    spec = kernels.list_spec("bf16", k, widths, 1 + seed % 4, sms=int(torch.randint(1, 140, (1,), generator=g)))
    segs, used, work = _stream_k_segments(counts, widths, spec.tile, spec.grid[0])
    shares = [sum(hi - lo for b, _, lo, hi, _, _ in segs if b == blk) for blk in range(used)]
    assert sum(shares) == work and (not shares or max(shares) - min(shares) <= 1)
    slots = set()
    for t in {seg[1] for seg in segs}:
        mine = sorted((lo, hi, b) for b, tt, lo, hi, _, _ in segs if tt == t)
        start, n = next((st, n) for _, tt, _, _, st, n in segs if tt == t)
        assert [m[0] for m in mine] == [0] + [m[1] for m in mine[:-1]] and mine[-1][1] == n  # a partition
        first, last = ((start + 1) * used - 1) // work, ((start + n) * used - 1) // work
        assert [m[2] for m in mine] == list(range(first, last + 1))
        if first < last:
            slots |= {b + t for _, _, b in mine}
    split = [(b, t) for b, t, lo, hi, _, n in segs if hi - lo < n]
    assert len(slots) == len(split)  # no two split segments share a slot
    assert all(s < spec.workspace // (spec.rows_per_block * spec.tile) for s in slots)


# ------------------------------------------------------------------ CPU: the references


def test_rms_norm_and_silu_mul_are_llamas():
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    torch.manual_seed(0)
    norm = LlamaRMSNorm(48, eps=1e-6).to(torch.bfloat16)
    norm.weight.data = torch.randn(48, dtype=torch.bfloat16)
    x = torch.randn(3, 48, dtype=torch.bfloat16) * 3
    assert torch.equal(kernels.rms_norm(x, norm.weight, 1e-6), norm(x))
    cfg = type("Cfg", (), {"hidden_size": 16, "intermediate_size": 24, "hidden_act": "silu", "mlp_bias": False})
    mlp = LlamaMLP(cfg).to(torch.bfloat16)
    h = torch.cat([mlp.gate_proj(x[:, :16]), mlp.up_proj(x[:, :16])], -1)
    assert torch.equal(kernels.silu_mul(h), mlp.act_fn(mlp.gate_proj(x[:, :16])) * mlp.up_proj(x[:, :16]))


@pytest.mark.parametrize("seed", range(6))
def test_list_reference_is_the_masked_matmul(seed):
    """compact + list_reference = the op's reference, for random shapes, rows 1 to 4 (padded to the list's
    rows), fused splits, and the all-dropped (count 0) and all-kept extremes."""
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(8, 300, (1,), generator=g))
    splits = [int(s) for s in torch.randint(1, 40, (1 + seed % 3,), generator=g)]
    rows = 1 + seed % 4
    per_block = next(r for r in kernels.LIST_ROWS if r >= rows)
    x = torch.randn(rows, k, generator=g, dtype=torch.float64)
    wt = torch.randn(k, sum(splits), generator=g, dtype=torch.float64)
    bias = torch.randn(sum(splits), generator=g, dtype=torch.float64) if seed % 2 else None
    tau = torch.rand(len(splits), k, generator=g).float() * 1.5
    tau[0, ::7] = float("inf")
    extremes = {0: float("inf"), 1: -float("inf")}  # seed 0: nothing kept; seed 1: everything kept
    if seed in extremes:
        tau.fill_(extremes[seed])
    idx, vals, count = kernels.compact(x, tau, per_block)
    union = (x.float().abs() > tau[:, None, :]).any(1)  # [P, in]; the keep test is float32
    assert count.tolist() == union.sum(1).tolist()
    for p in range(len(splits)):
        n = int(count[p])
        assert torch.equal(idx[p, :n].long(), union[p].nonzero().flatten())  # channel order
        assert not vals[p, :n, rows:].any()  # rows past n_rows carry zeros
    y = kernels.list_reference(idx, vals, count, wt, bias, splits, rows)
    ref = kernels.reference(x, wt, tau, bias, splits)
    assert y.shape == (rows, sum(splits)) and torch.allclose(y, ref, rtol=1e-12, atol=1e-12)
    if seed == 0:
        assert not count.any() and torch.equal(y, ref)  # count 0: y is the bias (or 0)


# ------------------------------------------------------------------ GPU (unverified here: no GPU on this machine)

SHAPES = [(4096, [4096, 1024, 1024]), (4096, [14336, 14336]), (14336, [4096]), (1000, [520, 264]), (40, [200]),
          (17, [40])]
SPARSITY = (0.0, 0.5, 0.75, 0.9)


def _stream():
    return torch.cuda.current_stream().cuda_stream


def _tau(v, projections, sparsity, g):
    q = torch.quantile(v.float().abs().flatten(), sparsity).item() if sparsity else 0.0
    tau = q * (0.8 + 0.4 * torch.rand(projections, v.shape[-1], device="cuda", generator=g))
    if sparsity:
        tau[:, ::97] = float("inf")
    return tau


def _run_producer(spec, inputs, tau, rows_per_block, xn_shape=None):
    """Launch with poisoned outputs: (xn or None, idx, vals, count)."""
    p_n, k = tau.shape
    dtype = inputs[0].dtype
    xn = torch.full(xn_shape, float("nan"), dtype=dtype, device="cuda") if xn_shape else None
    idx = torch.full((p_n, k), -1, dtype=torch.int32, device="cuda")
    vals = torch.full((p_n, k, rows_per_block), float("nan"), dtype=dtype, device="cuda")
    count = torch.full((p_n,), -1, dtype=torch.int32, device="cuda")
    outs = ([xn] if xn is not None else []) + [idx, vals, count]
    kernels.launch(spec, [t.data_ptr() for t in (*inputs, tau)], outs[0].data_ptr(), _stream(),
                   trailing=[t.data_ptr() for t in outs[1:]])
    torch.cuda.synchronize()
    return xn, idx, vals, count


def _assert_same_list(got, want, what):
    """Kernel list = reference list over the first count entries of each projection (the rest is unspecified)."""
    idx, vals, count = got
    assert torch.equal(count, want[2]), f"{what}: counts {count.tolist()} != {want[2].tolist()}"
    for p, n in enumerate(count.tolist()):
        assert torch.equal(idx[p, :n], want[0][p, :n]), f"{what}: kept channels differ (projection {p})"
        assert torch.equal(vals[p, :n], want[1][p, :n]), f"{what}: kept values differ (projection {p})"


def _assert_rms_norm(xn, x, gamma, what):
    """Llama's RMSNorm rounds twice (the normalized x, then gamma times it): within two unit roundoffs of float64, and
    within two units in the last place of PyTorch's computation with the same roundings: rsqrtf and the kernel's
    order of summation may move the normalized value by one ulp, which gamma's product carries (plus its own rounding;
    one ulp failed on the H200 at 14336 channels, 2026-12-02)."""
    assert torch.isfinite(xn).all(), f"{what}: unwritten (poisoned) or non-finite outputs"
    bits = 7 if xn.dtype == torch.bfloat16 else 10
    exact = kernels.rms_norm(x.double(), gamma.double(), 1e-5)
    err = (xn.double() - exact).abs()
    assert (err <= 1.01 * 2.0**-bits * exact.abs() + 1e-6).all(), f"{what}: max error {err.max().item():.3g} vs float64"
    same = kernels.rms_norm(x, gamma, 1e-5).double()
    ulp = torch.exp2(torch.floor(torch.log2(same.abs().clamp_min(2.0**-14))) - bits)
    assert ((xn.double() - same).abs() <= 2 * ulp).all(), f"{what}: more than two ulps from PyTorch's roundings"


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
def test_producers_match_reference(dtype, rows):
    """RMSNorm output against float64; every list exactly what `compact` makes of the kernel's own values (RMSNorm)
    or of PyTorch's SiLU(gate) * up (both fp32 expf and division: expected bit-identical)."""
    g = torch.Generator(device="cuda").manual_seed(rows)
    per_block = next(r for r in kernels.LIST_ROWS if r >= rows)
    for k in (4096, 14336, 1000, 17):
        for sparsity in SPARSITY:
            x = (torch.randn(rows, k, device="cuda", generator=g) * 2).to(dtype)
            gamma = torch.randn(k, device="cuda", generator=g).to(dtype)
            tau = _tau(kernels.rms_norm(x, gamma, 1e-5), 3, sparsity, g)
            for cluster in (1, 8):
                spec = kernels.producer_spec(dtype, k, rows, projections=3, cluster=cluster)
                xn, *lst = _run_producer(spec, [x, gamma], tau, per_block, (rows, k))
                _assert_rms_norm(xn, x, gamma, f"{spec.name} in={k}")
                _assert_same_list(lst, kernels.compact(xn, tau, per_block), f"{spec.name} in={k} s={sparsity}")
            h = torch.randn(rows, 2 * k, device="cuda", generator=g).to(dtype)
            tau1 = _tau(kernels.silu_mul(h), 1, sparsity, g)
            spec = kernels.producer_spec(dtype, k, rows, kind="silu_mul")
            _, *lst = _run_producer(spec, [h], tau1, per_block)
            _assert_same_list(lst, kernels.compact(kernels.silu_mul(h), tau1, per_block), f"{spec.name} in={k}")


def _list_case(k, splits, rows, sparsity, dtype, fmt, bias, seed):
    """A list from `compact` (GPU), the weight (1-byte with scales for fmt), and the float64 reference."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(rows, k, device="cuda", generator=g).to(dtype)
    wt = (torch.randn(k, sum(splits), device="cuda", generator=g) / k**0.5).to(dtype)
    tau = _tau(x, len(splits), sparsity, g)
    b = torch.randn(sum(splits), device="cuda", generator=g).to(dtype) if bias else None
    scale = None
    if fmt is not None:
        q, scale = quant.quantize(wt.t(), quant.FORMATS[fmt])
        wt = q.t().contiguous()
    w64 = wt.float().double() * scale.double() if fmt is not None else wt
    per_block = next(r for r in kernels.LIST_ROWS if r >= rows)
    return kernels.compact(x, tau, per_block), wt, scale, b, _ref64(x, w64, tau, b, splits)


def _list_case_or_empty(k, splits, rows, sparsity, dtype, fmt, bias, seed):
    """`_list_case`; sparsity 1.0: every count 0, and the reference is the bias alone (or zeros)."""
    lst, wt, scale, b, ref = _list_case(k, splits, rows, min(sparsity, 0.9), dtype, fmt, bias, seed)
    if sparsity == 1.0:
        lst[2].zero_()
        ref = (b.double() if bias else torch.zeros(sum(splits), device="cuda").double()).expand(rows, -1)
    return lst, wt, scale, b, ref


def _run_list(spec, lst, wt, scale, b, rows, ws=None, sem=None):
    ws = torch.full((spec.workspace,), float("nan"), device="cuda") if ws is None else ws  # any contents
    sem = torch.zeros(spec.semaphores, dtype=torch.int32, device="cuda") if sem is None else sem
    y = torch.full((rows, sum(spec.args[3:])), float("nan"), dtype=lst[1].dtype, device="cuda")
    ptrs = [t.data_ptr() for t in (*lst, wt, scale, b) if t is not None]
    kernels.launch(spec, ptrs, y.data_ptr(), _stream(), trailing=[ws.data_ptr(), sem.data_ptr()])
    return y, ws, sem


def _check_list(spec, lst, wt, scale, b, rows, ref, what):
    """One launch on poisoned y against the float64 reference; the fix-up's counters back at zero."""
    y, _, sem = _run_list(spec, lst, wt, scale, b, rows)
    torch.cuda.synchronize()
    _assert_close(y, ref, lst[1].dtype, f"{spec.name} {what}")
    assert not sem.any(), f"{spec.name}: the fix-up left its counters set"


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fmt", [None, *Q_FORMATS])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
def test_list_gemv_matches_float64(fmt, dtype, rows):
    seed = 0
    for k, splits in SHAPES:
        for sparsity in (*SPARSITY, 1.0):  # 1.0: tau = +inf everywhere below, count 0
            for bias in (False, True):
                seed += 1
                lst, wt, scale, b, ref = _list_case_or_empty(k, splits, rows, sparsity, dtype, fmt, bias, seed)
                spec = kernels.list_spec(dtype, k, splits, rows, bias=bias, sms=kernels.sm_count(wt.device),
                                         weights=fmt)
                _check_list(spec, lst, wt, scale, b, rows, ref, f"{k}->{splits} s={sparsity}")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fmt,dtype", [(None, torch.bfloat16), (None, torch.float16), ("fp8_e4m3", torch.bfloat16),
                                       ("int8", torch.bfloat16)])
@pytest.mark.parametrize("rows", [1, 2, 3])  # 3: R = 4 with a row past n_rows
def test_list_gemv_variants_match_float64(fmt, dtype, rows):
    """The cluster split (today's tiling, and clusters of 1 and 8) and Stream-K with long list chunks (WSP_KL)
    against float64 with poisoned outputs, every shape and sparsity, count 0 included (float16 x with 1-byte
    weights only changes x's conversion, which the bf16/f16 16-bit cases cover)."""
    per_block = next(r for r in kernels.LIST_ROWS if r >= rows)
    variants = [dict(split="cluster"), dict(split="cluster", cluster=1), dict(split="cluster", cluster=8)]
    if per_block <= 2:
        variants.append(dict(tune={"WSP_KL": 4096 // per_block}))
    seed = 100
    for k, splits in SHAPES:
        for sparsity in (0.0, 0.5, 0.9, 1.0):
            seed += 1
            bias = seed % 2 == 0
            lst, wt, scale, b, ref = _list_case_or_empty(k, splits, rows, sparsity, dtype, fmt, bias, seed)
            for kw in variants:
                spec = kernels.list_spec(dtype, k, splits, rows, bias=bias, sms=kernels.sm_count(wt.device),
                                         weights=fmt, **kw)
                _check_list(spec, lst, wt, scale, b, rows, ref, f"{k}->{splits} s={sparsity}")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("kind", list(kernels.PRODUCERS))
def test_producer_ablations_write_what_they_say(kind):
    """WSP_PMODE=1 writes compact's counts (and RMSNorm's xn); WSP_PMODE=2 writes only v (xn, or SiLU(gate) * up in
    vals[0, :, r]): the parts the ablation times are the shipped producer's."""
    g = torch.Generator(device="cuda").manual_seed(7)
    for rows, k, cluster in ((1, 4096, 4), (3, 14336, 8), (2, 1000, 1)):
        per_block = next(r for r in kernels.LIST_ROWS if r >= rows)
        if kind == "rmsnorm":
            inputs = [(torch.randn(rows, k, device="cuda", generator=g) * 2).to(torch.bfloat16),
                      torch.randn(k, device="cuda", generator=g).to(torch.bfloat16)]
            v, xn_shape = kernels.rms_norm(*inputs, 1e-5), (rows, k)
        else:
            inputs = [torch.randn(rows, 2 * k, device="cuda", generator=g).to(torch.bfloat16)]
            v, xn_shape = kernels.silu_mul(inputs[0]), None
        tau = _tau(v, 1 if kind == "silu_mul" else 3, 0.5, g)
        shipped = kernels.producer_spec("bf16", k, rows, kind=kind, projections=tau.shape[0], cluster=cluster)
        xn, *want = _run_producer(shipped, inputs, tau, per_block, xn_shape)
        for mode in (1, 2):
            spec = kernels.producer_spec("bf16", k, rows, kind=kind, projections=tau.shape[0], cluster=cluster,
                                         tune={"WSP_PMODE": mode})
            got_xn, _, vals, count = _run_producer(spec, inputs, tau, per_block, xn_shape)
            if kind == "rmsnorm":
                assert torch.equal(got_xn, xn), f"{spec.name}: xn differs from the shipped producer's"
            if mode == 1:
                assert torch.equal(count, want[2]), f"{spec.name}: counts differ"
            elif kind == "silu_mul":
                assert torch.equal(vals[0, :, :rows].t(), v), f"{spec.name}: v differs from silu_mul"


@pytest.mark.gpu
@gpu
def test_producer_then_list_gemv_is_the_unfused_block():
    """RMSNorm producer -> list GEMV (q/k/v) and gate/up GEMV -> SiLU producer -> list GEMV (down), both splits,
    against the unfused path (rms_norm, then the masked matmul), in float64 over the same rounded inputs."""
    g = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(1, 4096, device="cuda", generator=g).to(torch.bfloat16)
    gamma = torch.randn(4096, device="cuda", generator=g).to(torch.bfloat16)
    wt = (torch.randn(4096, 6144, device="cuda", generator=g) / 64).to(torch.bfloat16)
    tau = _tau(kernels.rms_norm(x, gamma, 1e-5), 3, 0.5, g)
    xn, *lst = _run_producer(kernels.producer_spec("bf16", 4096, 1, projections=3), [x, gamma], tau, 1, (1, 4096))
    h = torch.randn(1, 2 * 14336, device="cuda", generator=g).to(torch.bfloat16)
    wd = (torch.randn(14336, 4096, device="cuda", generator=g) / 120).to(torch.bfloat16)
    tau_d = _tau(kernels.silu_mul(h), 1, 0.75, g)
    _, *lst_d = _run_producer(kernels.producer_spec("bf16", 14336, 1, kind="silu_mul"), [h], tau_d, 1)
    for split in kernels.SPLITS:
        spec = kernels.list_spec("bf16", 4096, [4096, 1024, 1024], 1, sms=kernels.sm_count(x.device), split=split)
        y, _, _ = _run_list(spec, lst, wt, None, None, 1)
        torch.cuda.synchronize()
        _assert_close(y, _ref64(xn, wt, tau, None, [4096, 1024, 1024]), torch.bfloat16, f"q/k/v {split}")
        spec = kernels.list_spec("bf16", 14336, [4096], 1, sms=kernels.sm_count(x.device), split=split)
        y, _, _ = _run_list(spec, lst_d, wd, None, None, 1)
        torch.cuda.synchronize()
        _assert_close(y, _ref64(kernels.silu_mul(h), wd, tau_d, None, [4096]), torch.bfloat16, f"down {split}")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fmt", [None, "fp8_e4m3"])
def test_stream_k_scratch_is_reused_across_calls_and_graph_replays(fmt):
    """One ws/sem pair serves consecutive launches with different counts (sem back at 0 after each), and a CUDA
    graph of two launches replayed twice on fresh lists."""
    dtype, k, splits = torch.bfloat16, 14336, [4096]
    spec = kernels.list_spec(dtype, k, splits, 2, bias=True, sms=kernels.sm_count(torch.device("cuda")), weights=fmt)
    ws, sem = torch.empty(spec.workspace, device="cuda"), torch.zeros(spec.semaphores, dtype=torch.int32,
                                                                      device="cuda")
    cases = [_list_case(k, splits, 2, s, dtype, fmt, True, 10 + i) for i, s in enumerate((0.5, 0.9, 0.0, 0.75))]
    wt, scale, b = cases[0][1:4]
    for lst, _, _, _, _ in cases[:2]:  # two calls in a row, same weight: reference from this list
        y, _, _ = _run_list(spec, lst, wt, scale, b, 2, ws, sem)
        torch.cuda.synchronize()
        w64 = wt.float().double() * scale.double() if fmt else wt
        ref = kernels.list_reference(lst[0], lst[1].double(), lst[2], w64, b.double(), splits, 2)
        _assert_close(y, ref, dtype, "consecutive call")
        assert not sem.any()
    static = [t.clone() for t in cases[2][0]]
    _run_list(spec, static, wt, scale, b, 2, ws, sem)  # loaded before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y1, _, _ = _run_list(spec, static, wt, scale, b, 2, ws, sem)
        y2, _, _ = _run_list(spec, static, wt, scale, b, 2, ws, sem)
    for lst, _, _, _, _ in cases[2:]:
        for s, t in zip(static, lst, strict=True):
            s.copy_(t)
        y1.fill_(float("nan"))
        y2.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        w64 = wt.float().double() * scale.double() if fmt else wt
        ref = kernels.list_reference(lst[0], lst[1].double(), lst[2], w64, b.double(), splits, 2)
        _assert_close(y1, ref, dtype, "graph replay, first launch")
        _assert_close(y2, ref, dtype, "graph replay, second launch")
        assert not sem.any()
