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
