"""benchmarks/probe_access.py, probe_async.py, probe_grid.py, probe_mma.py, probe_pdl.py, probe_timing.py and
sass_loop.py on CPU: the tables they walk, the builds they ask for, the tensor-core prototype's PTX and its float64
reference, the loop sass_loop.py counts, the clocks probe_timing.py compares (the timings need a GPU); on a GPU, the
asynchronous-copy read against the register read of the same pieces."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch
from _plans import nvrtc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_floor  # noqa: E402
import bench_kernels  # noqa: E402
import probe_access as pa  # noqa: E402
import probe_async  # noqa: E402
import probe_grid as pg  # noqa: E402
import probe_mma as pm  # noqa: E402
import probe_pdl as pp  # noqa: E402
import probe_timing  # noqa: E402
import sass_loop  # noqa: E402

from wisparse_export import kernels, quant  # noqa: E402
from wisparse_export.kernels import driver  # noqa: E402


def test_even_rows_are_spread_over_the_channels():
    idx = pa.even_idx(16, [8, 4], "cpu")
    assert idx[0].tolist() == list(range(0, 16, 2)) + [0] * 8
    assert idx[1, :4].tolist() == [0, 4, 8, 12]


@pytest.mark.parametrize("c", [1, 2, 3, 8])
def test_both_splits_hand_out_every_kept_channel_once(c):
    """range: rank r takes the kept channels in its channel range (k_per rounded up to 32, as the kernel does);
    list: equal shares of the list, differing by at most one."""
    in_f, counts = 256, [100, 37]
    idx = torch.zeros(2, in_f, dtype=torch.int32)
    for p, n in enumerate(counts):
        idx[p, :n] = torch.randperm(in_f)[:n].sort().values.to(torch.int32)
    rng, lst = pa.starts_for(idx, counts, in_f, c, "range"), pa.starts_for(idx, counts, in_f, c, "list")
    k_per = (-(-in_f // c) + 31) // 32 * 32
    for p, n in enumerate(counts):
        for starts in (rng, lst):
            assert starts[p, 0] == 0 and starts[p, -1] == n and bool((starts[p, 1:] >= starts[p, :-1]).all())
        shares = (lst[p, 1:] - lst[p, :-1]).tolist()
        assert max(shares) - min(shares) <= 1
        for r in range(c):
            got = idx[p, rng[p, r]:rng[p, r + 1]].tolist()
            assert all(r * k_per <= k < (r + 1) * k_per for k in got)


def test_access_grid_is_in_the_sweep_order():
    """probe_access's sweep unpacks GRID's values (overrides merged in place) as layout, rows, split, C, seg, U,
    read; each read names a floor kernel."""
    assert list(pa.GRID) == ["layout", "rows", "split", "C", "seg", "U", "read"]
    assert set(pa.READS.values()) <= set(re.findall(r"void __launch_bounds__\(WSP_THREADS\) (wsp_floor_\w+)",
                                                    bench_floor.SOURCE.read_text()))


def test_access_grid_overrides_parse_and_refuse():
    """--grid KEY=V,V: the knob's own type, only values a sweep can use; anything else a one-line error."""
    assert pa.grid_item("C=8,264") == ("C", (8, 264)) and pa.grid_item("seg=4096") == ("seg", (4096,))
    assert pa.grid_item("split=range,list") == ("split", ("range", "list"))
    assert pa.grid_item("read=ld,bulk") == ("read", ("ld", "bulk"))
    for bad in ("C=5", "seg=96", "layout=diagonal", "foo=1", "U=", "C=eight", "read=tma"):
        with pytest.raises(argparse.ArgumentTypeError):
            pa.grid_item(bad)


def test_tiles_in_both_layouts():
    """row: a tile's first byte is its first column's; tiled: tile g of all projections starts at g * in * seg."""
    row = pa.tiles_for([512, 256], 16, 256, 2, "row")
    tiled = pa.tiles_for([512, 256], 16, 256, 2, "tiled")
    assert row.tolist() == [[0, 0], [0, 256], [0, 512], [0, 768], [1, 1024], [1, 1280]]
    assert tiled.tolist() == [[p, g * 16 * 256] for g, p in enumerate([0, 0, 0, 0, 1, 1])]


