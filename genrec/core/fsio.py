"""Atomic, durable writes: the one way genrec puts a file or a folder on disk that a later run or a running
server reads. Torch-free (numpy only).

A file: written under a temporary name in the same folder, flushed, fsynced, renamed over the target, and the
folder fsynced, so the target is either the old file or the whole new one, after a crash (kill -9) or a power
loss alike, never a truncated mix. A reader that has the old file open or memory-mapped keeps reading the old
inode: a writer never truncates or rewrites a file in place (a rewritten file under a mapping is a SIGBUS).

A folder: built under a temporary name beside the target (:func:`staged_dir`), every file and the folder
fsynced, then put in place with one rename -- or, when the target exists, one atomic exchange
(``renameat2(RENAME_EXCHANGE)``) so that the target path never disappears, not even for a moment; the old
folder is then removed. Folders left by a crash carry a recognizable name (:data:`STAGING_MARK`) and are removed
by the next publish of the same target (:func:`remove_stale_staging`).

Commit points: where several files belong together (a stats folder, an index segment, a repository), one
rename publishes them all; whatever was written before it is invisible to readers until then.

:func:`checkpoint` marks each step of a write. ``GENREC_FSIO_KILL_AT=N`` makes the process SIGKILL itself at
the N-th step and ``GENREC_FSIO_TRACE=FILE`` lists the steps: the crash tests (tests/test_crash.py) kill real
``genrec`` commands at chosen steps and check what a reader or the next run finds.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

STAGING_MARK = ".genrec-staging-"     # temporary folders beside their target: .<name>.genrec-staging-<id>
OLD_MARK = ".genrec-old-"             # a replaced folder on its way out (fallback path without an exchange)
TMP_MARK = ".genrec-tmp-"             # temporary files beside their target


_steps = 0


def checkpoint(what: str) -> None:
    """One step of a write (see the module docstring): a no-op unless a crash test asks for a kill or a trace."""
    kill_at, trace = os.environ.get("GENREC_FSIO_KILL_AT"), os.environ.get("GENREC_FSIO_TRACE")
    if not (kill_at or trace):
        return
    global _steps
    _steps += 1
    if trace:
        with open(trace, "a", encoding="utf-8") as f:
            f.write(f"{_steps}\t{what}\n")
    if kill_at and _steps == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_path(path: str | Path) -> None:
    """fsync one file or folder (a folder's fsync makes the names created, renamed or removed in it durable)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and folder under ``root`` (children first, ``root`` last)."""
    root = Path(root)
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            p = Path(folder) / name
            if not p.is_symlink():
                fsync_path(p)
        fsync_path(folder)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb", *, encoding: str | None = None) -> Iterator[IO]:
    """``with atomic_file(p) as f: f.write(...)``: ``p`` becomes the complete new content when the block ends
    without an exception (temp file, flush, fsync, rename, fsync of the folder); on an exception ``p`` is left
    as it was and the temporary file is removed."""
    path = Path(path)
    tmp = _tmp_name(path)
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    try:
        with open(tmp, mode, encoding=encoding, **({} if "b" in mode else {"newline": ""})) as f:
            yield f
            f.flush()
            checkpoint(f"wrote {tmp.name}")
            os.fsync(f.fileno())
        checkpoint(f"replacing {path}")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    checkpoint(f"replaced {path}")
    fsync_path(path.parent)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_file(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, value: Any) -> Path:
    return write_text(path, json.dumps(value, indent=2) + "\n")


def write_array(path: str | Path, array: np.ndarray, dtype: Any = None) -> Path:
    """``array`` (C order, ``dtype`` if given) as raw bytes, written in 64 MiB pieces (no full copy)."""
    arr = np.ascontiguousarray(array, dtype=dtype)
    flat = arr.reshape(-1).view(np.uint8) if arr.size else np.zeros(0, np.uint8)
    with atomic_file(path, "wb") as f:
        step = 64 << 20
        for i in range(0, len(flat), step):
            f.write(flat[i: i + step].tobytes())
    return Path(path)


def write_with(path: str | Path, writer: Callable[[Path], object]) -> Path:
    """For libraries that write a file by name (``faiss.write_index``): ``writer(tmp)`` writes a temporary
    file beside ``path``, which is then fsynced and renamed over ``path``."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        writer(tmp)
        checkpoint(f"wrote {tmp.name}")
        fsync_path(tmp)
        checkpoint(f"replacing {path}")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_path(path.parent)
    return path


def remove(path: str | Path) -> bool:
    """Unlink a file (missing is fine) and fsync its folder; True when something was removed."""
    path = Path(path)
    if not path.exists():
        return False
    checkpoint(f"removing {path}")
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_path(path.parent)
    return True


# ---- folders ----------------------------------------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: str | Path, b: str | Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or the filesystem cannot (the caller falls back to two renames)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")


def staging_path(target: str | Path) -> Path:
    target = Path(target)
    return target.with_name(f".{target.name}{STAGING_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files an interrupted write left in ``folder`` (``.<name>.genrec-tmp-<pid>-<id>``).
    Only for folders with one writer at a time."""
    removed = []
    for p in Path(folder).glob(f".*{TMP_MARK}*"):
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def remove_stale_staging(target: str | Path) -> list[Path]:
    """Remove what an interrupted publish of ``target`` left beside it (staging and replaced folders)."""
    target = Path(target)
    removed = []
    if not target.parent.is_dir():
        return removed
    for p in target.parent.glob(f".{target.name}.genrec-*"):
        if p.name.startswith((f".{target.name}{STAGING_MARK}", f".{target.name}{OLD_MARK}",
                              f".{target.name}{TMP_MARK}")):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed.append(p)
    return removed


def publish_dir(staged: str | Path, target: str | Path) -> None:
    """Make the complete folder ``staged`` (beside ``target``) become ``target``: fsync it all, then one rename
    (or one atomic exchange with an existing ``target``, whose old content is then removed)."""
    staged, target = Path(staged), Path(target)
    checkpoint(f"staged {staged.name}")
    fsync_tree(staged)
    checkpoint(f"publishing {target}")
    if not target.exists() and not target.is_symlink():
        os.rename(staged, target)
        checkpoint(f"published {target}")
        fsync_path(target.parent)
        return
    if exchange(staged, target):                 # target now holds the new folder, staged the old one
        checkpoint(f"published {target}")
        fsync_path(target.parent)
        shutil.rmtree(staged, ignore_errors=True)
        return
    old = target.with_name(f".{target.name}{OLD_MARK}{uuid.uuid4().hex[:8]}")
    os.rename(target, old)                       # a crash here leaves no target for a moment: the next publish
    checkpoint(f"moved {target} aside")          # of the same target removes `old`
    os.rename(staged, target)
    checkpoint(f"published {target}")
    fsync_path(target.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """``with staged_dir(out) as tmp: <write into tmp>``: ``out`` becomes ``tmp`` (atomically, durably) when the
    block ends without an exception; on an exception ``out`` is untouched and ``tmp`` removed."""
    target = Path(target)
    remove_stale_staging(target)
    tmp = staging_path(target)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        publish_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: str | Path, error: type[Exception], what: str = "") -> Any:
    """Parse a JSON file; a file that is not JSON (truncated, garbage) raises ``error`` naming it and the spot,
    not a bare JSONDecodeError. A missing file raises FileNotFoundError as usual."""
    path = Path(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise error(f"{path}: not valid JSON{f' ({what})' if what else ''}: {exc}") from None
