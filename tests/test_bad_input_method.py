"""Bad input to the method: stale or broken search checkpoints are never resumed silently, and calibration
token counts or sequence lengths that would silently mean something else are refused in one line."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch
from _plans import run_cli, save_tiny, tiny_model, tokenizer

from wisparse_export import pipeline, search
from wisparse_export.config import CalibrationConfig, SearchConfig
from wisparse_export.data import Text
from wisparse_export.errors import WisparseError
from wisparse_export.models import Loaded, find_blocks

SEARCH = replace(SearchConfig.preset("fast"), seq_len=32, intra_tokens=64, screen_tokens=64, rank_tokens=128,
                 population=3, generations=3, offspring=3, survivors=1, unit_step=0.5, level_step=0.1)
WORDS = ("the committee met on tuesday to discuss the budget for the coming year members argued about roads "
         "schools and the cost of water after four hours they agreed to meet again next week").split()


def corpus(seed: int) -> Text:
    g = torch.Generator().manual_seed(seed)
    docs = [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (60,), generator=g).tolist()) for _ in range(30)]
    return Text(docs, f"prose-{seed}")


def loaded(seed: int) -> Loaded:
    model = tiny_model("llama", seed)
    return Loaded(model=model, tokenizer=tokenizer(), source="tiny-llama", blocks=find_blocks(model))


@pytest.fixture(scope="module")
def models():
    return {0: loaded(0), 1: loaded(1)}  # same names and shapes (same fingerprint), other weights


def plan(model: Loaded, text: Text, checkpoint=None) -> dict:
    """The wisparse plan as JSON, without what a resumed run legitimately differs in (times, evaluation counts)."""
    p = pipeline.calibrate(model, text, 0.4, method="wisparse", seq_len=64, tokens=64 * 12, search=SEARCH,
                           checkpoint=checkpoint, progress=False).to_dict()
    for t in p["search"]["trace"]:
        del t["seconds"], t["evaluations"]
    del p["search"]["seconds"]
    return p


@contextmanager
def interrupted_after(generation: int):
    """The search stops (as on Ctrl-C) once it has written its checkpoint for `generation`."""
    orig = search.write_json

    def write(path, obj):
        orig(path, obj)
        if obj["generation"] == generation:
            raise KeyboardInterrupt

    search.write_json = write
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        search.write_json = orig


def leave_checkpoint(model: Loaded, text: Text, path) -> None:
    with interrupted_after(1):
        plan(model, text, path)
    assert json.loads(path.read_text())["generation"] == 1


def checkpoint_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if "checkpoint" in ln]


def test_matching_checkpoint_resumes(models, tmp_path, capsys):
    ckpt = tmp_path / "p.json.search.json"
    full = plan(models[0], corpus(1))
    leave_checkpoint(models[0], corpus(1), ckpt)
    capsys.readouterr()
    resumed = plan(models[0], corpus(1), ckpt)
    lines = checkpoint_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "resuming from generation 1" in lines[0]
    assert resumed == full
    assert not ckpt.exists()  # a finished search removes its checkpoint


@pytest.mark.parametrize("stale", ["other weights", "other text"])
def test_stale_checkpoint_is_not_resumed(stale, models, tmp_path, capsys):
    """Same layer names, shapes, token count, target and settings: only the weights or the text differ."""
    ckpt = tmp_path / "p.json.search.json"
    leave_checkpoint(models[1] if stale == "other weights" else models[0],
                     corpus(1) if stale == "other weights" else corpus(2), ckpt)
    capsys.readouterr()
    got = plan(models[0], corpus(1), ckpt)
    lines = checkpoint_lines(capsys.readouterr().err)
    part = "weights" if stale == "other weights" else "calibration tokens"
    assert len(lines) == 1 and "starting the search fresh" in lines[0] and part in lines[0], lines
    assert "resuming" not in lines[0]
    assert got == plan(models[0], corpus(1))


BROKEN = {
    "not JSON": b'{"key": {"weights": ',
    "not UTF-8": b"\xff\xfe\x00garbage",
    "a JSON list": b"[1, 2, 3]",
    "an object without a key": b'{"generation": 1}',
    "an older format": b'{"key": "0123456789abcdef", "generation": 1, "population": []}',
    "duplicate keys": b'{"key": 1, "key": 2}',
}


@pytest.mark.parametrize("case", [*BROKEN, "incomplete"])
def test_broken_checkpoint_starts_fresh(case, models, tmp_path, capsys):
    ckpt = tmp_path / "p.json.search.json"
    if case == "incomplete":  # the right key, but a field the search reads is gone
        leave_checkpoint(models[0], corpus(1), ckpt)
        state = json.loads(ckpt.read_text())
        del state["population"]
        ckpt.write_text(json.dumps(state))
    else:
        ckpt.write_bytes(BROKEN[case])
    capsys.readouterr()
    got = plan(models[0], corpus(1), ckpt)
    err = capsys.readouterr().err
    lines = checkpoint_lines(err)
    assert len(lines) == 1 and "starting the search fresh" in lines[0] and "Traceback" not in err, err
    assert got == plan(models[0], corpus(1))
    assert not ckpt.exists()


def test_library_refuses_token_counts_and_lengths_that_mean_something_else(models):
    m = models[0]
    for tokens in (0, -64, 10):
        with pytest.raises(WisparseError, match="calibration tokens"):
            pipeline.calibrate(m, corpus(1), 0.5, method="teal", seq_len=64, tokens=tokens, progress=False)
    with pytest.raises(WisparseError, match="beyond the model's context"):
        pipeline.calibrate(m, corpus(1), 0.5, method="teal", seq_len=512, tokens=4096, progress=False)
    with pytest.raises(WisparseError, match="unknown method"):
        CalibrationConfig.preset(method="magic")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("llama"))  # max_position_embeddings 256


CLI_CASES = {
    "calib-tokens 0": (["--calib-tokens", "0", "--seq-len", "64"], "calibration tokens"),
    "calib-tokens negative": (["--calib-tokens", "-512", "--seq-len", "64"], "calibration tokens"),
    "calib-tokens below one sequence": (["--calib-tokens", "10", "--seq-len", "64"], "fewer than one sequence"),
    "seq-len too short": (["--calib-tokens", "512", "--seq-len", "4"], "too short"),
    "seq-len beyond the context": (["--calib-tokens", "4096", "--seq-len", "1024"], "beyond the model's context"),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_bad_tokens_and_seq_len(case, llama_dir, tmp_path, capsys):
    args, message = CLI_CASES[case]
    text = tmp_path / "t.txt"
    text.write_text("\n".join(corpus(1).docs * 4))
    out = tmp_path / "p.json"
    capsys.readouterr()
    code = run_cli("calibrate", "--model", str(llama_dir), "--sparsity", "0.5", "--method", "teal", "--calib-text",
                   str(text), *args, "-o", str(out), "--quiet")
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
