"""SIGTERM stops like Ctrl-C (a foundation: the CLI and study worker processes both install it)."""
from __future__ import annotations

import signal


def stop_on_sigterm() -> None:
    """SIGTERM (`kill`, a batch scheduler, torchrun) raises KeyboardInterrupt: training writes its
    checkpoint and study rows are released, so the same command resumes. A job started with
    `nohup ... &` ignores SIGINT, so this is how one is stopped."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
