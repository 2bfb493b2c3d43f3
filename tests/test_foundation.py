"""Foundation: model map, text, calibration thresholds, plan contract, runtime semantics, CLI bad input."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from _plans import save_tiny, tiny_model, tokenizer

from wisparse_export import apply, load_model, load_plan, remove, save_plan
from wisparse_export.calibration import BINS, LOG_HI, LOG_LO, Stats
from wisparse_export.cli import main
from wisparse_export.data import Text, adds_bos, check_disjoint, default_text, load_text, sequences
from wisparse_export.errors import WisparseError
from wisparse_export.models import find_blocks, projection
from wisparse_export.pipeline import calibrate
from wisparse_export.plan import from_dict
from wisparse_export.runtime import SparseLinear, sparse_linears, track_sparsity

PROSE = ("The committee met on Tuesday to discuss the budget for the coming year. Members argued about "
         "roads, schools and the cost of water. After four hours they agreed to meet again next week. ")


def corpus(seed: int, n_docs: int = 40) -> Text:
    """Different documents for each seed: shuffled words of plain prose."""
    g = torch.Generator().manual_seed(seed)
    words = PROSE.split()
    docs = [" ".join(words[i] for i in torch.randint(len(words), (60,), generator=g).tolist()) for _ in range(n_docs)]
    return Text(docs, f"prose-{seed}")


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what the test's own setup printed
    old = sys.argv
    sys.argv = ["wisparse", *argv]
    try:
        with pytest.raises(SystemExit) as e:
            main()
            raise SystemExit(0)
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def loaded(llama_dir):
    return load_model(str(llama_dir), device="cpu")


@pytest.fixture(scope="module")
def plan(loaded):
    return calibrate(loaded, corpus(1), 0.5, method="wina", seq_len=64, tokens=64 * 24, progress=False)


# --- models -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3", "qwen3", "mistral", "gemma2"])
def test_blocks_group_linears_that_share_an_input(kind):
    blocks = find_blocks(tiny_model(kind))
    assert len(blocks) == 2
    for b in blocks:
        assert [[projection(n) for n in g] for g in b.groups] == [["q", "k", "v"], ["o"], ["gate", "up"], ["down"]]
        assert all(n.startswith(f"model.layers.{b.index}.") for n in b.linears)


def test_default_dtype_is_float32_on_cpu(loaded):
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert load_model(str(loaded.source), dtype="bfloat16", device="cpu").model.dtype == torch.bfloat16


# --- text ---------------------------------------------------------------------------------------------------------

def test_sequences_start_with_bos_only_when_the_tokenizer_adds_it():
    tok = tokenizer()
    assert adds_bos(tok)
    seqs = sequences(tok, corpus(0), 32)
    assert seqs.shape[1] == 32 and (seqs[:, 0] == tok.bos_token_id).all()
    tok._tokenizer.post_processor = None  # a tokenizer that adds nothing (like SmolLM2's)
    assert not adds_bos(tok)
    plain = sequences(tok, corpus(0), 32)
    assert (plain[:, 0] != tok.bos_token_id).any()


def test_sequences_are_seeded_and_bounded():
    tok = tokenizer()
    a = sequences(tok, corpus(0), 32, max_tokens=32 * 5, seed=3, shuffle=True)
    b = sequences(tok, corpus(0), 32, max_tokens=32 * 5, seed=3, shuffle=True)
    c = sequences(tok, corpus(0), 32, max_tokens=32 * 5, seed=4, shuffle=True)
    assert a.shape == (5, 32) and torch.equal(a, b) and not torch.equal(a, c)


def test_default_text_splits_never_overlap():
    cal, ev = default_text("calibration"), default_text("evaluation")
    assert len(cal.docs) == 225 and len(ev.docs) > 100
    assert not {d.strip() for d in cal.docs} & {d.strip() for d in ev.docs}
    check_disjoint(cal, ev)
    with pytest.raises(WisparseError, match="shares"):
        check_disjoint(cal, Text(ev.docs + cal.docs[:1], "mixed"))


def test_too_short_and_empty_text(tmp_path):
    with pytest.raises(WisparseError, match="too short"):
        sequences(tokenizer(), Text(["tiny"], "t"), 64)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(WisparseError, match="empty"):
        load_text([str(tmp_path / "empty.txt")], "calibration")
    with pytest.raises(WisparseError, match="not found"):
        load_text([str(tmp_path / "missing.txt")], "calibration")
    (tmp_path / "folder").mkdir()
    with pytest.raises(WisparseError, match="no text files"):
        load_text([str(tmp_path / "folder")], "calibration")


# --- calibration --------------------------------------------------------------------------------------------------

def test_histogram_threshold_is_the_score_quantile():
    scores = torch.distributions.LogNormal(-1.0, 1.5).sample((200_000,), )
    stats = Stats(alphas=(0.0,))
    h = torch.histc(scores.log().clamp(LOG_LO, LOG_HI - 1e-6), bins=BINS, min=LOG_LO, max=LOG_HI).double()
    stats.hist["x"] = h[None]
    for s in (0.1, 0.5, 0.9, 0.99):
        exact = torch.quantile(scores[:100_000], s).item()
        assert stats.threshold("x", s, 0.0) == pytest.approx(exact, rel=0.02)
    assert stats.threshold("x", 0.0, 0.0) == 0.0


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_thresholds_hit_their_target_on_unseen_text(loaded, target):
    p = calibrate(loaded, corpus(1), target, method="wina", seq_len=64, tokens=64 * 24, progress=False)
    assert p.budget == pytest.approx(target, abs=1e-6)
    seqs = sequences(loaded.tokenizer, corpus(2), 64, max_tokens=64 * 16)
    apply(loaded.model, p)
    try:
        with torch.no_grad(), track_sparsity(loaded.model) as realized:
            loaded.model(input_ids=seqs, use_cache=False)
            per_layer = realized()
    finally:
        remove(loaded.model)
    overall = sum(per_layer[n] * p.layers[n].params for n in per_layer) / sum(p.layers[n].params for n in per_layer)
    assert overall == pytest.approx(target, abs=0.03)
    assert max(abs(v - target) for v in per_layer.values()) < 0.08


# --- plan contract ------------------------------------------------------------------------------------------------

def test_plan_round_trip(plan, tmp_path):
    path = save_plan(plan, tmp_path / "p.json")
    back = load_plan(path)
    assert back.to_dict() == plan.to_dict() and back.digest() == plan.digest()
    d = json.loads(path.read_text())
    assert d["format"] == "wisparse-plan" and d["version"] == 1 and d["method"] == "wina"
    lp = d["layers"]["model.layers.0.mlp.down_proj"]
    assert set(lp) == {"sparsity", "threshold", "alpha", "shape"} and lp["alpha"] == 1.0
    assert d["calibration"]["seq_len"] == 64 and d["model"]["fingerprint"].startswith("sha256:")


def test_written_artifacts_get_the_umask_modes_not_the_temp_files_private_ones(plan, tmp_path):
    """Files and folders are built under private temporary names; the published ones are readable as usual."""
    import os
    import stat

    from wisparse_export.files import atomic_dir

    old = os.umask(0o022)
    try:
        path = save_plan(plan, tmp_path / "p.json")
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "f.txt").write_text("x")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(path) == 0o644
    assert mode(tmp_path / "out") == mode(tmp_path / "out" / "sub") == 0o755
    assert mode(tmp_path / "out" / "sub" / "f.txt") == 0o644


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(format="other"), "not a wisparse plan"),
    (lambda d: d.update(version=2), "newer than this tool"),
    (lambda d: d.update(method="magic"), "method"),
    (lambda d: d.update(target_sparsity=1.5), "target_sparsity"),
    (lambda d: d.update(layers={}), "layers"),
    (lambda d: next(iter(d["layers"].values())).update(threshold=float("nan")), "threshold"),
    (lambda d: next(iter(d["layers"].values())).update(sparsity=-0.1), "sparsity"),
    (lambda d: next(iter(d["layers"].values())).pop("shape"), "shape"),
    (lambda d: d.update(groups=[["no.such.layer"]]), "groups"),
])
def test_plan_validation(plan, mutate, message):
    d = json.loads(json.dumps(plan.to_dict()))
    mutate(d)
    with pytest.raises(WisparseError, match=message):
        from_dict(d)


def test_plan_for_another_model_is_refused(plan):
    with pytest.raises(WisparseError, match="another model"):
        apply(tiny_model("qwen2"), plan)


# --- runtime ------------------------------------------------------------------------------------------------------

def test_apply_follows_the_plan_contract_and_remove_undoes_it(loaded, plan):
    model = loaded.model
    originals = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    apply(model, plan)
    mods = sparse_linears(model)
    assert set(mods) == set(plan.layers)
    name = "model.layers.1.mlp.down_proj"
    lp, mod = plan.layers[name], mods[name]
    x = torch.randn(3, 5, mod.in_features) * mod.tau.median() * 1.5  # straddles the thresholds
    w = mod.weight.double()
    keep = x.double().abs() * w.norm(dim=0) ** lp.alpha > lp.threshold  # the contract, verbatim
    ref = F.linear(x.double() * keep, w, None if mod.bias is None else mod.bias.double())
    torch.testing.assert_close(mod(x).double(), ref, rtol=1e-5, atol=1e-5)
    assert 0.2 < 1 - keep.double().mean().item() < 0.8
    remove(model)
    assert not sparse_linears(model)
    assert all(model.get_submodule(n) is m for n, m in originals.items())


def test_apply_twice_replaces_the_plan(loaded, plan):
    from wisparse_export.models import fingerprint

    before, keys = fingerprint(loaded.model), set(loaded.model.state_dict())
    apply(loaded.model, plan)
    assert fingerprint(loaded.model) == before  # the planned linears keep their parameter names
    apply(loaded.model, plan)  # passes the plan's model check again
    assert len(sparse_linears(loaded.model)) == len(plan.layers)
    assert all(type(m) is SparseLinear for m in sparse_linears(loaded.model).values())  # not applied twice over
    assert set(loaded.model.state_dict()) == keys
    remove(loaded.model)


def test_sparse_linear_with_zero_threshold_is_dense():
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16)
    want = lin(x)
    torch.testing.assert_close(SparseLinear.convert(lin, 0.0, 1.0)(x), want)


# --- CLI ----------------------------------------------------------------------------------------------------------

def test_cli_calibrate_and_evaluate(llama_dir, tmp_path, capsys):
    cal, ev = tmp_path / "cal.txt", tmp_path / "ev.txt"
    cal.write_text("\n".join(corpus(1).docs))
    ev.write_text("\n".join(corpus(2).docs))
    plan_path, report = tmp_path / "p.json", tmp_path / "r.json"
    code, out, err = run_cli(["calibrate", "--model", str(llama_dir), "--sparsity", "0.4", "--method", "teal",
                              "--calib-text", str(cal), "--seq-len", "64", "--calib-tokens", "1024", "--quiet",
                              "-o", str(plan_path)], capsys)
    assert code == 0, err
    assert load_plan(plan_path).method == "teal"
    code, out, err = run_cli(["evaluate", "--plan", str(plan_path), "--text", str(ev), "--seq-len", "64",
                              "--tokens", "1024", "--quiet", "--json", str(report)], capsys)
    assert code == 0, err
    r = json.loads(report.read_text())
    assert {"model", "method", "target_sparsity", "realized_sparsity", "ppl", "dense_ppl", "kl", "top1_agreement",
            "tokens"} <= set(r)
    assert r["tokens"] == 16 * 63 and r["kl"] > 0 and 0 < r["top1_agreement"] < 1
    assert abs(r["realized_sparsity"] - 0.4) < 0.05 and "sparse (teal)" in out
    # evaluating on the calibration text itself is refused
    code, _, err = run_cli(["evaluate", "--plan", str(plan_path), "--text", str(cal), "--seq-len", "64"], capsys)
    assert code == 2 and "shares" in err


def bad_inputs(tmp_path, llama_dir, plan):
    gpt2 = tmp_path / "gpt2"
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=260)).save_pretrained(gpt2)
    tokenizer().save_pretrained(gpt2)
    text = tmp_path / "t.txt"
    text.write_text("\n".join(corpus(1).docs))
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("a few words")
    good = save_plan(plan, tmp_path / "good.json")
    (tmp_path / "corrupt.json").write_text('{"format": "wisparse-plan", "version"')
    future = json.loads(good.read_text()) | {"version": 99}
    (tmp_path / "future.json").write_text(json.dumps(future))
    other = save_tiny("qwen2", tmp_path / "qwen2")
    m = ["--model", str(llama_dir)]
    cal = ["calibrate", "--quiet", "--seq-len", "64", "--calib-tokens", "512", "--method", "teal"]
    ev = ["evaluate", "--quiet", "--seq-len", "64", "--tokens", "512", "--text", str(text)]
    out = tmp_path / "out.json"
    return {
        "missing model": ([*cal, "--model", str(tmp_path / "nope"), "--sparsity", "0.5", "--calib-text", str(text),
                           "-o", str(out)], "not found"),
        "no sparsifiable linears": ([*cal, "--model", str(gpt2), "--sparsity", "0.5", "--calib-text", str(text),
                                     "-o", str(out)], "no decoder blocks with linear layers"),
        "sparsity 1": ([*cal, *m, "--sparsity", "1", "--calib-text", str(text), "-o", str(out)], "sparsity"),
        "sparsity -0.1": ([*cal, *m, "--sparsity", "-0.1", "--calib-text", str(text), "-o", str(out)], "sparsity"),
        "empty text": ([*cal, *m, "--sparsity", "0.5", "--calib-text", str(tmp_path / "empty.txt"), "-o", str(out)],
                       "empty"),
        "short text": ([*cal, *m, "--sparsity", "0.5", "--calib-text", str(tmp_path / "short.txt"), "-o", str(out)],
                       "too short"),
        "unwritable output": ([*cal, *m, "--sparsity", "0.5", "--calib-text", str(text),
                               "-o", str(tmp_path / "no" / "dir" / "p.json")], "does not exist"),
        "output under a file": ([*cal, *m, "--sparsity", "0.5", "--calib-text", str(text),
                                 "-o", str(text / "p.json")], "cannot write"),
        "corrupt plan": ([*ev, "--plan", str(tmp_path / "corrupt.json"), "--json", str(out)], "not valid JSON"),
        "future plan": ([*ev, "--plan", str(tmp_path / "future.json"), "--json", str(out)], "newer"),
        "missing plan": ([*ev, "--plan", str(tmp_path / "none.json"), "--json", str(out)], "not found"),
        "mismatched plan": ([*ev, "--model", str(other), "--plan", str(good), "--json", str(out)], "another model"),
    }


CASES = ["missing model", "no sparsifiable linears", "sparsity 1", "sparsity -0.1", "empty text", "short text",
         "unwritable output", "output under a file", "corrupt plan", "future plan", "missing plan", "mismatched plan"]


@pytest.mark.parametrize("case", CASES)
def test_cli_bad_input_is_one_line_exit_2_no_output(case, tmp_path, llama_dir, plan, capsys):
    argv, message = bad_inputs(tmp_path, llama_dir, plan)[case]
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "out.json").exists()
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_realized_sparsity_is_parameter_weighted(plan):
    from wisparse_export.evaluate import weighted_sparsity

    names = list(plan.layers)[:2]
    per = {names[0]: 0.0, names[1]: 1.0}
    p0, p1 = plan.layers[names[0]].params, plan.layers[names[1]].params
    assert weighted_sparsity(per, plan) == pytest.approx(p1 / (p0 + p1))
    assert not math.isnan(plan.budget)
