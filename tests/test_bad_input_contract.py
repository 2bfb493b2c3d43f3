"""Bad input gets one line and exit 2, never a silent wrong answer: plans made for other weights, malformed plan
fields, evaluation text that calibration saw, corrupt or unreachable models, impossible lengths."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
import torch
from _plans import run_cli, save_tiny, tokenizer, write_plan

from wisparse_export import apply, data, models, remove
from wisparse_export.errors import WisparseError
from wisparse_export.plan import load_plan, save_plan

WORDS = ("river stone market lantern copper window harvest engine quiet orchard signal paper winter garden "
         "ladder violet canal thunder meadow pocket silver anchor").split()


def prose(seed: int, n_docs: int = 30, words: int = 80) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (words,), generator=g).tolist())
            for _ in range(n_docs)]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Two model folders of the same architecture and shapes, different weights; a plan (with weight values) for
    the first; calibration and evaluation text files."""
    root = tmp_path_factory.mktemp("contract")
    a, b = save_tiny("llama", root / "a", seed=0), save_tiny("llama", root / "b", seed=1)
    loaded = models.load_model(str(a), device="cpu")
    (root / "cal.txt").write_text("\n".join(prose(1)))
    (root / "ev.txt").write_text("\n".join(prose(2)))
    path = write_plan(loaded, root / "plan.json")
    plan = load_plan(path)
    plan.model = models.model_section(loaded, plan.layers)
    plan.calibration["sources"] = [str(root / "cal.txt")]
    save_plan(plan, path)
    return {"root": root, "a": a, "b": b, "loaded": loaded, "plan": path}


def plan_dict(env) -> dict:
    return json.loads(env["plan"].read_text())


def write(env, tmp_path, d: dict) -> str:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(d))
    return str(path)


def first_layer(d: dict) -> dict:
    return next(iter(d["layers"].values()))


def bad_plan(mutate):
    def make(env, tmp_path):
        d = plan_dict(env)
        mutate(d)
        return ["--plan", write(env, tmp_path, d)]
    return make


def duplicated_threshold(env, tmp_path):
    """One duplicated "threshold" key: json.loads would keep the last (0.0: fully dense, or huge: fully sparse)."""
    text = env["plan"].read_text()
    name = next(iter(plan_dict(env)["layers"]))
    head, tail = text.split(json.dumps(name), 1)
    tail = tail.replace('"threshold": ', '"threshold": 1e30, "threshold": ', 1)
    path = tmp_path / "p.json"
    path.write_text(head + json.dumps(name) + tail)
    return ["--plan", str(path)]


def appended_line(env, tmp_path):
    """Evaluation text: the calibration file with one line added (whole-document hashes do not match)."""
    ev = tmp_path / "ev.txt"
    ev.write_text((env["root"] / "cal.txt").read_text() + "\none more line at the end\n")
    return ["--plan", str(env["plan"]), "--text", str(ev)]


def default_corpus_file(env, tmp_path):
    """A plan calibrated on the embedded corpus, evaluated on the corpus file that holds those articles."""
    d = plan_dict(env)
    d["calibration"]["sources"] = None
    return ["--plan", write(env, tmp_path, d), "--text", str(data.default_text_dir() / "lee_background.cor")]


def lm_head(env, tmp_path):
    d = plan_dict(env)
    d["layers"]["lm_head"] = {"sparsity": 0.5, "threshold": 0.1, "alpha": 1.0, "shape": [260, 64]}
    d["model"]["weights"]["lm_head"] = [0.0] * 8
    return ["--plan", write(env, tmp_path, d)]


def other_weights(env, tmp_path):
    return ["--plan", str(env["plan"]), "--model", str(env["b"])]


