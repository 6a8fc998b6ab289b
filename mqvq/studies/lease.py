"""Row claims for concurrent `mqvq study run` workers, stored as tags on the row's parent run.

A worker owns a row while its `mqvq.lease` tag names the worker and its `mqvq.heartbeat` is
fresh (a background thread refreshes it). A lease whose heartbeat is older than the timeout, or
whose owner is a dead process on this host, is taken over, so a killed worker's row is resumed
by the next worker. Claims are atomic between processes on one machine (a file lock next to the
store); across machines sharing an MLflow server, a worker writes its claim, waits `settle`
seconds and reads it back, and backs off if another worker's claim replaced it.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid

from mqvq.tracking.store import Tracker, _file_lock

HOST = socket.gethostname()


def worker_id() -> str:
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child that was not reaped yet is a zombie: dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def lease_is_live(owner: str, heartbeat: float, timeout: float, now: float | None = None) -> bool:
    if not owner:
        return False
    host, pid, *_ = (owner.split(":") + ["", ""])[:3]
    if host == HOST and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
        return False
    return (now or time.time()) - heartbeat <= timeout


def current_lease(tracker: Tracker, run_id: str) -> tuple[str, float]:
    tags = tracker.get_run(run_id).data.tags
    return tags.get("mqvq.lease", ""), float(tags.get("mqvq.heartbeat", "0") or 0)


def claim(tracker: Tracker, run_id: str, worker: str, timeout: float, settle: float = 0.0) -> bool:
    """Take the row if nobody live holds it; True when this worker now owns it."""
    with _file_lock(tracker.home / ".lease.lock"):
        owner, beat = current_lease(tracker, run_id)
        if owner and owner != worker and lease_is_live(owner, beat, timeout):
            return False
        tracker.set_tags(run_id, {"mqvq.lease": worker, "mqvq.heartbeat": time.time()})
    if settle > 0:
        time.sleep(settle)
        return current_lease(tracker, run_id)[0] == worker
    return True


def release(tracker: Tracker, run_id: str, worker: str) -> None:
    with _file_lock(tracker.home / ".lease.lock"):
        if current_lease(tracker, run_id)[0] == worker:
            tracker.set_tags(run_id, {"mqvq.lease": ""})


class Heartbeat:
    """Refresh a run's heartbeat every `interval` seconds from a background thread (own client)."""

    def __init__(self, tracker: Tracker, run_id: str, interval: float = 15.0):
        self.tracker = tracker  # MlflowClient opens a session per call, so one client serves both threads
        self.run_id, self.interval = run_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tracker.heartbeat(self.run_id)
            except Exception:  # a missed beat only makes the lease look older; never kill the worker for it
                pass

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def reap_stale_runs(tracker: Tracker, experiment: str, timeout: float, now: float | None = None) -> list[str]:
    """Mark KILLED the stage runs of `experiment` left RUNNING by a process that died without a
    word (SIGKILL, a lost machine): no heartbeat within `timeout` and no live lease on their row.
    They stay resumable from their last checkpoint; returns their ids."""
    now = now or time.time()
    reaped = []
    for run in tracker.find_runs(experiment, "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if tags.get("mqvq.kind") == "row" or "mqvq.stage" not in tags:
            continue
        beat = float(tags.get("mqvq.heartbeat", "0") or 0)
        if now - beat <= timeout:
            continue
        parent = tags.get("mlflow.parentRunId")
        if parent:
            owner, parent_beat = current_lease(tracker, parent)
            if lease_is_live(owner, parent_beat, timeout, now):
                continue  # its row's worker is alive (e.g. a long evaluation between heartbeats)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(beat)) if beat else "its start"
        tracker.end_run(run.info.run_id, "KILLED", f"stopped without finishing: no heartbeat since {since} (killed?)")
        reaped.append(run.info.run_id)
    return reaped
