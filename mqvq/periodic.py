"""The one background ticker: call a function every `interval` seconds from a daemon thread while a
body of work runs (a row's lease heartbeat, a search trial's heartbeat, system-metric samples)."""

from __future__ import annotations

import threading
from typing import Callable


class Periodic:
    """`with Periodic(tick, interval):` calls `tick()` every `interval` seconds until the body ends.

    A tick that raises is skipped: a missed heartbeat or sample only makes what it reports look
    older, and must never stop the training or trial it watches. A tick that returns `False` ends
    the thread (a heartbeat that found its lease gone has nothing more to prove). `setup` runs once
    in the thread before the first wait (psutil keeps some readings per thread)."""

    def __init__(
        self,
        tick: Callable[[], object],
        interval: float,
        name: str = "mqvq-periodic",
        setup: Callable[[], object] | None = None,
    ):
        self.tick, self.interval, self.name, self.setup = tick, interval, name, setup
        self.ticks = 0  # completed calls, a count tests and callers can wait on instead of the clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        if self.setup is not None:
            self.setup()
        while not self._stop.wait(self.interval):
            try:
                again = self.tick()
            except Exception:  # noqa: BLE001  (see the class docstring)
                continue
            self.ticks += 1
            if again is False:
                return

    def start(self) -> "Periodic":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name=self.name)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to end and wait up to `timeout` s for a tick in progress to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def __enter__(self) -> "Periodic":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