def empty_config(env, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return ["--plan", str(env["plan"]), "--model", str(folder)]


CASES = {
    "same shapes, other weights": (other_weights, "another model"),
    "duplicated threshold key": (duplicated_threshold, "duplicate key 'threshold'"),
    "threshold overflows float32": (bad_plan(lambda d: first_layer(d).update(threshold=1e39)), "threshold"),
    "target_sparsity 1.0": (bad_plan(lambda d: d.update(target_sparsity=1.0)), "target_sparsity"),
    "layer sparsity 1.0": (bad_plan(lambda d: first_layer(d).update(sparsity=1.0)), "sparsity"),
    "non-string model.source": (bad_plan(lambda d: d["model"].update(source=5)), "model.source"),
    "calibration.sources a string": (bad_plan(lambda d: d["calibration"].update(sources="cal.txt")),
                                     "calibration.sources"),
    "calibration.sources not strings": (bad_plan(lambda d: d["calibration"].update(sources=[1])),
                                        "calibration.sources"),
    "nested groups": (bad_plan(lambda d: d.update(groups=[[d["groups"][0]]])), "groups[0]"),
    "a linear in two groups": (bad_plan(lambda d: d.update(groups=[d["groups"][0], d["groups"][0][:1]])),
                               "groups[1]"),
    "model.weights ill-typed": (bad_plan(lambda d: d["model"].update(weights={"x": [1.0]})), "model.weights"),
    "model.weights short": (bad_plan(lambda d: next(iter(d["model"]["weights"].values())).pop()), "model.weights"),
    "lm_head planned": (lm_head, "not inside a decoder block"),
    "evaluation = calibration file + one line": (appended_line, "shares"),
    "default corpus file as evaluation text": (default_corpus_file, "shares"),
    "config.json is {}": (empty_config, "model_type"),
    "--tokens 0": (lambda env, tmp_path: ["--plan", str(env["plan"]), "--tokens", "0"], "tokens"),
    "--tokens -5": (lambda env, tmp_path: ["--plan", str(env["plan"]), "--tokens", "-5"], "tokens"),
    "--seq-len 4": (lambda env, tmp_path: ["--plan", str(env["plan"]), "--seq-len", "4"], "too short"),
    "--seq-len beyond the context": (lambda env, tmp_path: ["--plan", str(env["plan"]), "--seq-len", "257"],
                                     "beyond the model's context of 256"),
}


def digests(folder) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error(capsys, argv: list[str], message: str) -> None:
    capsys.readouterr()
    code = run_cli(*argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note: ")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


@pytest.mark.parametrize("case", list(CASES))
def test_evaluate_refuses_in_one_line(case, env, tmp_path, capsys):
    make, message = CASES[case]
    argv = make(env, tmp_path)
    base = ["evaluate", "--model", str(env["a"]), "--seq-len", "64", "--tokens", "512", "--quiet",
            "--json", str(tmp_path / "out.json")]
    if "--text" not in argv:
        base += ["--text", str(env["root"] / "ev.txt")]
    before, mine = digests(env["root"]), digests(tmp_path)
    one_error(capsys, base + argv, message)  # later options win: argv overrides the defaults above
    assert not (tmp_path / "out.json").exists() and not list(tmp_path.rglob("*.tmp"))
    assert digests(env["root"]) == before and digests(tmp_path) == mine


def test_the_plan_is_accepted_on_its_own_model(env, tmp_path, capsys):
    capsys.readouterr()
    code = run_cli("evaluate", "--model", str(env["a"]), "--plan", str(env["plan"]), "--text",
                   str(env["root"] / "ev.txt"), "--seq-len", "64", "--tokens", "512", "--quiet",
                   "--json", str(tmp_path / "r.json"))
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "r.json").read_text())["tokens"] == 8 * 63


def test_apply_refuses_a_plan_made_on_other_weights(env):
    plan = load_plan(env["plan"])
    other = models.load_model(str(env["b"]), device="cpu").model
    assert models.fingerprint(other) == plan.model["fingerprint"]  # names and shapes alone cannot tell
    with pytest.raises(WisparseError, match="another model .*first model.layers.0"):
        apply(other, plan)
    model = env["loaded"].model
    try:
        apply(model, plan)  # the plan's own model, in another dtype too: the same weights
        models.check_plan(model.to(torch.bfloat16), plan)
    finally:
        remove(model).float()


