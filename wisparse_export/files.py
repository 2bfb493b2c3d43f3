"""Atomic artifact writes: a reader never sees a half-written file, a failure leaves nothing behind."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

from .errors import WisparseError


def _writable_parent(path: Path) -> Path:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise WisparseError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise WisparseError(f"cannot write {path}: folder {parent} is not writable")
    return parent


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early (before minutes of work) if the output's folder cannot take a new file."""
    path = Path(path)
    _writable_parent(path)
    if path.is_dir():
        raise WisparseError(f"cannot write {path}: it is a folder")
    return path


def _publish_modes(root: Path) -> None:
    """mkstemp / mkdtemp make private entries (0600 / 0700); what we publish gets the modes the umask gives."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [root, *root.rglob("*")] if root.is_dir() else [root]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_path) then rename tmp_path onto path; remove the temporary file on any failure."""
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        _publish_modes(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:
        raise ValueError(f"duplicate key {dup!r}")
    return dict(pairs)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str, what: str) -> dict:
    """Strict JSON object: no duplicate keys (the last one would win silently), no NaN/Infinity, bounded nesting."""
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise WisparseError(f"{what} is not valid JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError is a ValueError
        raise WisparseError(f"{what} is not valid JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(obj, dict):
        raise WisparseError(f"{what} is not a JSON object")
    return obj


def read_json(path: str | os.PathLike, what: str) -> dict:
    """`parse_json` of a file; a missing, unreadable or non-UTF-8 file is one line too."""
    path = Path(path)
    if not path.is_file():
        raise WisparseError(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise WisparseError(f"cannot read {what} {path}: {str(e).splitlines()[0]}") from None
    return parse_json(text, f"{what} {path}")


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_atomic(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n"))


def _temp_prefix(path: Path) -> str:
    """Our temporaries beside `path` carry the writer's process id, so a later run can tell stale ones."""
    return f".{path.name}.wisparse-{os.getpid()}-"


def clean_stale(path: str | os.PathLike) -> list[Path]:
    """Remove temporary folders of ours beside `path` whose process is gone (a killed export); returns them."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    removed = []
    for p in sorted(parent.glob(f".{glob.escape(path.name)}.wisparse-*")):
        pid = p.name[len(path.name) + len(".."):].removeprefix("wisparse-").split("-")[0]
        if p.suffix in (".tmp", ".old") and p.is_dir() and not p.is_symlink() and pid.isdigit() \
                and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextmanager
def atomic_dir(path: str | os.PathLike, replaces: Iterable[str] = ()):
    """Build a folder under a temporary name beside `path` and move it into place only on success.

    A new `path` is renamed into place whole. Into an existing `path`, the entries built are moved one by one,
    `manifest.json` last; the entries named in `replaces` are moved out first (and deleted at the end); any other
    entry of `path` is left untouched, and the caller must not build one with its name. A failure leaves the old
    entries in place.
    """
    path = Path(path)
    parent = _writable_parent(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=parent))
    try:
        yield tmp
        _publish_modes(tmp)
        if path.exists():
            _swap_entries(path, tmp, set(replaces))
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_entries(path: Path, tmp: Path, replaces: set[str]) -> None:
    new = sorted(p.name for p in tmp.iterdir())
    clash = [n for n in new if os.path.lexists(path / n) and n not in replaces]
    if clash:
        raise WisparseError(f"{path / clash[0]} exists and is not ours to replace")
    last = "manifest.json"  # a reader sees no manifest while the folder is half replaced
    old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".old", dir=path.parent))
    moved: list[str] = []
    try:
        for n in sorted(replaces, key=lambda n: n != last):
            if os.path.lexists(path / n):
                os.replace(path / n, old / n)
                moved.append(n)
        for n in sorted(new, key=lambda n: n == last):
            os.replace(tmp / n, path / n)
    except BaseException:
        for n in moved:
            if not os.path.lexists(path / n):
                os.replace(old / n, path / n)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
