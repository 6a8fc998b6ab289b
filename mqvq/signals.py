"""SIGTERM and SIGUSR2 stop like Ctrl-C, an interrupt is held while a run is being created, and a
training loop stops only between whole steps, on every rank at the same step (a foundation: the CLI
and study worker processes both install it)."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable

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
    between the two would leave a run that nothing closes, RUNNING for good. A no-op outside the main
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
                handler(signum, frame)  # ours raises KeyboardInterrupt; Python's SIGINT handler too
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)  # the default action (terminate), as if never held


class StepStops:
    """Where a training loop may stop: between whole steps, and under torchrun on every rank at the
    same one. A stop signal (Ctrl-C, SIGTERM, SIGUSR2) is only recorded while the loop runs; after
    each step (`with stops.step():`) the ranks agree, through `any_rank`, whether any of them got one,
    and all raise KeyboardInterrupt together. Each rank deciding alone let rank 0 reach the checkpoint's
    all-gather while rank 1 waited in the next step's collectives (a deadlock), and a step cut in the
    middle is not a state a resume can continue exactly. One more agreement when the loop ends, so a
    signal that came after the last step still stops the run (its checkpoint is written first)."""

    def __init__(self, any_rank: Callable[[bool], bool]):
        self.any_rank = any_rank
        self.got: list[int] = []

    def _record(self, signum, frame) -> None:
        global received_sigterm
        if (
            not self.got
        ):  # the first signal decides; a repeat (torchrun forwarding it, SLURM's to every process) is the same request
            self.got.append(signum)
            received_sigterm = received_sigterm or signum != signal.SIGINT

    def check(self) -> None:
        """A collective under torchrun: every rank calls it at the same point of the loop."""
        if self.any_rank(bool(self.got)):
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def step(self):
        yield
        self.check()


@contextlib.contextmanager
def stops_between_steps(any_rank: Callable[[bool], bool] = bool):
    """Record stop signals for the body (a training loop) and yield its `StepStops`; outside the main
    thread (which alone receives signals) nothing is recorded, and the checks still agree."""
    stops = StepStops(any_rank)
    if threading.current_thread() is not threading.main_thread():
        yield stops
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, *STOP_SIGNALS)}
    for s in previous:
        signal.signal(s, stops._record)
    try:
        yield stops
        stops.check()
    finally:
        for s, handler in previous.items():
            # after a stop request a second SIGTERM / SIGUSR2 must not abort the bookkeeping that follows
            signal.signal(s, signal.SIG_IGN if stops.got and s in STOP_SIGNALS else handler)
