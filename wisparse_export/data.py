"""Calibration and evaluation text: files, folders, a Hugging Face dataset, or the embedded default corpus.

Text becomes fixed-length token sequences. Each sequence starts with BOS when the tokenizer adds one by itself
(Gemma-family models degrade badly without it). Calibration and evaluation never share a document.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import WisparseError

TEXT_SUFFIXES = {".txt", ".text", ".md", ".cor", ".rst"}
SPLITS = ("calibration", "evaluation")


@dataclass
class Text:
    docs: list[str]
    description: str  # recorded in plans and reports
    sources: list[str] | None = None  # what the user passed (None: the default corpus); lets evaluate re-read it

    @property
    def digests(self) -> set[str]:
        return {hashlib.sha256(d.strip().encode()).hexdigest()[:16] for d in self.docs if d.strip()}


def recipe(name: str = "default_text") -> dict:
    return json.loads(importlib.resources.files("wisparse_export.recipes").joinpath(f"{name}.json").read_text())


def default_text_dir() -> Path:
    """gensim's test_data folder, found without importing gensim (slow, and unneeded for two text files)."""
    env = os.environ.get("WISPARSE_TEXT_DIR")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.origin:
        raise WisparseError("the embedded default text needs the package gensim (pip install gensim), "
                            "or pass your own text with --calib-text/--text")
    return Path(spec.origin).parent / "test" / "test_data"


def default_text(split: str) -> Text:
    r = recipe()
    docs: list[str] = []
    parts = []
    for part in r[split]:
        path = default_text_dir() / part["file"]
        if not path.is_file():
            raise WisparseError(f"default text file missing: {path}")
        lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        first, last = part.get("first", 0), part.get("last", len(lines))
        docs += lines[first:last]
        parts.append(f"{part['file']}[{first}:{last}]")
    return Text(docs, f"default:{r['name']}:{split}:" + "+".join(parts))


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise WisparseError(f"folder {path} has no text files ({', '.join(sorted(TEXT_SUFFIXES))})")
        return files
    raise WisparseError(f"text not found: {path}")


def hf_dataset(spec: str, split: str) -> Text:
    """'hf:NAME[:CONFIG]': train split for calibration, test (or validation) for evaluation; column 'text'."""
    try:
        import datasets
    except ImportError as e:
        raise WisparseError(f"text {spec} needs the package datasets (pip install datasets)") from e
    name, _, config = spec[3:].partition(":")
    want = ["train"] if split == "calibration" else ["test", "validation"]
    last = None
    for s in want:
        try:
            ds = datasets.load_dataset(name, config or None, split=s)
            return Text([t for t in ds["text"] if t.strip()], f"{spec}:{s}")
        except Exception as e:  # noqa: BLE001 - any failure to reach a dataset is the user's to fix
            last = e
    raise WisparseError(f"cannot load dataset {spec}: {str(last).splitlines()[0] if last else 'no split'}")


def load_text(sources: list[str] | None, split: str) -> Text:
    """Documents from the sources (files, folders, hf:NAME[:CONFIG]), or the default corpus's split."""
    if split not in SPLITS:
        raise ValueError(split)
    if not sources:
        return default_text(split)
    docs: list[str] = []
    described = []
    for src in sources:
        if src.startswith("hf:"):
            t = hf_dataset(src, split)
            docs += t.docs
            described.append(t.description)
            continue
        for f in _files(Path(src)):
            try:
                docs.append(f.read_text(encoding="utf-8"))
            except UnicodeDecodeError as e:
                raise WisparseError(f"text file {f} is not UTF-8 text") from e
        described.append(src)
    if not any(d.strip() for d in docs):
        raise WisparseError(f"text is empty: {', '.join(sources)}")
    return Text(docs, "+".join(described), list(sources))


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front by itself: then every sequence must start with it too."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def sequences(tokenizer, text: Text, seq_len: int, max_tokens: int | None = None, seed: int = 0,
              shuffle: bool = False) -> torch.Tensor:
    """[n, seq_len] token ids: documents joined by EOS, cut into chunks, BOS first where the tokenizer wants it.

    At most max_tokens // seq_len sequences; shuffle (seeded) picks a random subset instead of the first ones.
    """
    if seq_len < 8:
        raise WisparseError(f"sequence length {seq_len} is too short (at least 8)")
    bos = adds_bos(tokenizer)
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for d in text.docs:
        if d.strip():
            stream += tokenizer(d, add_special_tokens=False)["input_ids"]
            if eos is not None:
                stream.append(eos)
    body = seq_len - 1 if bos else seq_len
    n = len(stream) // body
    if n == 0:
        raise WisparseError(f"text is too short: {len(stream)} tokens, need at least {body} for one sequence "
                            f"of {seq_len} ({text.description})")
    chunks = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    if bos:
        chunks = torch.cat([torch.full((n, 1), tokenizer.bos_token_id, dtype=torch.long), chunks], dim=1)
    if shuffle:
        chunks = chunks[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]
    if max_tokens is not None:
        chunks = chunks[: max(1, max_tokens // seq_len)]
    return chunks


def check_disjoint(calibration: Text, evaluation: Text) -> None:
    """Evaluation on text calibration saw would flatter every figure: refuse it."""
    shared = calibration.digests & evaluation.digests
    if shared:
        raise WisparseError(f"evaluation text shares {len(shared)} document(s) with the calibration text "
                            f"({calibration.description}); evaluate on text calibration did not see")


def reload_calibration(settings: dict) -> Text | None:
    """The text a plan was calibrated on, if it can still be read (to refuse evaluating on it); else None."""
    try:
        return load_text(settings.get("sources"), "calibration")
    except WisparseError:
        return None
