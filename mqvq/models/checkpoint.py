"""Checkpoints written atomically (temp file + rename) so an interrupted write never
corrupts the previous checkpoint, and read back with clear errors."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from mqvq.errors import UserError
from mqvq.files import atomic_write

FORMAT = "mqvq-checkpoint-v1"


def atomic_save(obj: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint on the CPU for reading only (config, weights to copy into a model). The last one
    read is kept, so resolving a run and then building its model reads the file once."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist.")
    st = path.stat()
    return _read_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _read_cached(path: str, size: int, mtime: int) -> dict:
    return load_checkpoint(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # torch raises several types, with multi-sentence messages, for truncated or foreign files
        ckpt = None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is truncated or is not an mqvq checkpoint.")
    return ckpt
