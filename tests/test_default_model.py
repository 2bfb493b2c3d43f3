"""The embedded default model end to end through the CLI, as a user runs it (minutes on 2 cores: slow)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

WISPARSE = [sys.executable, "-m", "wisparse_export"]


@pytest.mark.slow
def test_calibrate_then_evaluate_hits_target_on_unseen_text(tmp_path):
    plan, report = tmp_path / "p.json", tmp_path / "r.json"
    subprocess.run([*WISPARSE, "calibrate", "--sparsity", "0.5", "--method", "wina", "--quiet", "-o", str(plan)],
                   check=True)
    subprocess.run([*WISPARSE, "evaluate", "--plan", str(plan), "--quiet", "--json", str(report)], check=True)
    r = json.loads(report.read_text())
    assert abs(r["realized_sparsity"] - 0.5) <= 0.02
    assert r["tokens"] >= 16000 and r["dense_ppl"] < r["ppl"] < 4 * r["dense_ppl"]
