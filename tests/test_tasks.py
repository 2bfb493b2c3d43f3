"""`wisparse evaluate --tasks`: lm-eval task accuracy, dense and sparse side by side, on a tiny model, offline.

The task (tests/data/tasks/wisparse_tiny_mc) is a dozen multiple-choice items read from a local file through
lm-eval's include_path, so no dataset is fetched. Each reported accuracy is checked against our own scoring of the
same items (sum of log-probabilities of each choice after the prompt, as lm-eval defines acc and acc_norm), with the
model dense and with the plan applied: a dense pass run sparse, or the reverse, fails.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from _plans import make_plan, run_cli, save_tiny

from wisparse_export import apply, remove
from wisparse_export.models import load_model
from wisparse_export.plan import save_plan

pytest.importorskip("lm_eval", reason="the [eval] extra (lm-eval) is not installed")

TASKS = Path(__file__).parent / "data" / "tasks"
ITEMS = [json.loads(x) for x in (TASKS / "wisparse_tiny_mc" / "items.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    folder = save_tiny("llama", root / "model")
    loaded = load_model(str(folder), "float32", "cpu")
    plan = make_plan(loaded, 0.5)
    save_plan(plan, root / "plan.json")
    return loaded, plan, folder, root / "plan.json"


@torch.no_grad()
def reference(loaded) -> tuple[dict, list[list[float]]]:
    """acc and acc_norm over the items, by our own scoring: each choice's log-likelihood after "Question: ...\\n
    Answer:" (BOS first, as lm-eval's HFLM encodes for this tokenizer), normalized by its length for acc_norm."""
    tok, hits, lls = loaded.tokenizer, {"acc": 0, "acc_norm": 0}, []
    for item in ITEMS:
        ctx = f"Question: {item['question']}\nAnswer:"
        ll = []
        for choice in item["choices"]:
            c, w = tok(ctx)["input_ids"], tok(f"{ctx} {choice}")["input_ids"]
            lp = torch.log_softmax(loaded.model(input_ids=torch.tensor([w])).logits.float(), -1)[0]
            ll.append(sum(lp[i - 1, w[i]].item() for i in range(len(c), len(w))))
        lls.append(ll)
        norm = [v / len(choice) for v, choice in zip(ll, item["choices"], strict=True)]
        hits["acc"] += max(range(len(ll)), key=ll.__getitem__) == item["answer"]
        hits["acc_norm"] += max(range(len(norm)), key=norm.__getitem__) == item["answer"]
    return {k: v / len(ITEMS) for k, v in hits.items()}, lls


def test_evaluate_tasks_reports_dense_and_sparse_accuracy_and_ratio(tiny, tmp_path, capsys):
    loaded, plan, folder, plan_path = tiny
    out = tmp_path / "r.json"
    capsys.readouterr()
    assert run_cli("evaluate", "--model", str(folder), "--plan", str(plan_path), "--tokens", "256", "--seq-len", "64",
                   "--tasks", "wisparse_tiny_mc", "--task-path", str(TASKS), "--quiet", "--json", str(out)) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())["task_accuracy"]
    remove(loaded.model)
    dense, dense_ll = reference(loaded)
    apply(loaded.model, plan)
    try:
        sparse, sparse_ll = reference(loaded)
    finally:
        remove(loaded.model)
    assert dense_ll != sparse_ll  # the plan changes the scores, so the two passes can be told apart
    task = r["tasks"]["wisparse_tiny_mc"]
    assert task["n"] == len(ITEMS)
    for metric in ("acc", "acc_norm"):
        assert task[metric]["dense"] == pytest.approx(dense[metric])
        assert task[metric]["sparse"] == pytest.approx(sparse[metric])
        if dense[metric] > 0:
            assert task[metric]["ratio"] == pytest.approx(sparse[metric] / dense[metric])
        else:
            assert task[metric]["ratio"] is None
    assert r["mean"]["dense"] == pytest.approx(dense["acc_norm"])  # one task: its headline metric, acc_norm
    assert r["mean"]["sparse"] == pytest.approx(sparse["acc_norm"])
    assert 0.3 < r["realized_sparsity"] < 0.7  # the sparse pass ran with the 0.5 plan applied
    assert "wisparse_tiny_mc" in printed and "of dense" in printed


def test_task_limit_caps_items(tiny, tmp_path):
    from wisparse_export import tasks

    loaded, plan, _, _ = tiny
    config = tasks.TaskConfig(("wisparse_tiny_mc",), limit=5, include_path=str(TASKS))
    r = tasks.evaluate_tasks(loaded, plan, config, progress=False)
    remove(loaded.model)
    assert r["tasks"]["wisparse_tiny_mc"]["n"] == 5 and r["limit"] == 5


@pytest.mark.parametrize("args, message", [
    (["--tasks", "no_such_task_xyz"], "unknown lm-eval task 'no_such_task_xyz'"),
    (["--tasks", "arc_easy,,piqa"], "--tasks takes NAME[,NAME...]"),
    (["--tasks", "wisparse_tiny_mc", "--task-path", "/nonexistent/tasks"], "task folder not found"),
])
def test_bad_task_arguments_are_one_line(tiny, capsys, args, message):
    _, _, folder, plan_path = tiny
    capsys.readouterr()
    assert run_cli("evaluate", "--model", str(folder), "--plan", str(plan_path), *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_missing_lm_eval_names_the_extra(tiny, capsys, monkeypatch):
    _, _, folder, plan_path = tiny
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    capsys.readouterr()
    assert run_cli("evaluate", "--model", str(folder), "--plan", str(plan_path), "--tasks", "arc_easy") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wisparse-export[eval]" in err[0], err
