"""What `study submit --slurm` asks of the scheduler, with its defaults (a light module: the CLI reads
these defaults at start-up without importing the cluster code, which imports torch)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mqvq.errors import UserError

TIME_FORMATS = (
    "MINUTES, MINUTES:SECONDS, HOURS:MINUTES:SECONDS, DAYS-HOURS, DAYS-HOURS:MINUTES or DAYS-HOURS:MINUTES:SECONDS"
)


@dataclass(frozen=True)
class SlurmOptions:
    """What `--slurm` asks of the scheduler (None: the cluster's default)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "60"  # SLURM's formats (TIME_FORMATS)
    gpus_per_task: int = 0
    cpus_per_task: int | None = None
    mem: str | None = None  # e.g. 16G
    array_parallelism: int = 1
    setup: tuple[str, ...] = ()  # shell lines before each task (module load cuda, ...)
    max_requeues: int = 3
    signal_delay_s: int = 90  # SIGUSR2 this long before the time limit

    @property
    def minutes(self) -> int:
        return parse_time(self.time)


def parse_time(text: str) -> int:
    """A SLURM time limit in whole minutes (seconds round up)."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m or not text.strip():
        raise UserError(f"--time {text!r} is not a SLURM time: use {TIME_FORMATS}.")
    days, a, b, c = m.groups()
    if days is None:  # MM, MM:SS, HH:MM:SS
        if c is not None:
            hours, minutes, seconds = int(a), int(b), int(c)
        else:
            hours, minutes, seconds = 0, int(a), int(b or 0)
    else:  # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, seconds = int(a), int(b or 0), int(c or 0)
    total = (int(days or 0) * 24 + hours) * 60 + minutes + (seconds > 0)
    if total < 1:
        raise UserError(f"--time {text!r} is shorter than a minute: use {TIME_FORMATS}.")
    return total
