"""The process a stage runs in: device and torchrun/DDP set-up, autocast, seeds and RNG state,
progress bars, and the environment record every measurement carries."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
from rich.table import Column
from rich.text import Text

from mqvq.errors import UserError


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for `auto` on CUDA; None means plain fp32."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU does not support bf16: set train.precision=fp32.")
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def conv_layout(device: torch.device) -> torch.memory_format:
    """Memory format for the stage-1 networks: channels_last on CPU, oneDNN's native layout, which made the
    whole G + D step 1.1-1.25x faster there (smoke to 128 px); on CUDA the default until measured there."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}  # training draws randomness from torch only
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def gather_rng_states(device: torch.device) -> list[dict]:
    """Every rank's RNG state (rank 0 writes them all into the checkpoint)."""
    mine = rng_state(device)
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def duration(seconds: float | None) -> str:
    """'8 s', '3 min 05 s', '1 h 02 min': how long, as a person reads it."""
    if seconds is None or seconds != seconds:
        return "?"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class _Times(ProgressColumn):
    """'12 s, 40 s left': elapsed and remaining as `duration` writes them, not 0:00:12."""

    def render(self, task) -> Text:
        left = "" if task.time_remaining is None or task.finished else f", {duration(task.time_remaining)} left"
        return Text(duration(task.finished_time if task.finished else task.elapsed) + left, style="progress.elapsed")


def progress_bar(enabled: bool) -> Progress:
    """A bar that fits the terminal: the bar itself shrinks, the step info is cut before it wraps."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=8)),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=2)),
        _Times(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
        expand=True,
    )


# --------------------------------------------------------------------------- device and DDP
@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def check_device(device: str | None) -> str:
    """The device name to use (default: cuda when available), refused in one sentence if impossible."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise UserError(f"--device {device!r} is invalid: use cpu, cuda or cuda:N.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA GPU is available: use --device cpu.")
    return device


def setup(device: str | None = None) -> Dist:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = check_device(device)
    if device == "cuda":
        device = f"cuda:{local}" if world > 1 else "cuda"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    global _flags
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        # beside NCCL, a CPU group for the per-step stop flag: agreeing on it never waits for the GPU
        _flags = dist.new_group(backend="gloo") if dev.type == "cuda" else None
    return Dist(rank, world, local, dev)


_flags = None  # the process group `any_rank` uses (None: the default one)


def teardown() -> None:
    global _flags
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _flags = None


def any_rank(flag: bool) -> bool:
    """Whether `flag` is true on any rank (a collective: every rank calls it at the same point)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_flags)
    return bool(t.item())


def all_reduce_mean_(tensors) -> None:
    """Average gradients over ranks (used for the discriminator, which is not wrapped in DDP)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [t for t in tensors if t is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_object(obj):
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def environment(device: torch.device) -> dict:
    """What a measurement ran on: torch, python, device (GPU name, CUDA, cuDNN or CPU and threads), load."""
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.type == "cuda":
        env |= {
            "gpu": torch.cuda.get_device_name(device),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    else:
        env |= {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if hasattr(os, "getloadavg"):  # what else ran: timings on a shared machine depend on it
        env["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return env
