"""Timing with device synchronisation: warm-up, then medians of repeats; comparisons interleaved
(A B, B A, ...) so that load swings on a shared machine fall on both sides of every ratio."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from mqvq.machine import cpu_name


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int = 1, repeats: int = 3) -> tuple[float, float | None]:
    """Median seconds per call of `fn` after `warmup` calls, and the peak GPU memory (GB) while timing."""
    times, peak = interleaved({"fn": fn}, device, rounds=repeats, warmup=warmup)
    return statistics.median(times["fn"]["wall"]), peak


def interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, rounds: int = 5, warmup: int = 1
) -> tuple[dict[str, dict[str, list[float]]], float | None]:
    """Seconds per call of each fn, once per round in alternating order: {name: {"wall": [...], "cpu": [...]}},
    and the peak GPU memory (GB) over the timed calls. CPU time is this process's (all threads)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    names = list(fns)
    times = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            fns[name]()
            sync(device)
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return times, peak


def medians(t: dict[str, list[float]]) -> tuple[float, float]:
    """(wall, cpu) median seconds of one fn's interleaved timings."""
    return statistics.median(t["wall"]), statistics.median(t["cpu"])


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[i] / b[i]: a ratio of two interleaved measurements."""
    return statistics.median(x / y for x, y in zip(a, b))


def device_name(device: torch.device) -> str:
    """What a time was measured on, e.g. 'NVIDIA H200' or 'CPU Intel(R) Xeon(R) Processor'. Plans
    compare step times only between runs on the same device name (and, on CPUs, thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()
