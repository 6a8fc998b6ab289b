"""`mqvq report NAME [--format md|latex|csv|json] [--out FILE] [--profile P] [--check]`"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from mqvq.cli.common import Home, TrackingUri, cli_errors, console


@cli_errors
def report(
    name: Annotated[str, typer.Argument(help="study name (see `mqvq study list`)")],
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="md, latex, csv or json (default: from --out's suffix, else md)")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="write here (figures go to <stem>-figures/ beside it)")] = None,
    profile: Annotated[str, typer.Option("--profile", "-p", help="the study's profile")] = "smoke",
    check: Annotated[bool, typer.Option("--check", help="state, claim by claim, whether the paper's findings are reproduced")] = False,
    figures: Annotated[bool, typer.Option(help="with --out: also write Figs. 4, 5, 6a, 6b")] = True,
    home: Home = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """The study's table in the paper's layout, with the paper's numbers beside ours."""
    from mqvq.reports.report import render_verdicts, report as make_report, verdicts_json
    from mqvq.tracking import Tracker

    result = make_report(Tracker(tracking_uri, home), name, profile, format, out, check, figures)
    if out is None:
        text = result["text"]
        if check and format == "json":
            data = json.loads(text)
            data["check"] = verdicts_json(result["verdicts"])
            text = json.dumps(data, indent=2) + "\n"
        print(text, end="")
    else:
        console.print(f"wrote {out}" + (f" and {len(result['figures'])} figures" if result["figures"] else ""))
        if check:
            console.print(render_verdicts(result["verdicts"]), markup=False, highlight=False)
