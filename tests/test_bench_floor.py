"""benchmarks/bench_floor.py on CPU: the equal-bytes dense shape, the chain's geometry and counter ring, the ceiling
and its mark, the floor kernels' PTX (the timing needs a GPU: `python benchmarks/bench_floor.py --json OUT.json`)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from _plans import nvrtc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_floor as fl  # noqa: E402


@pytest.mark.parametrize("name", list(fl.CELLS))
@pytest.mark.parametrize("w_elem", [1, 2])
@pytest.mark.parametrize("sparsity", [0.5, 0.75])
def test_dense_equal_has_the_kept_bytes(name, w_elem, sparsity):
    """in' = in * keep * weight bytes / 2 (to a multiple of 8), so [out, in'] in bf16 holds the cell's kept rows."""
    in_f, splits, _ = fl.CELLS[name]
    out = sum(splits)
    counts = [round(in_f * (1 - sparsity)) + p for p in range(len(splits))]  # projections may keep different counts
    in_eq = fl.dense_equal_in(splits, counts, w_elem)
    kept = sum(c * s for c, s in zip(counts, splits, strict=True)) * w_elem
    assert in_eq % 8 == 0 and abs(in_eq * out * 2 - kept) <= 4 * out * 2
    keep = sum(counts) / (len(counts) * in_f)
    assert abs(in_eq - in_f * keep * w_elem / 2) <= 4 + len(splits)
    assert fl.dense_bytes(in_eq, out) == in_eq * out * 2 + (in_eq + out) * 2


def test_dense_equal_is_never_empty():
    assert fl.dense_equal_in([4096], [1], 1) == 8


@pytest.mark.parametrize("name", list(fl.CELLS))
@pytest.mark.parametrize("w_elem", [1, 2])
@pytest.mark.parametrize("blocks", [1, 132])
def test_chain_positions_are_disjoint_and_inside_the_weight(name, w_elem, blocks):
    in_f, splits, _ = fl.CELLS[name]
    row = sum(splits) * w_elem
    positions, step = fl.chain_geometry(in_f, row, blocks)
    assert step % row == 0 and step >= blocks * fl.SEG and step % 16 == 0  # whole rows, 16-byte aligned loads
    assert (positions - 1) * step + blocks * fl.SEG <= in_f * row < positions * step + blocks * fl.SEG
    with pytest.raises(ValueError):
        fl.chain_geometry(1, fl.SEG, 2)  # two blocks' segments do not fit one 256-byte row


def _ring(n: int, order) -> list[int]:
    """The counters after chain calls in `order`: call i reads x[i] and writes x[i+1 mod n] (from zeros)."""
    xs = [0] * n
    for i in order:
        xs[(i + 1) % n] = xs[i] + 1
    return xs


@pytest.mark.parametrize("n", [2, 3, 7])
def test_counter_ring(n):
    """Calls in graph order (whole rounds or not) leave counters that say call c read copy c mod n; a ring whose
    first round started elsewhere, or that never ran, is caught."""
    assert fl.ring_ok(_ring(n, [i % n for i in range(5 * n)]))
    assert fl.ring_ok(_ring(n, [i % n for i in range(5 * n + 1)]))
    assert not fl.ring_ok(_ring(n, [i % n for i in range(1, 5 * n)])) and not fl.ring_ok([0] * n)