@nvrtc
@pytest.mark.parametrize("which", list(pg.SETS))
def test_every_probed_build_compiles(which):
    """Each set's variants are real builds of the chosen kernel's source, named after their macros; the fp8alu
    macro only reaches FP8 builds."""
    for name, tries in pg.SETS[which].items():
        in_f, splits = pg.SHAPES[name]
        for fmt in ("fp8_e4m3", "int8"):
            chosen = kernels.launch_spec(torch.bfloat16, in_f, splits, 1, weights=quant.FORMATS[fmt], arch=90)
            for t, c, tune in tries:
                t, c = (chosen.tile, chosen.cluster) if t is None else (t, c)
                tune = {k: v for k, v in tune.items() if k not in pg.ONLY or pg.ONLY[k] == fmt}
                spec = kernels.launch_spec(torch.bfloat16, in_f, splits, 1, tile=t, cluster=c, tune=tune,
                                           weights=quant.FORMATS[fmt], arch=90)
                assert spec.grid[0] == -(-sum(splits) // t) * c
                assert ("fp8alu" in spec.name) == (fmt == "fp8_e4m3" and "WSP_FP8ALU" in tune)
                assert ("i8f16" in spec.name) == (fmt == "int8" and "WSP_I8F16" in tune)
                assert ("i8mix" in spec.name) == (fmt == "int8" and "WSP_I8MIX" in tune)
                assert f".maxntid {tune.get('WSP_THREADS', 256)}" in spec.ptx.replace(", 1, 1", "")


@nvrtc
def test_fp8alu_builds_drop_the_conversions():
    """1: integer dequantization, no e4m3 conversion, and the 2^56 on each output; 3: no conversion at all; the
    default build keeps its conversions."""
    def body(tune):
        spec = kernels.launch_spec(torch.bfloat16, 4096, [14336], 1, tile=128, cluster=2, tune=tune,
                                   weights=quant.FORMATS["fp8_e4m3"], arch=90)
        return spec.ptx
    base, alu, none = body({}), body({"WSP_FP8ALU": 1}), body({"WSP_FP8ALU": 3})
    assert "cvt.rn.f16x2.e4m3x2" in base and "cvt.f32.f16" in base
    assert "cvt.rn.f16x2.e4m3x2" not in alu and "cvt.f32.f16" not in alu and "0f5B800000" in alu  # 2^56
    assert "cvt.rn.f16x2.e4m3x2" not in none and "cvt.f32.f16" not in none


@nvrtc
def test_i8f16_builds_go_through_f16_pairs():
    """INT8 through f16: two byte permutes and two f16x2 subtracts a word, four conversions, no float32 add of the
    2^23 trick; the default INT8 build has no conversion at all."""
    def body(tune):
        return kernels.launch_spec(torch.bfloat16, 14336, [4096], 1, tile=128, cluster=8, tune=tune,
                                   weights=quant.FORMATS["int8"], arch=90).ptx
    base, f16 = body({}), body({"WSP_I8F16": 1})
    assert "cvt.f32.f16" not in base and "sub.f16x2" not in base and "0fCB000080" in base
    assert "cvt.f32.f16" in f16 and f16.count("sub.f16x2") >= 8 and "0fCB000080" not in f16  # -(2^23 + 128)


@nvrtc
def test_i8mix_builds_convert_some_weights_on_the_conversion_pipe():
    """WSP_I8MIX=k: k weights of every 4 by a sign-extending extract and an int -> float conversion, the other 4 - k
    by today's byte permute and add; the default INT8 build converts none."""
    def body(tune):
        ptx = kernels.launch_spec(torch.bfloat16, 14336, [4096], 1, tile=128, cluster=8, tune=tune,
                                  weights=quant.FORMATS["int8"], arch=90).ptx
        return ptx.count("cvt.rn.f32.s32"), ptx.count("bfe.s32"), ptx.count("0fCB000080")  # -(2^23 + 128)
    conv0, bfe0, add0 = body({})
    assert conv0 == bfe0 == 0 and add0 > 0
    for k in (1, 2, 3):
        conv, bfe, add = body({"WSP_I8MIX": k})
        assert conv > 0 and conv == bfe and add > 0
        assert add * k == conv * (4 - k)  # k of every 4 weights converted, the rest added


@nvrtc
def test_mma_prototype_ptx():
    """7 pointers (list, x, starts, tiles, weight, scale, y) and 3 int32 (in, ldw, C); 8 MMAs, 16 byte permutes and
    32 e4m3 pair conversions a 16-entry step, one store (the partial sums); absent below sm_89."""
    spec = pm.mma_spec(224, 4096, 14336, 2, 90)
    entry = re.search(r"\.entry wsp_floor_mma\((.*?)\)", spec.ptx, re.S)
    assert entry and entry.group(1).count(".param .u64") == 7 and entry.group(1).count(".param .u32") == 3
    body = spec.ptx.split(".entry wsp_floor_mma")[1].split(".entry")[0]
    assert body.count("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32") == 8
    assert body.count("prmt.b32") == 16 and body.count("cvt.rn.f16x2.e4m3x2") == 32
    assert body.count("st.global") == 1 and spec.grid == (224, 1, 1) and spec.args == (4096, 14336, 2)
    assert ".entry wsp_floor_mma" not in pm.mma_spec(224, 4096, 14336, 2, 80).ptx


def test_mma_reference_is_the_dequantized_product():
    """float64 y = kept x times the kept rows of q * scale, projection by projection."""
    torch.manual_seed(0)
    in_f, splits, counts = 32, [16, 8], [5, 3]
    q, scale = quant.quantize(torch.randn(24, in_f), quant.FORMATS["fp8_e4m3"])
    wq = q.t().contiguous()
    idx = torch.zeros(2, in_f, dtype=torch.int32)
    vals = torch.zeros(2, in_f, dtype=torch.bfloat16)
    for p, n in enumerate(counts):
        idx[p, :n] = torch.randperm(in_f)[:n].sort().values.to(torch.int32)
        vals[p, :n] = torch.randn(n).to(torch.bfloat16)
    y = pm.reference(idx, vals, counts, splits, wq, scale)
    w = q.double() * scale.double()[:, None]  # [out, in]
    want = torch.cat([w[:16, idx[0, :5].long()] @ vals[0, :5].double(),
                      w[16:, idx[1, :3].long()] @ vals[1, :3].double()])
    assert torch.allclose(y, want, rtol=1e-12, atol=0)


@nvrtc
@pytest.mark.parametrize("weights", [None, "fp8_e4m3", "int8"])
def test_pdl_builds_wait_before_reading_x(weights):
    """Each WSP_PDL build keeps the chosen tiling, waits once before its first global load of x or tau and
    triggers its dependents where its mode says (1: after the weight stream, 2: before the wait, 3: never); the
    chosen build has neither instruction."""
    builds = pp.builds(4096, [14336], weights)
    chosen = builds["chosen"][0]
    assert "griddepcontrol" not in chosen.ptx and builds["chosen"][1] is False
    for m in pp.MODES:
        spec, pdl = builds[f"pdl{m}"]
        assert pdl and (spec.tile, spec.cluster, spec.grid) == (chosen.tile, chosen.cluster, chosen.grid)
        body = spec.ptx.split(".entry")[1]
        wait = body.index("griddepcontrol.wait")
        assert body.count("griddepcontrol.wait") == 1 and wait < body.index("ld.global")
        trig = body.find("griddepcontrol.launch_dependents")
        assert {1: trig > body.index("ld.global.nc.L1::no_allocate"), 2: 0 <= trig < wait, 3: trig < 0}[m]


def test_pdl_launch_config():
    """The launch that lets a WSP_PDL build start early: the spec's grid and block, one attribute set."""
    spec = kernels.LaunchSpec("k", "", (224, 2, 1), (256, 1, 1), 0, (), 1, 128, 16, 2, False)
    cfg = driver._pdl_config(spec, 0)
    assert (cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ, cfg.blockDimX, cfg.numAttrs) == (224, 2, 1, 256, 1)
    assert cfg.attrs[0].value.programmaticStreamSerializationAllowed == 1


@nvrtc
def test_l2hint_builds_mark_weights_and_tau():
    """1: every weight load carries the evict_first policy; 2: tau's loads carry evict_last; the default build
    has no policy at all."""
    def ptx(tune):
        return kernels.launch_spec(torch.bfloat16, 4096, [14336], 1, tile=128, cluster=2, tune=tune,
                                   weights=quant.FORMATS["fp8_e4m3"], arch=90).ptx
    base, first, last = ptx({}), ptx({"WSP_L2HINT": 1}), ptx({"WSP_L2HINT": 2})
    assert "createpolicy" not in base and "cache_hint" not in base
    weight_loads = base.count("ld.global.nc.L1::no_allocate.v4.u32")
    assert weight_loads > 0 and "evict_first" in first and "evict_last" not in first
    assert first.count("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32") == weight_loads
    assert "evict_last" in last and last.count("ld.global.nc.L2::cache_hint.v4.f32") == 2


def test_probe_json_says_when_where_and_how(tmp_path, monkeypatch):
    """Every probe's JSON carries the date, the GPU, the command, its clock, its extra fields, the rows and the
    seconds; a probe that times several clocks says so in place of the default's name."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    argv = ["probe_access.py", "--json", "out.json", "--cells", "8B down bf16", "8B gate+up fp8"]
    monkeypatch.setattr(sys, "argv", argv)
    path = tmp_path / "p.json"
    bench_floor.save_rows(str(path), [{"us": 1.5}], 0.0, read_tbps=4.2)
    got = json.loads(path.read_text())
    assert got["gpu"] == "NVIDIA H200" and got["rows"] == [{"us": 1.5}] and got["read_tbps"] == 4.2
    assert shlex.split(got["command"]) == [sys.executable, *argv]  # quoted: the command re-runs as recorded
    assert got["seconds"] > 0 and got["date"][:2] == "20"
    assert got["timing"] == "queued, 200 calls a graph"
    bench_floor.save_rows(str(path), [], 0.0, timing="four clocks: each row")
    assert json.loads(path.read_text())["timing"] == "four clocks: each row"


def _fp8_ptx(tune):
    return kernels.launch_spec(torch.bfloat16, 4096, [14336], 1, tile=128, cluster=2, tune=tune,
                               weights=quant.FORMATS["fp8_e4m3"], arch=90).ptx


@nvrtc
def test_async_builds_copy_weights_through_shared_memory():
    """WSP_ASYNC=8: the weight pieces come by cp.async into dynamic shared memory, 8 in flight (wait_group 7), and
    no 16-byte weight load goes to registers; the default build has no cp.async."""
    base, ring = _fp8_ptx({}), _fp8_ptx({"WSP_ASYNC": 8})
    assert "cp.async" not in base and base.count("ld.global.nc.L1::no_allocate.v4.u32") > 0
    assert "cp.async.cg.shared.global [" in ring and "cp.async.wait_group 7" in ring
    assert ".extern .shared" in ring and "ld.global.nc.L1::no_allocate.v4.u32" not in ring


@nvrtc
def test_l2pf_builds_change_only_the_prefetch():
    """The shipped build (WSP_L2PF 0) asks L2 for no prefetch on its 16-byte weight loads; 256 and 128 ask for that
    many bytes on every one of them, nothing else changes."""
    base, full, half = _fp8_ptx({}), _fp8_ptx({"WSP_L2PF": 256}), _fp8_ptx({"WSP_L2PF": 128})
    n = base.count("ld.global.nc.L1::no_allocate.v4.u32")
    assert n > 0 and "L2::256B" not in base and "L2::128B" not in base
    assert full.count("ld.global.nc.L1::no_allocate.L2::256B.v4.u32") == n
    assert half.count("ld.global.nc.L1::no_allocate.L2::128B.v4.u32") == n

    def plain(ptx, suffix):  # without the hint, the name's suffix and its length in the mangled names
        return re.sub(r"_ZZ\d+", "_ZZ", re.sub(r"\.L2::(128|256)B", "", ptx.replace(suffix, "")))
    assert plain(full, "_l2pf256") == plain(base, "") == plain(half, "_l2pf128")


@nvrtc
@pytest.mark.parametrize("depth", [4, 32])
def test_sdasync_ring_ptx(depth):
    """The floor's async read: depth - 1 groups may stay pending, the ring is dynamic shared memory of the size the
    spec launches with."""
    spec = bench_floor.floor_spec("wsp_floor_sdasync", 8, (64, 256, 2), 90, seg=128, defines={"WSP_D": depth},
                                  shared_mem=depth * kernels.THREADS * 16)
    body = spec.ptx.split(".entry wsp_floor_sdasync")[1].split(".entry")[0]
    assert f"cp.async.wait_group {depth - 1}" in body and "cp.async.commit_group" in body
    assert spec.shared_mem == depth * 4096 and ".extern .shared" in spec.ptx


def test_async_rings_fit_a_multiprocessor():
    """Every ring depth probe_async.py launches fits the H200's 227 KB of shared memory a block, beside the list
    (WSP_KL ints); the deepest leaves room for one block a SM, the one below it for three."""
    rows = 2048 * 4
    rings = [d * kernels.THREADS * 16 + rows for d in probe_async.DEPTHS]
    assert max(rings) <= 227 * 1024 and 227 * 1024 // rings[-1] == 1 and 227 * 1024 // rings[-2] >= 3


def _folds(readers: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Each floor reader's per-block fold of the same kept rows' 128-byte pieces (1-byte weights, 2 projections,
    clusters of 2), on the GPU."""
    torch.manual_seed(0)
    in_f, splits, tile, c = 512, [256, 128], 128, 2
    w = torch.randint(0, 256, (in_f, sum(splits)), dtype=torch.uint8, device="cuda")
    idx = torch.zeros(2, in_f, dtype=torch.int32)
    counts = [300, 77]
    for p, n in enumerate(counts):
        idx[p, :n] = torch.randperm(in_f)[:n].sort().values.to(torch.int32)
    starts, tiles = bench_floor.sdread_tables(idx, counts, splits, in_f, tile, c, 1)
    grid, arch = len(tiles) * c, kernels.device_arch(torch.device("cuda"))
    keep = [idx.cuda(), starts.cuda(), tiles.cuda()]
    ptrs = [t.data_ptr() for t in keep] + [w.data_ptr()]
    out = {}
    for name, extra in {"wsp_floor_sdread": {}, **readers}.items():
        spec = bench_floor.floor_spec(name, grid, (in_f, sum(splits), c), arch, seg=tile, **extra)
        out[name] = torch.zeros(grid, dtype=torch.int32, device="cuda")
        kernels.launch(spec, ptrs, out[name].data_ptr(), torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert bool(out["wsp_floor_sdread"].ne(0).all())
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("depth", [4, 16])
def test_sdasync_reads_what_sdread_reads(depth):
    """On a GPU: the asynchronous-copy read folds exactly the bytes the register read folds, block by block (depth 16
    needs 64 KB of dynamic shared memory and 72 KB in all: the driver's opt-in above 48 KB)."""
    out = _folds({"wsp_floor_sdasync": {"defines": {"WSP_D": depth}, "shared_mem": depth * kernels.THREADS * 16}})
    assert torch.equal(out["wsp_floor_sdread"], out["wsp_floor_sdasync"])


@pytest.mark.gpu
@pytest.mark.parametrize("stages", [1, 2, 8])
def test_sdbulk_reads_what_sdread_reads(stages):
    """On a GPU: the bulk-copy read (whole pieces through the TMA unit, mbarrier-counted stages) folds exactly the
    bytes the register read folds: one stage (every stage waited on before its refill), a ring that wraps, and 64 KB
    of stages (the opt-in above 48 KB)."""
    out = _folds({"wsp_floor_sdbulk": {"defines": {"WSP_BD": stages}, "shared_mem": stages * 8192}})
    assert torch.equal(out["wsp_floor_sdread"], out["wsp_floor_sdbulk"])


def test_probe_command_line_and_no_gpu(monkeypatch):
    """Every probe takes --json and --reps from probe_parser; without a GPU, one line and a non-zero exit."""
    ap = bench_floor.probe_parser(pg.__doc__)
    ap.add_argument("--set", choices=list(pg.SETS), default="grid")
    monkeypatch.setattr(sys, "argv", ["probe_grid.py", "--json", "out.json", "--set", "async"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        bench_floor.probe_start(ap, "probe_grid.py")
    assert e.value.code == "error: probe_grid.py needs a CUDA GPU, and none is visible"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args, t0 = bench_floor.probe_start(ap, "probe_grid.py")
    assert (args.json, args.reps, args.set) == ("out.json", 3, "async") and t0 > 0


def test_timing_probe_compares_both_clocks_on_the_issue_cells(monkeypatch):
    """probe_timing.py times each call four ways (idle / queued, 20 / 200 calls a graph) on issue 14's two 8B cells;
    bench_kernels.py's default is the queued 200-call way, --legacy-timing the idle 20-call one; no GPU: one line."""
    assert probe_timing.METHODS == {"idle-20": (False, 20), "queued-20": (True, 20), "idle-200": (False, 200),
                                    "queued-200": (True, 200)}
    assert probe_timing.CELLS == ("8B gate/up 4096->14336", "8B down 14336->4096")
    assert (bench_kernels.QUEUED, bench_kernels.PER_GRAPH) == (True, 200)
    assert bench_kernels.timing() == "queued, 200 calls a graph"
    monkeypatch.setattr(sys, "argv", ["probe_timing.py", "--json", "out.json"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        probe_timing.main()
    assert e.value.code == "error: probe_timing.py needs a CUDA GPU, and none is visible"


@pytest.mark.gpu
@pytest.mark.parametrize("queued", [True, False])
def test_timed_graph_runs_each_copy_its_share(queued):
    """On a GPU: median_call_us runs every copy once before capture, then 1 + `replays` replays of a graph of 200
    calls rounded up to whole rotations (3 copies: 201, 67 each), and returns a positive per-call time; both clocks."""
    acc = torch.zeros(1, dtype=torch.float64, device="cuda")
    calls = [lambda d=10.0**i: acc.add_(d) for i in range(3)]
    us = bench_kernels.median_call_us(calls, 3, replays=4, per_graph=200, queued=queued)
    torch.cuda.synchronize()
    assert acc.item() == (1 + 5 * 67) * 111.0
    assert 0 < us < 1e3


SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;                 /* 0x00000a0000017a02 */
        /*0010*/                   LDG.E.128.CONSTANT R4, desc[UR4][R2.64] ;
        /*0020*/                   IMAD R5, R5, R6, RZ ;
        /*0030*/              @!P0 LDG.E.NA.128.CONSTANT R8, desc[UR4][R2.64] ;
        /*0040*/                   FFMA R9, R8, R7, R9 ;
        /*0050*/                   FFMA R10, R8, R7, R10 ;
        /*0060*/              @!P1 BRA 0x30 ;
        /*0070*/               @P2 BRA P0, 0x0 ;
        /*0080*/                   EXIT ;
"""


def test_sass_loop_takes_the_shortest_loop_around_a_weight_load():
    """The inner loop (0x30-0x60), not the outer one around it: 4 instructions, 1 weight load, its opcodes."""
    n, loads, ops = sass_loop.stream_loop(SASS)
    assert (n, loads) == (4, 1) and ops == {"LDG": 1, "FFMA": 2, "BRA": 1}
    outer_only = SASS.replace("@!P1 BRA 0x30", "@!P1 BRA 0x90")  # a forward branch closes no loop
    assert sass_loop.stream_loop(outer_only)[:2] == (8, 2)
    with pytest.raises(ValueError, match="no loop"):
        sass_loop.stream_loop(SASS.replace("BRA P0, 0x0", "BRA P0, 0x90").replace("BRA 0x30", "BRA 0x90"))
    assert sass_loop.tune_item("WSP_U=5") == ("WSP_U", 5)
    with pytest.raises(argparse.ArgumentTypeError):
        sass_loop.tune_item("U=5")
