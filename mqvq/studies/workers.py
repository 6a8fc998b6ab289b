"""`mqvq study run --workers N`: N worker processes on one study, sharing rows through leases.

Each worker is exactly what a separate `mqvq study run` would be (its own process, tracker and
leases), so the row-claiming logic is the one the multi-machine case uses. Workers take the GPUs
round-robin (`cuda:i % count`); on one GPU they share it, which pays off when rows are too small
to fill it (the `mini` profile).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue as queue_lib

from mqvq.studies.runner import RowResult, run_study

# when workers disagree about a row, the most informative report wins
_RANK = {"finished": 3, "failed": 2, "skipped": 1, "busy": 0, "lost": 0}  # a row one worker lost, another ran


def worker_devices(workers: int, device: str | None) -> list[str | None]:
    """The device of each worker: the one asked for, else the visible GPUs round-robin, else the default."""
    if device is not None:
        return [device] * workers
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i % count}" if count else None for i in range(workers)]


def _worker(index: int, results, study_name: str, tracking_uri: str | None, home: str | None, kwargs: dict) -> None:
    from rich.console import Console

    from mqvq.errors import UserError
    from mqvq.studies.spec import load_study
    from mqvq.tracking import Tracker

    from mqvq.signals import stop_on_sigterm

    stop_on_sigterm()
    console = Console(stderr=True)
    if kwargs.get("threads"):  # CPU workers share the cores instead of each taking all of them
        import torch

        torch.set_num_threads(kwargs["threads"])
    kwargs = {k: v for k, v in kwargs.items() if k != "threads"}
    try:
        rows = run_study(
            Tracker(tracking_uri, home),
            load_study(study_name),
            progress=False,
            log=lambda m: console.print(f"[dim]w{index}[/] {m}", highlight=False),
            **kwargs,
        )
        results.put((index, [dataclasses.asdict(r) for r in rows], ""))
    except KeyboardInterrupt:
        results.put((index, [], "interrupted"))
    except UserError as e:
        results.put((index, [], str(e)))


def run_workers(
    study_name: str,
    workers: int,
    *,
    tracking_uri: str | None = None,
    home: str | None = None,
    device: str | None = None,
    **kwargs,
) -> tuple[list[RowResult], list[str]]:
    """Run `workers` processes on the study; (merged row results, errors of workers that stopped early)."""
    from mqvq.studies.spec import load_study, select_rows

    select_rows(load_study(study_name), kwargs.get("only"))  # user mistakes fail here, once, not in every worker
    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    results = ctx.Queue()
    devices = worker_devices(workers, device)
    cpu_threads = max(1, (os.cpu_count() or 1) // workers)
    procs = [
        ctx.Process(
            target=_worker,
            args=(
                i,
                results,
                study_name,
                tracking_uri,
                home,
                {
                    **kwargs,
                    "device": dev,
                    "workers": workers,
                    "threads": cpu_threads if not (dev or "").startswith("cuda") else None,
                },
            ),
        )
        for i, dev in enumerate(devices)
    ]
    for p in procs:
        p.start()
    reports, errors, silent = {}, [], dict.fromkeys(range(len(procs)), 0)
    try:
        while len(reports) < len(procs):
            try:
                index, rows, error = results.get(timeout=1.0)
            except queue_lib.Empty:
                for i, p in enumerate(procs):  # a worker killed from outside (OOM, SIGKILL) never reports
                    silent[i] = silent[i] + 1 if not p.is_alive() and i not in reports else 0
                    if silent[i] == 3:  # dead and quiet for 3 s: its report is not in flight
                        reports[i] = []
                        errors.append(f"worker {i} exited with code {p.exitcode} without reporting")
                continue
            reports[index] = [RowResult(**r) for r in rows]
            if error:
                errors.append(f"worker {index}: {error}")
    except KeyboardInterrupt:
        from mqvq import signals

        if signals.received_sigterm:  # SIGTERM reached only this process: pass it on
            for p in procs:
                if p.is_alive():
                    p.terminate()
        else:  # Ctrl-C reached every worker: let them checkpoint and end their runs, then make sure
            for p in procs:
                p.join(timeout=120)
                if p.is_alive():
                    p.terminate()
        raise
    finally:
        for p in procs:
            p.join()
    merged: dict[tuple[str, int], RowResult] = {}
    for rows in reports.values():
        for r in rows:
            key = (r.row, r.seed)
            if key not in merged or _RANK[r.status] > _RANK[merged[key].status]:
                merged[key] = r
    return list(merged.values()), errors
