"""Shared CLI pieces: error handling, consoles, common options."""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mqvq.errors import UserError


def _help_markup() -> str | None:
    """Rich's option tables give the help column only what the option names leave, so in a terminal
    narrower than 100 columns they wrap every word: there `--help` is Click's plain layout (names
    on the left, help wrapped beside them, long names on a line of their own)."""
    import shutil

    return "rich" if shutil.get_terminal_size((120, 24)).columns >= 100 else None


HELP_MARKUP = _help_markup()  # every Typer app of the CLI is made with it

console = Console()
err_console = Console(stderr=True)

Home = Annotated[
    Optional[str],
    typer.Option(
        "--home", help="folder for the default MLflow store, artifacts and checkpoints (default $MQVQ_HOME or ./.mqvq)"
    ),
]
TrackingUri = Annotated[
    Optional[str],
    typer.Option(
        "--tracking-uri",
        help="MLflow store: sqlite:///ABS.db, http(s)://HOST:PORT or a database URL (default $MLFLOW_TRACKING_URI or <home>/mlflow.db)",
    ),
]
Profile = Annotated[
    str,
    typer.Option(
        "--profile",
        "-p",
        help="size profile: smoke (CPU seconds), cpu (Fashion-MNIST on 2 CPU cores, about an hour per study), mini (one GPU, minutes), paper (paper sizes)",
    ),
]
Device = Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N (default: cuda when available)")]
Progress = Annotated[bool, typer.Option(help="show progress bars")]
SystemMetricsFlag = Annotated[
    bool,
    typer.Option(
        "--system-metrics/--no-system-metrics",
        help="log CPU, memory, disk, network and GPU use over time on the runs (config: tracking.system_metrics)",
    ),
]
Sets = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="override a config value, e.g. --set stage1.model.mask.ratio=0.5 (repeatable)"),
]


AsJson = Annotated[bool, typer.Option("--json", help="print JSON instead of a table (names and values whole)")]


GAP = 3  # `table`'s box between two columns: a padding space, the (blank) rule, a padding space; and 2 for the edges


def table(headers: list[str], rows: list[list[str]], numeric: tuple[str, ...] = (), width: int | None = None) -> Table:
    """A table whose long names wrap at their spaces inside their cell instead of being cut with
    '…' or broken mid-word; a numeric column is right-aligned, so a number never breaks. When it is
    wider than `width` (the console's), the columns with the most room to spare give it up first,
    down to their longest word (Rich's own shrinking would fold words)."""
    plain = [[Text.from_markup(c).plain for c in r] for r in rows]
    natural = [max([len(h), *(len(r[i]) for r in plain)]) for i, h in enumerate(headers)]
    narrow = [_narrowest(h, [r[i] for r in rows], h in numeric) for i, h in enumerate(headers)]
    widths = _shrink(natural, narrow, (width or console.width) - GAP * max(0, len(headers) - 1) - 2)
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for i, h in enumerate(headers):
        t.add_column(
            h,
            justify="right" if h in numeric else "left",
            overflow="fold",
            min_width=narrow[i],
            width=None if widths is None else widths[i],
        )
    for r in rows:
        t.add_row(*r)
    return t


def _narrowest(header: str, cells: list[str], numeric: bool) -> int:
    """A column's narrowest width that breaks no word: its longest header word and its longest cell
    word (a number is one word)."""
    plain = [Text.from_markup(c).plain for c in cells]
    words = plain if numeric else [w for c in plain for w in c.split()]
    return max(len(w) for w in [*header.split(), *words, ""])


def _shrink(natural: list[int], narrow: list[int], room: int) -> list[int] | None:
    """Column widths summing to at most `room`, each between its narrowest and natural width, taken
    from the columns with the most to spare; None when the natural widths fit (or nothing does)."""
    excess = sum(natural) - room
    if excess <= 0 or sum(narrow) > room:
        return None
    widths = list(natural)
    while excess > 0:
        i = max(range(len(widths)), key=lambda j: widths[j] - narrow[j])
        widths[i] -= 1
        excess -= 1
    return widths


def columns_that_fit(
    headers: list[str], rows: list[list[str]], first_optional: int, width: int, numeric: tuple[str, ...] = ()
) -> int:
    """How many of the columns from `first_optional` on fit in `width` characters beside the ones
    before it, none breaking a word: the rest are better left out than every cell folded."""
    used = 2 - GAP
    for i in range(len(headers)):
        used += GAP + _narrowest(headers[i], [r[i] for r in rows], headers[i] in numeric)
        if used > width:
            return max(0, i - first_optional)
    return len(headers) - first_optional


def print_json(payload) -> None:
    print(json.dumps(payload, indent=2))


def fail(message: str, code: int = 2) -> None:
    err_console.print(
        f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True
    )  # brackets print as written
    raise typer.Exit(code)


def system_metrics_flag(on: bool) -> None:
    """`--no-system-metrics`: off for this command and the processes it starts."""
    if not on:
        from mqvq.tracking.system import turn_off_here

        turn_off_here()


def open_tracker(tracking_uri: str | None, home: str | None, read_only: bool = False):
    """The store a command uses: a read-only command refuses one that does not exist; a command that
    writes may create it, and says so once."""
    from mqvq.tracking import Tracker

    tracker = Tracker(tracking_uri, home, must_exist=read_only)
    if tracker.created:
        err_console.print(f"created a new tracking store at {escape(tracker.uri)}", highlight=False)
    return tracker


def store_exists(tracking_uri: str | None, home: str | None) -> bool:
    """Whether the store a command would open is there (a server or database is taken to be)."""
    from mqvq.tracking.location import home_path, resolve_tracking_uri, sqlite_path

    db = sqlite_path(resolve_tracking_uri(tracking_uri, home_path(home)))
    return db is None or db.is_file()


QUICK_EXIT = False  # set by main(): a real process, not a test's CliRunner


def read_only(fn):
    """A command that only reads ends its process as soon as its answer is out: freeing mlflow's and
    SQLAlchemy's objects at interpreter exit is 0.5 s of a 1.9 s `study status`, and nothing of
    such a command is left to finalise."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            fn(*args, **kwargs)
            code = 0
        except typer.Exit as e:
            code = e.exit_code
        if not QUICK_EXIT:
            raise typer.Exit(code)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    return wrapper


def cli_errors(fn):
    """Turn user mistakes into one sentence on stderr and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            fail(str(e))
        except KeyboardInterrupt:
            err_console.print(
                "[yellow]interrupted[/]: the last checkpoint is kept; the same command continues from it "
                "(`train` with --resume)."
            )
            raise typer.Exit(130) from None

    return wrapper
