"""Never worse than the baselines on unseen text: the held-out validation split, the model's alpha chosen on it,
the fallback to teal/wina, and the built-in second text domain."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from _plans import tiny_model, tokenizer

from wisparse_export import pipeline, search
from wisparse_export.config import SearchConfig
from wisparse_export.data import Text, load_text
from wisparse_export.errors import WisparseError
from wisparse_export.models import Loaded, find_blocks

SEARCH = replace(SearchConfig.preset("fast"), seq_len=32, intra_tokens=64, screen_tokens=64, rank_tokens=128,
                 population=3, generations=1, offspring=2, survivors=1, unit_step=0.5, level_step=0.1)
WORDS = ("the committee met on tuesday to discuss the budget for the coming year members argued about roads "
         "schools and the cost of water after four hours they agreed to meet again next week").split()
CAL = dict(seq_len=64, tokens=64 * 8, validation_tokens=64 * 3)


def corpus(n: int = 30, seed: int = 1) -> Text:
    g = torch.Generator().manual_seed(seed)
    docs = [f"doc{i} " + " ".join(WORDS[j] for j in torch.randint(len(WORDS), (60,), generator=g).tolist())
            for i in range(n)]
    return Text(docs, f"prose-{seed}")


def tiny(seed: int = 0, spread: float = 0.0) -> Loaded:
    """A tiny Llama; spread > 0 scales each planned linear's input columns by exp(U(-spread, spread)), so weight
    column norms differ by orders of magnitude and a channel's magnitude alone says little of its effect."""
    model = tiny_model("llama", seed)
    blocks = find_blocks(model)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name in (n for b in blocks for n in b.linears):
            w = model.get_submodule(name).weight
            w.mul_(torch.empty(w.shape[1]).uniform_(-spread, spread, generator=g).exp())
    return Loaded(model=model, tokenizer=tokenizer(), source="tiny-llama", blocks=blocks)


def test_split_is_by_document_disjoint_seeded_and_recorded():
    text = corpus()
    a, v, unit = pipeline.split_text(text, 0.2, seed=3)
    assert unit == "documents" and len(v.docs) == 6 and len(a.docs) == 24
    assert set(a.docs).isdisjoint(v.docs) and set(a.docs) | set(v.docs) == set(text.docs)
    assert pipeline.split_text(text, 0.2, seed=3)[1].docs == v.docs  # deterministic
    assert pipeline.split_text(text, 0.2, seed=4)[1].docs != v.docs  # seeded
    plan = pipeline.calibrate(tiny(), text, 0.5, method="teal", seed=3, progress=False, **CAL)
    split = plan.calibration["split"]
    assert split["search"] == {"documents": 24, "tokens": 64 * 8} and split["fraction"] == 0.2
    assert split["validation"] == {"documents": 6, "tokens": 64 * 3}
    with pytest.raises(WisparseError, match="too short to hold part of it out"):
        pipeline.split_text(Text(["one line only"], "x"), 0.2, 0)


def test_alpha_is_chosen_on_validation_and_recorded():
    """Column norms spread over orders of magnitude: weight-aware scores (alpha 1) are known to be better."""
    plan = pipeline.calibrate(tiny(spread=3.0), corpus(), 0.5, method="wisparse", search=SEARCH, progress=False,
                              **CAL)
    alpha = plan.search["validation"]["alpha"]
    kl = {float(a): k for a, k in alpha["uniform_validation_kl"].items()}
    assert alpha["tried"] == [0.0, 0.5, 1.0] and set(kl) == {0.0, 0.5, 1.0}
    assert kl[1.0] < kl[0.0] and alpha["chosen"] == min(kl, key=kl.get) == 1.0
    assert plan.search["settings"]["alphas"] == [1.0]  # the search ran at the chosen alpha
    if plan.method == "wisparse":
        assert {lp.alpha for lp in plan.layers.values()} == {1.0}
    assert plan.search["final"]["judged_by"] == "validation KL"
    assert set(plan.search["final"]["kl"]) == {"refined", "uniform split", "uniform levels"}


def test_fallback_when_the_searched_plan_is_worse(monkeypatch, capsys):
    """The searched plan is made worse on purpose (every linear at 0.95): the better of teal and wina is written,
    identical to what `--method teal|wina` writes, and one line on stderr says so."""
    real = search.final_choice

    def worse(problem, best, target, judge):
        _, allocation, kls = real(problem, best, target, judge)
        bad = {n: (0.95, a) for n, (_, a) in allocation.items()}
        return "refined", bad, {**kls, "refined": judge(bad)}

    monkeypatch.setattr(search, "final_choice", worse)
    capsys.readouterr()
    plan = pipeline.calibrate(tiny(), corpus(), 0.5, method="wisparse", search=SEARCH, progress=False, **CAL)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "writing the uniform" in ln]
    back = plan.search["fallback"]
    assert plan.method in ("teal", "wina") and back["to"] == plan.method == plan.search["result"]
    assert len(lines) == 1 and plan.method in lines[0] and "not below" in back["why"]
    baseline = pipeline.calibrate(tiny(), corpus(), 0.5, method=plan.method, progress=False, **CAL)
    assert plan.layers == baseline.layers


def test_no_fallback_when_search_wins_and_record_is_json():
    """Without tampering the record still names both baselines' validation KLs and the decision."""
    plan = pipeline.calibrate(tiny(spread=3.0), corpus(), 0.5, method="wisparse", search=SEARCH, progress=False,
                              **CAL)
    rec = json.loads(json.dumps(plan.to_dict()))["search"]
    kls = rec["final"]["kl"]
    base = min(rec["validation"]["alpha"]["uniform_validation_kl"][k] for k in ("0.0", "1.0"))
    if rec["fallback"] is None:
        assert rec["result"] == "searched" and kls[rec["final"]["candidate"]] < base
    else:
        assert kls[rec["final"]["candidate"]] >= base


def test_checkpoint_key_includes_the_validation_split(tmp_path, capsys):
    """A checkpoint left by a run with other held-out tokens (same search part) is not resumed."""
    ckpt = tmp_path / "p.json.search.json"
    orig = search.write_json

    def stop(path, obj):
        orig(path, obj)
        raise KeyboardInterrupt

    search.write_json = stop
    try:
        with pytest.raises(KeyboardInterrupt):
            pipeline.calibrate(tiny(), corpus(), 0.4, method="wisparse", search=replace(SEARCH, generations=2),
                               checkpoint=ckpt, progress=False, **{**CAL, "validation_tokens": 64 * 2})
    finally:
        search.write_json = orig
    capsys.readouterr()
    pipeline.calibrate(tiny(), corpus(), 0.4, method="wisparse", search=replace(SEARCH, generations=2),
                       checkpoint=ckpt, progress=False, **CAL)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "checkpoint" in ln]
    assert len(lines) == 1 and "validation tokens" in lines[0] and "starting the search fresh" in lines[0]


def test_builtin_pydoc_text():
    t = load_text(["builtin:pydoc"], "evaluation")
    assert len(t.docs) > 50 and t.sources == ["builtin:pydoc"] and t.description.startswith("builtin:pydoc")
    with pytest.raises(WisparseError, match="unknown built-in text"):
        load_text(["builtin:nothing"], "evaluation")
