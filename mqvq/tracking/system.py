"""System metrics on a run: MLflow's own monitors (CPU and memory, disk, network; GPU utilisation,
memory and power with `pynvml`) sampled from a background thread and logged as `system/<name>`,
the names MLflow's runs view groups under "System metrics".

MLflow's `SystemMetricsMonitor` stops as soon as its run is not RUNNING, which rules out `mqvq
eval` on a finished run, and counts its own steps from 0 on every resume; this sampler logs through
the `Tracker`, for as long as the `with` body lasts, at step = seconds since the run started (one
time axis across resumes and evaluations).
"""

from __future__ import annotations

import importlib.util
import os
import time

from mqvq.periodic import Periodic
from mqvq.tracking.store import Tracker

PREFIX = "system/"
OFF_ENV = "MQVQ_SYSTEM_METRICS"  # "0": off for this process and the workers it starts (`--no-system-metrics`)


def turn_off_here() -> None:
    """Off for this command and every process it starts (study workers, torchrun ranks, SLURM tasks)."""
    os.environ[OFF_ENV] = "0"


def available() -> bool:
    return importlib.util.find_spec("psutil") is not None


def _monitors() -> list:
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    try:  # needs pynvml (nvidia-ml-py) and an NVIDIA driver; absent elsewhere
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        monitors.append(GPUMonitor())
    except Exception:  # noqa: BLE001  (ImportError, or NVML failing to initialise)
        pass
    return monitors


class SystemMetrics:
    """`with SystemMetrics(tracker, run_id, interval):` samples every `interval` seconds while the
    body runs; disabled (`enabled=False` from `tracking.system_metrics`, `MQVQ_SYSTEM_METRICS=0`, or
    psutil missing) it does nothing."""

    def __init__(self, tracker: Tracker, run_id: str, interval: float = 10.0, enabled: bool = True):
        self.tracker, self.run_id, self.interval = tracker, run_id, interval
        self.enabled = enabled and os.environ.get(OFF_ENV, "1") != "0" and available()
        self.samples = 0
        self._ticker: Periodic | None = None

    def __enter__(self) -> "SystemMetrics":
        if self.enabled:
            import psutil

            psutil.cpu_percent()  # a thread's first reading is 0 (psutil keeps one per thread): this one for the last sample
            self._start = self.tracker.run_start_time(self.run_id)
            self._monitors = _monitors()
            # and the ticker's own first reading, for the samples its thread takes
            self._ticker = Periodic(self.sample, self.interval, name="mqvq-system-metrics", setup=psutil.cpu_percent)
            self._ticker.start()
        return self

    def sample(self) -> None:
        metrics: dict[str, float] = {}
        try:
            for m in self._monitors:
                m.collect_metrics()
                metrics |= {PREFIX + k: float(v) for k, v in m.aggregate_metrics().items()}
                m.clear_metrics()
            self.tracker.log_metrics(self.run_id, metrics, int(time.time() - self._start))
            self.samples += 1
        except Exception:  # noqa: BLE001  (a missed sample must never stop training)
            pass

    def __exit__(self, *exc) -> None:
        if self._ticker is not None:
            self._ticker.stop(timeout=max(5.0, self.interval))
            self._ticker = None
            self.sample()  # the last point (CPU use since the one before): a run shorter than the interval gets one too
