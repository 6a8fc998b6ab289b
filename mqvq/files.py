"""Files: atomic writes (checkpoints, cached statistics and reports are never left half-written) and content digests."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from pathlib import Path
from typing import BinaryIO, Callable

from mqvq.errors import UserError


def file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of `path` (or `path` itself) when it is a file, not a folder."""
    blocker = next((p for p in (path, *path.parents) if p.exists()), None)
    return blocker if blocker is not None and not blocker.is_dir() else None


def _temp_file(folder: Path, name: str) -> tuple[int, str]:
    """A new hidden temp file `.<name>.<random>.tmp` in `folder`, as `tempfile.mkstemp` makes one but
    with mode 0666, so that the kernel applies this process's umask (mkstemp's 0600 would need the
    umask read, and reading it means setting it, for a moment, for every thread of the process)."""
    import secrets

    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {name} in {folder}")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], hint: str = "") -> Path:
    """Write through a temp file of this process's own in the target folder, then rename it over
    `path`: readers see the old file or the new one, and concurrent writers never share a temp
    name (study workers cache the same statistics at once)."""
    path = Path(path)
    blocker = file_in_the_way(path.parent)
    if blocker is not None:
        raise UserError(f"cannot write {path}: {blocker} is a file, not a folder{hint}.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temp_file(path.parent, path.name)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}{hint}.") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise UserError(f"cannot write {path}: {e.strerror or e}{hint}.") from None
        raise
    return path


def file_digest(path: Path) -> str:
    """sha256 prefix of a file's bytes; computed once per (file, size, mtime) in a process."""
    st = Path(path).stat()
    return _digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime: int) -> str:
    return sha256_of(path)[:16]


def sha256_of(path: str | Path) -> str:
    """The full SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock between local processes, held for the `with` body (store creation, row
    claims, Optuna trial hand-out)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
