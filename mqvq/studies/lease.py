"""Row claims for concurrent `mqvq study run` workers, stored as tags on the row's parent run.

A worker owns a row while its lease tag names the worker and its heartbeat tag is
fresh (a background thread refreshes it). A lease whose heartbeat is older than the timeout, or
whose owner is a dead process on this host, is taken over, so a killed worker's row is resumed
by the next worker. Claims are atomic between processes on one machine (a file lock next to the
store); across machines sharing an MLflow server, a worker writes its claim, waits `settle`
seconds and reads it back, and backs off if another worker's claim replaced it.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

from mqvq.errors import LeaseLost
from mqvq.files import file_lock
from mqvq.machine import HOST
from mqvq.periodic import Periodic
from mqvq.tracking import tags as T
from mqvq.tracking.records import StageRecord, lease_is_live
from mqvq.tracking.store import Tracker


def worker_id() -> str:
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_lock(tracker: Tracker):
    """The local lock that makes getting-or-creating a row run and claiming it atomic between processes."""
    return file_lock(tracker.home / ".lease.lock")


def current_lease(tracker: Tracker, run_id: str) -> tuple[str, float]:
    tags = tracker.get_run(run_id).data.tags
    return tags.get(T.LEASE, ""), float(tags.get(T.HEARTBEAT, "0") or 0)


def claim(tracker: Tracker, run_id: str, worker: str, timeout: float, settle: float = 0.0) -> bool:
    """Take the row if nobody live holds it; True when this worker now owns it."""
    with lease_lock(tracker):
        owner, beat = current_lease(tracker, run_id)
        if owner and owner != worker and lease_is_live(owner, beat, timeout):
            return False
        tracker.set_tags(run_id, {T.LEASE: worker, T.HEARTBEAT: time.time()})
    if settle > 0:
        time.sleep(settle)
        return current_lease(tracker, run_id)[0] == worker
    return True


def release(tracker: Tracker, run_id: str, worker: str) -> None:
    with lease_lock(tracker):
        if current_lease(tracker, run_id)[0] == worker:
            tracker.set_tags(run_id, {T.LEASE: ""})


class Heartbeat:
    """Refresh a row's heartbeat every `interval` seconds from a background thread, each time only
    after reading that the lease is still `worker`'s, and fence the tracker while it runs: every
    write first calls `check`, which raises `LeaseLost` once the row is another worker's. A worker
    that stalled (Ctrl-Z, a suspended job, a paused machine) past the lease timeout has been taken
    over: its thread finds another owner at the next beat, and a write it attempts on waking, after
    a silence longer than two beats, checks the lease first; either way it writes nothing more."""

    def __init__(self, tracker: Tracker, run_id: str, interval: float, worker: str):
        self.tracker = tracker  # MlflowClient opens a session per call, so one client serves both threads
        self.run_id, self.interval, self.worker = run_id, interval, worker
        self.lost: str | None = None
        self._last_ok = time.time()
        self._checking = threading.Lock()
        self._ticker = Periodic(self._beat, interval, name="mqvq-lease-heartbeat")

    def check(self, beat: bool = False) -> None:
        """Raise `LeaseLost` if the row is no longer this worker's; with `beat`, or after a silence of
        two beats, read the lease (and refresh the heartbeat while it is ours)."""
        if self.lost:
            raise LeaseLost(self.lost)
        if not (beat or time.time() - self._last_ok > 2 * self.interval):
            return
        with self._checking, lease_lock(self.tracker):  # atomic with another worker's claim on this machine
            owner, _ = current_lease(self.tracker, self.run_id)
            if owner != self.worker:
                self.lost = (
                    f"this worker ({self.worker}) lost the row's lease to {owner or 'nobody'} after "
                    f"{time.time() - self._last_ok:.0f} s without a heartbeat (stopped or suspended?): it stopped "
                    f"without writing anything more, and the row goes on in that worker"
                )
                raise LeaseLost(self.lost)
            self._last_ok = self.tracker.heartbeat(self.run_id, fenced=False)  # ours, just read: past the fence

    def _beat(self) -> bool:
        try:
            self.check(beat=True)
        except LeaseLost:
            return False  # another worker's now: nothing more to prove
        return True

    def __enter__(self) -> "Heartbeat":
        self.tracker.fence = self.check
        self._ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        self._ticker.stop()
        if self.tracker.fence == self.check:
            self.tracker.fence = None


def reap_stale_runs(tracker: Tracker, experiment: str, timeout: float, now: float | None = None) -> list[str]:
    """Mark KILLED the stage runs of `experiment` left RUNNING by a process that died without a
    word (SIGKILL, a lost machine): no heartbeat within `timeout` and no live lease on their row.
    They stay resumable from their last checkpoint; returns their ids."""
    now = now or time.time()
    reaped = []
    for run in tracker.find_runs(experiment, T.running()):
        if not StageRecord.is_stage(run):
            continue
        rec = StageRecord.of(run)
        beat = rec.heartbeat
        if now - beat <= timeout:
            continue
        parent = rec.parent_run_id
        if parent:
            owner, parent_beat = current_lease(tracker, parent)
            if lease_is_live(owner, parent_beat, timeout, now):
                continue  # its row's worker is alive (e.g. a long evaluation between heartbeats)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(beat)) if beat else "its start"
        tracker.end_run(run.info.run_id, "KILLED", f"stopped without finishing: no heartbeat since {since} (killed?)")
        reaped.append(run.info.run_id)
    return reaped
