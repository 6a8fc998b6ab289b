"""What this machine is, without importing torch where it can be helped: the CPU's name, whether an
NVIDIA GPU can be present, and the thread count torch will use. `study plan` matches measured step
times by device name and thread count; importing torch for them alone would double its start-up."""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
from pathlib import Path

from mqvq.files import atomic_write


def cpu_name() -> str:
    """'CPU Intel(R) Xeon(R) Processor': how runs on a CPU name their device."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"CPU {model or platform.processor() or platform.machine()}"


def may_have_gpu() -> bool:
    """False only where CUDA surely cannot run: no NVIDIA device node and no driver."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia"))


def _thread_key() -> str:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    env = [os.environ.get(k, "") for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")]
    return "|".join([cpu_name(), str(cpus), *env])


def torch_threads(cache_dir: Path | None = None) -> int:
    """torch.get_num_threads() as a fresh process here would report it. Asked of torch once per CPU,
    affinity and OMP/MKL setting, then remembered in `cache_dir`/machine.json."""
    if "torch" in sys.modules or cache_dir is None:
        import torch

        return torch.get_num_threads()
    path = Path(cache_dir) / "machine.json"
    key = _thread_key()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), int):
        return known[key]
    import torch

    known = (known if isinstance(known, dict) else {}) | {key: torch.get_num_threads()}
    try:
        atomic_write(path, lambda f: f.write(json.dumps(known, indent=1).encode()))
    except Exception:  # a read-only home: no cache, still the right answer
        pass
    return known[key]


HOST = socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` on this machine is alive (a zombie counts as dead)."""
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
