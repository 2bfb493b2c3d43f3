"""benchmarks/bench_fused.py on CPU: its byte counts and bounds, its cases, specs and arguments (the timing itself
needs a GPU: run `python benchmarks/bench_fused.py --json OUT.json` on one)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from test_kernels import fake_ptx  # noqa: F401 (fixture)

from wisparse_export import kernels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_fused as bf  # noqa: E402


@pytest.mark.parametrize("weights", [None, "fp8_e4m3", "int8"])
@pytest.mark.parametrize("keep", [0.0, 0.25, 0.5, 1.0])
def test_today_bytes_are_kernels_bytes_moved(weights, keep):
    """One projection: today's path moves what kernels.bytes_moved says (kept rows, scales, x, tau, y)."""
    for in_f, out, rows in ((4096, 14336, 1), (14336, 4096, 3)):
        count = int(keep * in_f)
        got = bf.path_bytes(in_f, [out], "rmsnorm", [count], rows, weights)["today"]
        assert got == kernels.bytes_moved(in_f, out, rows, count / in_f, weights=weights)


def test_list_path_trades_x_and_tau_for_the_list():
    """The list GEMV reads the list (an int32 and R values per kept entry, a count per projection) instead of x and
    the P tau rows; fused = producer + list; the producer reads x and gamma (RMSNorm) or [gate | up] (SiLU)."""
    in_f, splits, counts = 4096, [4096, 1024, 1024], [1000, 2000, 3000]
    for rows, r in ((1, 1), (2, 2), (3, 4), (4, 4)):
        b = bf.path_bytes(in_f, splits, "rmsnorm", counts, rows, None)
        x, tau, lst = rows * in_f * 2, 3 * in_f * 4, 6000 * (4 + 2 * r) + 3 * 4
        assert b["today"] - b["list"] == x + tau - lst
        assert b["producer"] == x + in_f * 2 + tau + x + lst  # x, gamma, tau in; xn and the list out
        assert b["fused"] == b["producer"] + b["list"]
        s = bf.path_bytes(in_f, splits, "silu_mul", counts, rows, None)
        assert s["producer"] == 2 * x + tau + lst and s["list"] == b["list"]
    q = bf.path_bytes(in_f, splits, "rmsnorm", counts, 1, "fp8_e4m3")["list"]
    w = bf.path_bytes(in_f, splits, "rmsnorm", counts, 1, None)["list"]
    assert w - q == (1000 * 4096 + 2000 * 1024 + 3000 * 1024) - 4 * 6144  # 1 byte a weight, a scale a column


def test_percent_of_bound():
    bound, pct = bf.pct_of_bound(4_000_000, 2.0, 4e12)  # 4 MB at 4 TB/s: 1 us; measured 2 us
    assert bound == pytest.approx(1.0) and pct == pytest.approx(50.0)
    rows = [{"shape": bf.MLP[0], "weights": "bf16", "batch": 1, "sparsity": s,
             **{p: {"pct_of_bound": pct} for p in bf.PATHS}} for s, pct in ((0.5, 85.0), (0.75, 74.9), (0.0, 10.0))]
    lines = bf.bars(rows)
    assert len(lines) == 2 and lines[0].startswith("MET ") and lines[1].startswith("MISS")


@pytest.mark.parametrize("name", list(bf.SHAPES))
@pytest.mark.parametrize("sparsity", bf.SPARSITIES)
def test_cases_keep_what_they_say(name, sparsity):
    """Every projection of a case keeps 1 - sparsity of the channels (batch 1), its list is compact's of v, and v
    is the producer's output of the inputs (RMSNorm of x, or SiLU(gate) * up)."""
    in_f, splits, kind = bf.SHAPES[name]
    case = bf.make_case(in_f, splits, kind, sparsity, device="cpu")
    assert case.tau.shape == (len(splits), in_f)
    keep = case.lst[2].double() / in_f
    assert torch.allclose(keep, torch.full_like(keep, 1 - sparsity), atol=2e-3)
    want = kernels.rms_norm(*case.inputs, bf.EPS) if kind == "rmsnorm" else kernels.silu_mul(case.inputs[0])
    assert torch.equal(case.v, want) and case.inputs[0].dtype == bf.DTYPE


