"""`mqvq report NAME [--format md|latex|csv|json] [--out FILE] [--profile P] [--columns ...] [--paper ...] [--wide] [--check]`"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mqvq.cli.common import Home, TrackingUri, cli_errors, console, err_console, open_tracker


@cli_errors
def report(
    name: Annotated[str, typer.Argument(help="study name (see `mqvq study list`)")],
    format: Annotated[
        Optional[str],
        typer.Option("--format", "-f", help="md, latex, csv or json (default: from --out's suffix, else md)"),
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="write here (figures go to <stem>-figures/ beside it)")
    ] = None,
    profile: Annotated[str, typer.Option("--profile", "-p", help="the study's profile")] = "smoke",
    columns: Annotated[
        Optional[list[str]],
        typer.Option(
            "--columns",
            "-c",
            help="metric columns to show, in order: a study metric (rfid, fid, usage, mask, ...) or a column key (fd_vgg16, usage_effective, ...); comma-separated or repeated (default: all; in LaTeX, those that fit one column)",
        ),
    ] = None,
    paper: Annotated[
        Optional[str],
        typer.Option(
            "--paper",
            help="the paper's numbers: columns (beside ours), line (small, under each row) or none (default: line in LaTeX, columns in Markdown)",
        ),
    ] = None,
    wide: Annotated[
        bool,
        typer.Option("--wide", help="LaTeX: a table* across both columns of a two-column paper, with every column"),
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="judge, claim by claim, whether the paper's findings are reproduced; exit 1 when a claim fails",
        ),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="with --check: exit 1 unless every claim holds (not significant and not assessable count as failures)",
        ),
    ] = False,
    figures: Annotated[bool, typer.Option(help="with --out: also write Figs. 4, 5, 6a, 6b")] = True,
    home: Home = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """The study's table in the paper's layout, with the paper's numbers beside ours."""
    from mqvq.reports.report import render_verdicts, report as make_report

    if strict and not check:
        raise typer.BadParameter("--strict judges the claims: use it with --check", param_hint="--strict")

    names = [n.strip() for c in columns or [] for n in c.split(",") if n.strip()] or None
    result = make_report(
        open_tracker(tracking_uri, home, read_only=True),
        name,
        profile,
        format,
        out,
        check,
        figures,
        columns=names,
        paper=paper,
        wide=wide,
    )
    if out is None:
        print(result["text"], end="")
    else:
        console.print(
            f"wrote {out}" + (f" and {len(result['figures'])} figures" if result["figures"] else ""), highlight=False
        )
        if check:
            console.print(
                render_verdicts(result["verdicts"], markdown=False), markup=False, highlight=False, soft_wrap=True
            )
    if result["note"]:
        err_console.print(f"note: {result['note']}", markup=False, highlight=False, soft_wrap=True)
    failed = [v for v in result["verdicts"] if v.status == "fails" or (strict and v.status != "holds")]
    if failed:
        err_console.print(
            f"{len(failed)} claim{'s' * (len(failed) > 1)} "
            + ("did not hold (--strict)" if strict else "failed")
            + ": "
            + "; ".join(v.claim for v in failed)
            + ".",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
