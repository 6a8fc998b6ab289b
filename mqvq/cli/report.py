"""`mqvq report NAME [--format md|latex|csv|json] [--out FILE] [--profile P] [--check]`"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mqvq.cli.common import Home, TrackingUri, cli_errors, console, err_console, open_tracker


@cli_errors
def report(
    name: Annotated[str, typer.Argument(help="study name (see `mqvq study list`)")],
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="md, latex, csv or json (default: from --out's suffix, else md)")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="write here (figures go to <stem>-figures/ beside it)")] = None,
    profile: Annotated[str, typer.Option("--profile", "-p", help="the study's profile")] = "smoke",
    check: Annotated[bool, typer.Option("--check", help="state, claim by claim, whether the paper's findings are reproduced")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="with --check: exit 1 when a claim fails")] = False,
    figures: Annotated[bool, typer.Option(help="with --out: also write Figs. 4, 5, 6a, 6b")] = True,
    home: Home = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """The study's table in the paper's layout, with the paper's numbers beside ours."""
    from mqvq.reports.report import render_verdicts, report as make_report

    if strict and not check:
        raise typer.BadParameter("--strict judges the claims: use it with --check", param_hint="--strict")

    result = make_report(open_tracker(tracking_uri, home, read_only=True), name, profile, format, out, check, figures)
    if out is None:
        print(result["text"], end="")
    else:
        console.print(f"wrote {out}" + (f" and {len(result['figures'])} figures" if result["figures"] else ""))
        if check:
            console.print(render_verdicts(result["verdicts"]), markup=False, highlight=False)
    failed = [v.claim for v in result["verdicts"] if v.status == "fails"]
    if strict and failed:
        err_console.print(f"--strict: {len(failed)} claim{'s' * (len(failed) > 1)} failed: {'; '.join(failed)}.", markup=False)
        raise typer.Exit(1)
