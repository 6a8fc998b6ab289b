"""SIGTERM stops like Ctrl-C (a foundation: the CLI and study worker processes both install it)."""
from __future__ import annotations

import signal

received_sigterm = False  # set when the interrupt came from SIGTERM rather than Ctrl-C


def stop_on_sigterm() -> None:
    """SIGTERM (`kill`, a batch scheduler, torchrun) raises KeyboardInterrupt: training writes its
    checkpoint and study rows are released, so the same command resumes. A job started with
    `nohup ... &` ignores SIGINT, so this is how one is stopped. Only the first SIGTERM interrupts:
    a second one must not abort the checkpoint and MLflow bookkeeping the first one started."""

    def interrupt(signum, frame):
        global received_sigterm
        received_sigterm = True
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
