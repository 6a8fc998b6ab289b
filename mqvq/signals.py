"""SIGTERM and SIGUSR2 stop like Ctrl-C, and an interrupt is held while a run is being created (a
foundation: the CLI and study worker processes both install it)."""
from __future__ import annotations

import contextlib
import signal
import threading

received_sigterm = False  # set when the interrupt came from SIGTERM / SIGUSR2 rather than Ctrl-C
# SIGUSR2: what SLURM sends before a job's time limit (`--signal`) and on preemption, and what
# submitit requeues on; SIGTERM: `kill`, `scancel`, `scontrol requeue`, torchrun
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


def stop_on_sigterm() -> None:
    """SIGTERM or SIGUSR2 raises KeyboardInterrupt: training writes its checkpoint and study rows are
    released, so the same command resumes. A job started with `nohup ... &` ignores SIGINT, so this
    is how one is stopped. Only the first signal interrupts: a second one must not abort the
    checkpoint and MLflow bookkeeping the first one started."""

    def interrupt(signum, frame):
        global received_sigterm
        received_sigterm = True
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise KeyboardInterrupt

    for s in STOP_SIGNALS:
        signal.signal(s, interrupt)


@contextlib.contextmanager
def deferred():
    """Hold SIGINT, SIGTERM and SIGUSR2 for the body and deliver them when it ends. Around the
    creation of an MLflow run and the assignment that lets its closing code see it: an interrupt
    that arrived between the two used to leave the run RUNNING for good. A no-op outside the main
    thread (only it receives signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[tuple[int, object]] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, *STOP_SIGNALS)}
    for s in previous:
        signal.signal(s, lambda signum, frame: held.append((signum, frame)))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if held:
            signum, frame = held[0]
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)          # ours raises KeyboardInterrupt; Python's SIGINT handler too
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)     # the default action (terminate), as if never held