@pytest.mark.usefixtures("fake_ptx")
@pytest.mark.parametrize("rows", [1, 3])
def test_specs_build_for_every_shape(rows):
    for in_f, splits, kind in bf.SHAPES.values():
        for weights in bf.WEIGHTS.values():
            gemv, prod = bf.specs(in_f, splits, kind, weights, rows, 132, 90)
            assert gemv.rows_per_block == prod.rows_per_block == bf.list_rows(rows)
            assert gemv.args[3:3 + len(splits)] == tuple(splits) and gemv.weights == weights
            assert prod.args[3] == len(splits) and prod.name.startswith(f"wsp_{kind}_bf16_")


def test_arguments():
    a = bf.parse_args(["--json", "x.json"])
    assert a.weights == ["bf16", "fp8"] and a.reps == 3 and a.rows == 1 and a.sparsities == [0.0, 0.5, 0.75]
    assert bf.parse_args(["--json", "x", "--weights", "fp8", "--rows", "4"]).rows == 4
    with pytest.raises(SystemExit):
        bf.parse_args(["--json", "x", "--rows", "5"])
    with pytest.raises(SystemExit):
        bf.parse_args(["--json", "x", "--weights", "int4"])


@pytest.mark.usefixtures("fake_ptx")
@pytest.mark.parametrize("rows", [1, 2, 4])
def test_ablations_build_on_the_mlp_shapes(rows):
    """Every --ablate variant is a valid spec on both MLP shapes and weight formats: one PTX per label (the names
    differ, but sk-1/SM changes only the grid and cl-c1 is cl where today's tiling has no clusters), the cluster
    split without scratch, knobs only where the kernel has room."""
    for name in bf.MLP:
        in_f, splits, kind = bf.SHAPES[name]
        for weights in bf.WEIGHTS.values():
            gemv, _ = bf.specs(in_f, splits, kind, weights, rows, 132, 90)
            variants = bf.list_ablations(rows, gemv.tile, 132)
            assert ("sk-KL" in variants) == ("cl-U8" in variants) == (rows <= 2) and variants["sk"] == ({}, True)
            built = {label: kernels.list_spec(bf.DTYPE, in_f, splits, rows, weights=weights, sms=132, **kw)
                     for label, (kw, _) in variants.items()}
            assert built["sk"].name == gemv.name and built["sk-1/SM"].grid == (132, 1, 1)
            names = [s.name for label, s in built.items() if label not in ("sk-1/SM", "cl-c1")]
            assert all(s.cluster == 1 for label, s in built.items() if label.startswith("sk"))
            assert len(set(names)) == len(names) and built["cl-c1"].name.endswith("_c1")  # cl may be c1 too
            assert all(s.workspace == 0 for label, s in built.items() if label.startswith("cl"))
            assert built["cl-c1"].grid[0] == gemv.semaphores  # one block per column tile
            for label, (kw, correct) in variants.items():
                assert correct == ("WSP_FIXUP" not in kw.get("tune", {})), label
        for kw in bf.PRODUCER_ABLATIONS.values():
            kernels.producer_spec(bf.DTYPE, in_f, rows, kind=kind, projections=len(splits), **kw)


def test_ablation_table_and_attribution():
    """One line per cell with every variant; each attribution line is the difference of the two variants it names."""
    variants = bf.list_ablations(1, 128, 132)
    rows = [{"shape": name, "weights": "bf16", "sparsity": 0.5, "list_bound_us": 10.0, "today_us": 20.0,
             "list": {label: {"us": 20.0 + i, "ok": c or None, "pct_of_bound": 50.0}
                      for i, (label, (_, c)) in enumerate(variants.items())},
             "producer": {p: {"us": 5.0, "ok": p in bf.CORRECT_PRODUCERS or None} for p in bf.PRODUCER_ABLATIONS}}
            for name in bf.MLP]
    text = bf.ablation_table(rows)
    assert all(label in text.splitlines()[0] for label in [*variants, *bf.PRODUCER_ABLATIONS])
    order = list(variants)
    for what, a, b in bf.ATTRIBUTION:
        line = next(x for x in text.splitlines() if x.strip().startswith(what))
        want = (order.index(a) if a != "today" else 0) - (order.index(b) if b != "today" else 0)  # today: 20 us
        assert [float(v) for v in line[len(what) + 2:].split()] == [want, want], what


def test_ablate_argument():
    assert not bf.parse_args(["--json", "x"]).ablate and bf.parse_args(["--json", "x", "--ablate"]).ablate
