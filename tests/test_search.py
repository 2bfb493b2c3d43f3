"""The allocation search on a tiny random Llama: budget exact, deterministic, resumable, CLI and plot."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
import torch
from _plans import run_cli, save_tiny, tiny_model, tokenizer

from wisparse_export import search
from wisparse_export.calibration import collect
from wisparse_export.config import SearchConfig, search_budgets
from wisparse_export.data import recipe
from wisparse_export.errors import WisparseError
from wisparse_export.models import Loaded, find_blocks

TINY = replace(SearchConfig.preset("fast"), seq_len=32, intra_tokens=64, screen_tokens=64, rank_tokens=128,
               population=3, generations=2, offspring=3, survivors=1, unit_step=0.5, level_step=0.1,
               alphas=(1.0,))


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model("llama")
    loaded = Loaded(model=model, tokenizer=tokenizer(), source="tiny-llama", blocks=find_blocks(model))
    seqs = torch.randint(4, 260, (8, 64), generator=torch.Generator().manual_seed(0))
    seqs[:, 0] = 1
    stats = collect(model, loaded.blocks, seqs, (0.0, 1.0), 4, progress=False)
    return loaded, stats, seqs


def budget(loaded, stats, allocation) -> float:
    p = {n: stats.shapes[n][0] * stats.shapes[n][1] for n in allocation}
    return sum(allocation[n][0] * p[n] for n in p) / sum(p.values())


def test_greedy_split_meets_level_within_bounds():
    curves = [[0, 1, 4, 9], [0, 0.1, 0.2, 5], [0, 2, 3, 4]]
    s = search.greedy_split(curves, [0, 0.3, 0.6, 0.9], [10, 30, 20], 0.4, [0.1] * 3, [0.7] * 3)
    assert sum(x * p for x, p in zip(s, [10, 30, 20], strict=True)) / 60 == pytest.approx(0.4, abs=1e-9)
    assert all(0.1 - 1e-12 <= x <= 0.7 + 1e-12 for x in s)
    assert s[1] == max(s)  # the cheapest member takes the most


def test_mutation_keeps_budget():
    rng = random.Random(0)
    params = [3, 1, 2, 5]
    levels = [0.5, 0.2, 0.7, 0.4]
    for _ in range(200):
        levels = search.mutate(levels, params, rng, 0.9)
        assert all(-1e-12 <= x <= 0.9 + 1e-12 for x in levels)
    assert sum(x * p for x, p in zip(levels, params, strict=True)) == pytest.approx((1.5 + 0.2 + 1.4 + 2.0), abs=1e-9)


def test_presets_and_overrides():
    s = replace(SearchConfig.preset("default"), generations=3)
    assert s.generations == 3 and s.budget == "default"
    assert SearchConfig.preset(None, "cpu").budget == "fast" and SearchConfig.preset(None, "cuda:0").budget == "default"
    assert search_budgets() == ("fast", "default", "thorough")
    with pytest.raises(WisparseError, match="unknown search budget"):
        SearchConfig.preset("huge")
    # recorded in a plan as the preset's own keys, in its order, then its name; clamped where the search clamps
    preset = {k: v for k, v in recipe("search_presets")["fast"].items() if k != "description"}
    assert json.dumps(SearchConfig.preset("fast").record()) == json.dumps({**preset, "budget": "fast"})
    small = replace(SearchConfig.preset("fast"), offspring=1, rank_tokens=100)
    assert small.survivors == 1 and small.screen_tokens == 100


@pytest.mark.parametrize("override", [{"generations": -1}, {"offspring": 0}, {"population": 2.5}, {"seq_len": 1},
                                      {"level_step": 0.0}, {"max_level": 1.5}, {"alphas": ()}, {"alphas": (5.0,)},
                                      {"max_deviation": -0.1}])
def test_bad_search_settings_are_one_line_errors(override):
    with pytest.raises(WisparseError, match="search setting") as e:
        replace(SearchConfig.preset("fast"), **override)
    assert "\n" not in str(e.value)


def test_allocate_budget_exact_grouped_deterministic(tiny, tmp_path):
    loaded, stats, seqs = tiny
    per_unit = replace(TINY, alphas=[0.0, 1.0], unit_alpha=True)
    a1, rec = search.allocate(loaded, stats, seqs, 0.5, per_unit, progress=False)
    a2, _ = search.allocate(loaded, stats, seqs, 0.5, per_unit, progress=False)
    assert a1 == a2
    assert set(a1) == set(stats.hist)
    assert budget(loaded, stats, a1) == pytest.approx(0.5, abs=1e-6)
    assert rec["budget"] == pytest.approx(0.5, abs=1e-6)
    for block in loaded.blocks:  # linears that share an input share a sparsity
        for g in block.groups:
            assert len({a1[n] for n in g}) == 1
    assert [t["generation"] for t in rec["trace"]] == [0, 1, 2]
    assert all(abs(a1[n][0] - lvl["level"]) <= 0.25 + 1e-6 for lvl, b in zip(rec["blocks"], loaded.blocks,
                                                                              strict=True) for n in b.linears)


def test_checkpoint_resumes(tiny, tmp_path, capsys):
    loaded, stats, seqs = tiny
    ckpt = tmp_path / "ckpt.json"
    full, _ = search.allocate(loaded, stats, seqs, 0.4, replace(TINY, generations=3), progress=False)
    # An interrupted run: stopped after generation 1 leaves its checkpoint behind.
    search.allocate(loaded, stats, seqs, 0.4, replace(TINY, generations=1), str(ckpt), progress=False)
    assert not ckpt.exists()  # finished runs clean up
    state = {}

    def stop(path, obj):
        state.update(obj)
        path.write_text(json.dumps(obj))
        if obj["generation"] == 1:
            raise KeyboardInterrupt

    orig = search.write_json
    search.write_json = stop
    try:
        with pytest.raises(KeyboardInterrupt):
            search.allocate(loaded, stats, seqs, 0.4, replace(TINY, generations=3), str(ckpt), progress=False)
    finally:
        search.write_json = orig
    assert json.loads(ckpt.read_text())["generation"] == 1
    capsys.readouterr()
    resumed, rec = search.allocate(loaded, stats, seqs, 0.4, replace(TINY, generations=3), str(ckpt), progress=False)
    assert "resuming from generation 1" in capsys.readouterr().err
    assert resumed == full
    assert [t["generation"] for t in rec["trace"]] == [0, 1, 2, 3]


def test_cli_calibrate_wisparse_and_plot(tmp_path):
    folder = save_tiny("llama", tmp_path / "tiny")
    text = tmp_path / "calib.txt"
    text.write_text("\n".join(f"word{i} and some text about item {i}." for i in range(400)))  # 400 lines
    plan = tmp_path / "plan.json"
    rc = run_cli("calibrate", "--model", str(folder), "--sparsity", "0.5", "--calib-text", str(text),
                 "--calib-tokens", "512", "--seq-len", "64", "--search-budget", "fast", "--search-generations", "1",
                 "--search-offspring", "2", "--search-tokens", "256", "-o", str(plan), "--quiet")
    assert rc == 0
    d = json.loads(plan.read_text())
    assert d["method"] == "wisparse" and abs(d["budget"] - 0.5) < 1e-4
    assert d["search"]["settings"]["generations"] == 1 and d["search"]["trace"]
    split = d["calibration"]["split"]  # one file: held out by lines
    assert split["search"]["lines"] + split["validation"]["lines"] == 400 and split["validation"]["tokens"] > 0
    png = tmp_path / "alloc.png"
    assert run_cli("plot", str(plan), "-o", str(png)) == 0
    assert png.stat().st_size > 1000


def test_plot_draws_shared_sparsities_as_one_line(tmp_path, monkeypatch):
    """q/k/v with one sparsity per block become one "q/k/v" line; o, differing, keeps its own."""
    from matplotlib.axes import Axes

    from wisparse_export.report import plot_allocation

    layers = {}
    for b, (s_qkv, s_o) in enumerate([(0.4, 0.6), (0.5, 0.5), (0.3, 0.7)]):
        for p in ("q_proj", "k_proj", "v_proj"):
            layers[f"model.layers.{b}.self_attn.{p}"] = {"sparsity": s_qkv, "shape": [8, 8]}
        layers[f"model.layers.{b}.self_attn.o_proj"] = {"sparsity": s_o, "shape": [8, 8]}
    plan = {"layers": layers, "budget": 0.5, "target_sparsity": 0.5, "model": {"source": "tiny"}, "method": "wisparse"}
    labels = []
    real = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **k: labels.append(k.get("label")) or real(self, *a, **k))
    plot_allocation(plan, str(tmp_path / "a.png"))
    assert labels == ["q/k/v", "o"] and (tmp_path / "a.png").stat().st_size > 1000
