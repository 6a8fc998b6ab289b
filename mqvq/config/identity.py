"""A run's identity: the content hash of a resolved config section, which decides whether a finished
run can be reused or an unfinished one resumed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import fields
from typing import Any


def identity(cfg: Any) -> dict:
    """`to_dict` without the `added` fields that hold their default and without sections that are
    not hashed (`sub(..., hashed=False)`): what config hashes read."""
    out = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            if f.metadata.get("hashed", True):
                out[f.name] = identity(v)
        elif "hashed_if" in f.metadata:
            if f.metadata["hashed_if"](cfg):
                out[f.name] = json.loads(json.dumps(v))
        elif not (f.metadata.get("added") and v == f.default):
            out[f.name] = json.loads(json.dumps(v))
    return out


def config_hash(cfg: dict) -> str:
    """Content hash of a resolved config section (canonical JSON); seed and names excluded."""
    blob = json.dumps(cfg, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