def test_a_plan_without_weight_values_loads_and_says_so_once(env, capsys):
    d = plan_dict(env)
    del d["model"]["weights"]
    from wisparse_export.plan import from_dict

    plan = from_dict(d)
    capsys.readouterr()
    models._said_unchecked.cache_clear()
    models.check_plan(env["loaded"].model, plan)
    models.check_plan(env["loaded"].model, plan)
    err = capsys.readouterr().err
    assert err.count("note: ") == 1 and "not content" in err
    other = models.load_model(str(env["b"]), device="cpu").model
    models.check_plan(other, plan)  # by names and shapes only: this is what the note warns about


def test_scores_tau_does_not_overflow():
    from wisparse_export.scores import tau

    for alpha in (0.0, 1.0):
        t = tau(1e39, torch.ones(4), alpha)
        assert t.dtype == torch.float32 and torch.isinf(t).all()


def test_overlap_detection_is_fine_grained_and_spares_disjoint_text():
    cal, ev = data.default_text("calibration"), data.default_text("evaluation")
    start = time.perf_counter()
    data.check_disjoint(cal, ev)  # the embedded split shares no passage
    assert time.perf_counter() - start < 5
    data.check_disjoint(data.Text(prose(1), "a"), data.Text(prose(2), "b"))
    whole = data.Text(["\n".join(cal.docs[:3] + ev.docs)], "one file")  # articles inside a larger document
    with pytest.raises(WisparseError, match=r"shares \d+ of its \d+ words .* e\.g\. \"") as e:
        data.check_disjoint(cal, whole)
    assert "\n" not in str(e.value)
    paragraph = " ".join(cal.docs[10].split()[:60])  # one paragraph quoted inside an unrelated document
    with pytest.raises(WisparseError, match="shares"):
        data.check_disjoint(cal, data.Text(prose(3)[:5] + [prose(4)[0] + " " + paragraph], "quote"))
    data.check_disjoint(cal, data.Text(ev.docs + [" ".join(cal.docs[10].split()[:20])], "a sentence"))


class Counting:
    """A tokenizer that records how many characters each call was given."""

    def __init__(self, tok):
        self.tok, self.calls = tok, []

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def __call__(self, text, **kwargs):
        self.calls.append(len(text))
        return self.tok(text, **kwargs)


def test_sequences_tokenize_only_what_they_use():
    tok = Counting(tokenizer())
    huge = data.Text([" ".join(prose(5, n_docs=1, words=400_000))], "one 2.6 MB line")
    assert data.sequences(tok, huge, 64, 256).shape == (4, 64)
    assert max(tok.calls) <= data.WINDOW and sum(tok.calls) <= 2 * data.WINDOW
    tok.calls.clear()
    long = data.Text([" ".join(prose(6, n_docs=1, words=30_000))], "a document over WINDOW characters")
    assert len(long.docs[0]) > 2 * data.WINDOW
    windowed = data.sequences(tok, long, 64)
    assert max(tok.calls) <= data.WINDOW
    whole = torch.tensor(tok.tok(long.docs[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    n = len(whole) // 63
    assert torch.equal(windowed[:, 1:], whole[: n * 63].view(n, 63))


def test_corrupt_gguf_is_one_line(tmp_path):
    gguf = models.default_gguf()
    cut = tmp_path / "half.gguf"
    with open(gguf, "rb") as f:
        cut.write_bytes(f.read(gguf.stat().st_size // 2))
    with pytest.raises(WisparseError, match="cut short or corrupt"):
        models.load_model(str(cut), device="cpu", progress=False)


@pytest.mark.parametrize("how", ["offline mode", "unreachable hub"])
def test_hub_id_fails_fast_without_network(how, monkeypatch):
    from huggingface_hub import constants

    if how == "offline mode":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        expected = "offline mode"
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
        for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            monkeypatch.delenv(var, raising=False)
        expected = "cannot be reached"
    start = time.perf_counter()
    with pytest.raises(WisparseError, match=f"not in the local cache.*{expected}"):
        models.load_model("no-such-org/no-such-model", device="cpu", progress=False)
    assert time.perf_counter() - start < 2 * models.PROBE_S + 5


def test_plot_refuses_an_unknown_image_format(env, tmp_path, capsys):
    one_error(capsys, ["plot", str(env["plan"]), "-o", str(tmp_path / "alloc.xyz")], "not an image format")
    assert not list(tmp_path.iterdir())