@pytest.mark.parametrize("name", list(fl.CELLS))
@pytest.mark.parametrize("n", [2, 7, 8, 13])
def test_chain_never_rereads_within_all_copies(name, n):
    """With the kernel's position formula, n * positions consecutive calls read n * positions distinct
    (copy, position) pairs: a segment comes back only after every copy was read in full (so not from L2)."""
    assert "pos = c / (u32)copies % (u32)positions;" in fl.SOURCE.read_text()
    in_f, splits, _ = fl.CELLS[name]
    positions, step = fl.chain_geometry(in_f, sum(splits), 132)  # 1-byte weights: the fewest positions
    pairs = {(c % n, c // n % positions) for c in range(n * positions)}
    assert len(pairs) == n * positions and step >= 132 * fl.SEG


@pytest.mark.parametrize("name", list(fl.CELLS))
@pytest.mark.parametrize("n", [2, 4, 7, 13])
@pytest.mark.parametrize("reps", [1, 3, 5])
def test_chain_graphs_stay_fresh_on_the_200_call_clock(name, n, reps):
    """fresh_per_graph: whole rings, at most bench_kernels' 200 calls a graph, and every timing's calls (n warm-up,
    then 1 + 15 replays of the graph) together within n * positions, so Chain.check's `fresh` holds; the 8B
    gate+up bf16 cell at 0.5 (2 copies, 4096 positions) needed 9606 calls of 200-call graphs, past its 8192."""
    in_f, splits, _ = fl.CELLS[name]
    positions, _ = fl.chain_geometry(in_f, sum(splits), 132)
    pg = fl.fresh_per_graph(n, positions, reps)
    assert pg % n == 0 and n <= pg <= fl.PER_GRAPH == 200
    assert reps * (n + (fl.REPLAYS + 1) * pg) <= n * positions
    assert fl.fresh_per_graph(2, 4096, 3) == 170 and fl.fresh_per_graph(4, 4096, 3) == 200


def test_ceiling_and_mark():
    """FP8 down at 0.5 (bound 7.1 us, bar 85%): 1.25 us of chain is exactly what the bar leaves."""
    assert fl.ceiling_pct(7.1, 1.25) == pytest.approx(100 * 7.1 / 8.35)
    assert fl.ceiling_pct(7.1, 0.0) == 100.0
    assert fl.mark(fl.ceiling_pct(7.1, 1.2), 85.0) == "reachable"
    assert fl.mark(fl.ceiling_pct(7.1, 1.3), 85.0) == "out of reach"
    assert fl.mark(fl.ceiling_pct(3.5, 1.2), 75.0) == "out of reach"  # FP8 down at 0.75
    # a bare read slower than bound + chain caps the ceiling instead; a faster one changes nothing
    assert fl.ceiling_pct(7.1, 1.2, 9.0) == pytest.approx(100 * 7.1 / 9.0)
    assert fl.ceiling_pct(7.1, 1.2, 8.0) == fl.ceiling_pct(7.1, 1.2)
    assert fl.mark(fl.ceiling_pct(7.1, 0.5, 8.6), 85.0) == "out of reach"


def _row(s, bar, ceiling, mark):
    return {"shape": "8B down 14336->[4096]", "weights": "fp8", "sparsity": s, "keep": 0.5, "bound_us": 7.1,
            "ours_us": 13.3, "ours_pct": 53.0, "chain_us": 1.9, "chain_1_us": 1.6, "chain_l2_us": 1.4,
            "chain_check": {"ring_ok": True, "fresh": True}, "chain_1_check": {"ring_ok": True, "fresh": True},
            "read_us": 8.2, "read_pct": 86.6, "dread_us": 9.1, "dread_pct": 78.0, "sdread_us": 12.0, "sdread_pct": 59.2,
            "dense_equal_us": 9.0,
            "dense_equal_pct": 80.0, "bar_pct": bar,
            "ceiling_pct": ceiling, "mark": mark}


def test_table_has_one_line_per_cell():
    rows = [_row(0.5, 85.0, 78.9, "out of reach"), _row(0.0, None, 90.0, None)]
    rows[1]["chain_1_check"] = {"ring_ok": True, "fresh": False}
    lines = fl.table(rows, 1.0).splitlines()
    assert len(lines) == 2 + len(rows)
    assert lines[1].endswith("out of reach") and "13.3 [ 53]" in lines[1]
    assert "8.2 [ 87]   9.1 [ 78]  12.0 [ 59]" in lines[1]
    assert lines[2].endswith("- (chain counters wrong: see JSON)")


def test_arguments_and_no_gpu(monkeypatch, capsys):
    a = fl.parse_args(["--json", "x.json"])
    assert a.weights == ["bf16", "fp8"] and a.reps == 3 and a.sparsities == [0.5, 0.75]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        fl.main(["--json", "x.json"])
    assert str(e.value).startswith("error: ") and "\n" not in str(e.value)


@nvrtc
@pytest.mark.parametrize("arch", [80, 90])
def test_floor_kernels_compile_to_ptx(arch):
    """The chain, empty and read entry points take what kernels.launch passes: 2 input pointers, the spec's int32
    args, y, then x_next."""
    for name in ("wsp_floor_chain", "wsp_floor_empty", "wsp_floor_read", "wsp_floor_dread"):
        spec = fl.floor_spec(name, 132, (4096, 57344, 2), arch)
        entry = re.search(rf"\.entry {name}\((.*?)\)", spec.ptx, re.S)
        assert entry and entry.group(1).count(".param .u64") == 4
        assert entry.group(1).count(".param .u32") == len(spec.args) == 3
        assert spec.grid == (132, 1, 1) and spec.block == (256, 1, 1)
    chain = spec.ptx.split(".entry wsp_floor_empty")[0]  # the chain comes first in the source
    assert "ld.global.nc.L1::no_allocate.v4.u32" in chain and "bar.sync" in chain
    assert "shfl.sync.bfly" in chain and chain.count("st.global") == 2  # y, and the next call's counter
    read, rest = spec.ptx.split(".entry wsp_floor_read")[1].split(".entry wsp_floor_dread")
    dread = rest.split(".entry wsp_floor_sdread")[0]
    assert read.count("ld.global.nc.L1::no_allocate.v4.u32") == 4  # WSP_UNROLL loads in flight
    assert "bar.sync" not in read and read.count("st.global") == 1
    # the dependent read: x's counter first, the same 4 loads, a block reduction, y and the next counter
    assert dread.count("ld.global.nc.L1::no_allocate.v4.u32") == 4
    assert "bar.sync" in dread and dread.count("st.global") == 2
    assert ".L2::" not in spec.ptx  # no L2 prefetch, as the shipped GEMV's loads since build v5
    hinted = fl.floor_spec("wsp_floor_dread", 132, (4096, 57344, 2), arch, defines={"WSP_L2PF": 256}).ptx
    assert hinted.count("ld.global.nc.L1::no_allocate.L2::256B.v4.u32") == spec.ptx.count(
        "ld.global.nc.L1::no_allocate.v4.u32")  # the floor as measured before v5, on request


@nvrtc
def test_chain_spec_on_cpu_tensors():
    """The ring and the spec's arguments, without launching: positions, step, copies; x one buffer a copy."""
    wts = [torch.zeros(4096, 8192, dtype=torch.uint8) for _ in range(3)]
    c = fl.Chain(wts, 4096, 8192, 132, 90)
    assert c.spec.args == (*fl.chain_geometry(4096, 8192, 132), 3) and c.xs.shape == (3, 4096)
    assert fl.Chain(wts, 4096, 8192, 132, 90, fixed=True).spec.args[0] == 1
    c.xs.view(torch.int32)[:, 0] = torch.tensor(_ring(3, [i % 3 for i in range(6)]), dtype=torch.int32)
    assert c.check() == {"calls": 6, "ring_ok": True, "fresh": True}
    c.xs.view(torch.int32)[:, 0] += 3 * c.positions  # as if the ring had wrapped round every position
    assert c.check()["fresh"] is False


def test_sdread_tables_walk_todays_segments():
    """Rank r of a cluster takes the kept channels of its projection in [r * k_per, (r + 1) * k_per) (k_per rounded
    up to 32, as the kernel does): every kept channel once, by the rank whose range holds it; tiles in column
    order, each projection tiled on its own, in bytes."""
    in_f, splits, tile, cluster, elem = 96, [16, 8], 8, 3, 2
    kept = [torch.tensor([0, 5, 31, 32, 40, 95]), torch.tensor([1, 2, 64, 70])]
    idx = torch.zeros(2, in_f, dtype=torch.int32)
    for p, k in enumerate(kept):
        idx[p, :len(k)] = k.to(torch.int32)
    starts, tiles = fl.sdread_tables(idx, [len(k) for k in kept], splits, in_f, tile, cluster, elem)
    assert starts.tolist() == [[0, 3, 5, 6], [0, 2, 2, 4]]  # k_per 32: [0, 32), [32, 64), [64, 96)
    for p, k in enumerate(kept):
        for r in range(cluster):
            got = idx[p, starts[p, r]:starts[p, r + 1]]
            assert all(32 * r <= c < 32 * (r + 1) for c in got.tolist())
        assert starts[p, -1] == len(k)
    assert tiles.tolist() == [[0, 0], [0, 16], [1, 32]]
    with pytest.raises(ValueError, match="whole tiles"):
        fl.sdread_tables(idx, [6, 4], [12, 8], in_f, tile, cluster, elem)


@nvrtc
@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("seg", [128, 256, 512, 4096])
def test_sdread_compiles_for_todays_segments(arch, seg):
    """4 pointers in (list, starts, tiles, weight), in / ldw / cluster, y out; WSP_U loads in flight, the list staged
    in shared memory behind a barrier, one store (y)."""
    spec = fl.floor_spec("wsp_floor_sdread", 224, (4096, 28672, 2), arch, seg=seg)
    entry = re.search(r"\.entry wsp_floor_sdread\((.*?)\)", spec.ptx, re.S)
    assert entry and entry.group(1).count(".param .u64") == 5 and entry.group(1).count(".param .u32") == 3
    body = spec.ptx.split(".entry wsp_floor_sdread")[1].split(".entry")[0]
    loads = body.count("ld.global.nc.L1::no_allocate.v4.u32")
    assert loads >= 4 and loads % 4 == 0  # WSP_U a batch (NVCC may emit the loop more than once)
    assert "bar.sync" in body and body.count("st.global") == 1 and "st.shared" in body
