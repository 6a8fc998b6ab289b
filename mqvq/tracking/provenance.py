"""What a run records about the code that made it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git_commit() -> str:
    """HEAD of the checkout mqvq runs from (`-dirty` with uncommitted changes); a copy of the tree
    outside git (a snapshot for a long background run, a machine the tree was carried to) names
    its commit in $MQVQ_GIT_COMMIT."""
    if os.environ.get("MQVQ_GIT_COMMIT"):
        return os.environ["MQVQ_GIT_COMMIT"]
    root = Path(__file__).resolve().parent.parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
