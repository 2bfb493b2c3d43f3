"""Calibration and evaluation text: files, folders, a Hugging Face dataset, a built-in text, or the embedded
default corpus.

Text becomes fixed-length token sequences. Each sequence starts with BOS when the tokenizer adds one by itself
(Gemma-family models degrade badly without it). Calibration and evaluation never share text: passages of
SHINGLE words are compared, so a document copied with a line added, or a file holding the calibration documents
among others, is caught too.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import WisparseError

TEXT_SUFFIXES = {".txt", ".text", ".md", ".cor", ".rst"}
SPLITS = ("calibration", "evaluation")
SHINGLE = 13           # words per compared passage: long enough that disjoint prose never shares one by chance
MIN_SHARED = 50        # evaluation words inside shared passages before the texts count as overlapping
POOL = 1 << 20         # tokens: a shuffled draw picks its sequences among the chunks of the first POOL
WINDOW = 1 << 16       # characters of a long document tokenized in one call (memory grows ~400 bytes a character)
WORD = re.compile(r"\w+")


@dataclass
class Text:
    docs: list[str]
    description: str  # recorded in plans and reports
    sources: list[str] | None = None  # what the user passed (None: the default corpus); lets evaluate re-read it


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


def builtin_text(spec: str) -> Text:
    """'builtin:pydoc': the Python reference documentation's topics (technical prose, `pydoc_data.topics` of the
    standard library, always installed), one document per topic: a second domain, unlike the news corpus."""
    if spec != "builtin:pydoc":
        raise WisparseError(f"unknown built-in text {spec!r}; choose builtin:pydoc")
    import pydoc_data.topics  # standard library; only this source needs it

    topics = pydoc_data.topics.topics
    return Text([topics[k] for k in sorted(topics)], f"{spec}:python-{sys.version_info[0]}.{sys.version_info[1]}",
                [spec])


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
        if src.startswith(("hf:", "builtin:")):
            t = hf_dataset(src, split) if src.startswith("hf:") else builtin_text(src)
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


def check_lengths(seq_len: int, max_tokens: int | None, context: int | None = None) -> None:
    """Sequence length and token count a run can use: at least 8 tokens a sequence, within the model's context."""
    if seq_len < 8:
        raise WisparseError(f"sequence length {seq_len} is too short (at least 8)")
    if context is not None and seq_len > context:
        raise WisparseError(f"sequence length {seq_len} is beyond the model's context of {context} positions")
    if max_tokens is not None and max_tokens <= 0:
        raise WisparseError(f"number of tokens must be positive, got {max_tokens}")


def _doc_tokens(tokenizer, doc: str, want: int | None) -> list[int]:
    """Token ids of a document, WINDOW characters at a time (cut before a space or line break) and only until
    `want` tokens are there: a 5 MB line costs neither gigabytes nor the time to tokenize what is not used.
    A document up to WINDOW characters is tokenized in one call, as always."""
    ids: list[int] = []
    start = 0
    while start < len(doc) and (want is None or len(ids) < want):
        end = len(doc)
        if end - start > WINDOW:
            lo, hi = start + WINDOW // 2, start + WINDOW
            end = max(doc.rfind(" ", lo, hi), doc.rfind("\n", lo, hi))
            end = end if end > 0 else hi
        ids += tokenizer(doc[start:end], add_special_tokens=False)["input_ids"]
        start = end
    return ids


def sequences(tokenizer, text: Text, seq_len: int, max_tokens: int | None = None, seed: int = 0,
              shuffle: bool = False) -> torch.Tensor:
    """[n, seq_len] token ids: documents joined by EOS, cut into chunks, BOS first where the tokenizer wants it.

    At most max_tokens // seq_len sequences (at least one): the first ones, or with shuffle a seeded random subset
    of the chunks within the first POOL tokens (more if it needs more). Only the text needed is tokenized.
    """
    check_lengths(seq_len, max_tokens)
    bos = adds_bos(tokenizer)
    eos = tokenizer.eos_token_id
    body = seq_len - 1 if bos else seq_len
    count = None if max_tokens is None else max(1, max_tokens // seq_len)
    need = None if count is None else max(count * body, POOL if shuffle else 0)
    stream: list[int] = []
    for d in text.docs:
        if need is not None and len(stream) >= need:
            break
        if d.strip():
            stream += _doc_tokens(tokenizer, d, None if need is None else need - len(stream))
            if eos is not None:
                stream.append(eos)
    n = min(len(stream), need if need is not None else len(stream)) // body
    if n == 0:
        raise WisparseError(f"text is too short: {len(stream)} tokens, need at least {body} for one sequence "
                            f"of {seq_len} ({text.description})")
    chunks = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    if bos:
        chunks = torch.cat([torch.full((n, 1), tokenizer.bos_token_id, dtype=torch.long), chunks], dim=1)
    if shuffle:
        chunks = chunks[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]
    return chunks if count is None else chunks[:count]


def _shingles(docs: list[str]) -> Iterator[tuple[int, int, int]]:
    """(hash, document, word index) of every run of SHINGLE words (lower case, punctuation and spacing ignored)."""
    for i, d in enumerate(docs):
        words = WORD.findall(d.lower())
        for j in range(len(words) - SHINGLE + 1):
            yield hash(" ".join(words[j: j + SHINGLE])), i, j


def check_disjoint(calibration: Text, evaluation: Text) -> None:
    """Evaluation on text calibration saw would flatter every figure: refuse shared passages of SHINGLE words
    covering MIN_SHARED words or more of the evaluation text, naming one of them.

    Memory is a set of hashes of the smaller text; the larger one is only streamed.
    """
    cal_small = sum(map(len, calibration.docs)) <= sum(map(len, evaluation.docs))
    small, large = (calibration, evaluation) if cal_small else (evaluation, calibration)
    seen = {h for h, _, _ in _shingles(small.docs)}
    shared = {h for h, _, _ in _shingles(large.docs) if h in seen}
    if not shared:
        return
    covered, first, end = 0, None, (-1, 0)  # evaluation words inside shared passages; the first passage
    for h, i, j in _shingles(evaluation.docs):
        if h in shared:
            covered += j + SHINGLE - (max(j, end[1]) if end[0] == i else j)
            first, end = first or (i, j), (i, j + SHINGLE)
    total = sum(len(WORD.findall(d)) for d in evaluation.docs)
    if covered < min(MIN_SHARED, total // 10 + 1):
        return
    i, j = first
    snippet = " ".join(WORD.findall(evaluation.docs[i].lower())[j: j + SHINGLE])
    raise WisparseError(f"evaluation text shares {covered} of its {total} words with the calibration text "
                        f"({calibration.description}), e.g. \"{snippet}\"; evaluate on text calibration did not see")


def reload_calibration(settings: dict) -> Text | None:
    """The text a plan was calibrated on, if it can still be read (to refuse evaluating on it); else None."""
    try:
        return load_text(settings.get("sources"), "calibration")
    except WisparseError:
        return None
