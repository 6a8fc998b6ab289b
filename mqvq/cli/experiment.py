"""`mqvq experiment list|show|fields`"""
from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from mqvq.cli.common import Profile, Sets, cli_errors, console

app = typer.Typer(no_args_is_help=True, help="Declared experiments and their resolved configs.")


@app.command("list")
@cli_errors
def list_() -> None:
    """Every experiment in experiments/ with its description."""
    from mqvq.experiments import PROFILES, list_experiments

    table = Table("experiment", "description")
    for name, desc in list_experiments().items():
        table.add_row(name, desc)
    console.print(table)
    console.print("profiles: " + "; ".join(f"[bold]{k}[/] {p.description}" for k, p in PROFILES.items()))


@app.command("show")
@cli_errors
def show(experiment: Annotated[str, typer.Argument(help="experiment name or .toml path")], profile: Profile = "smoke",
         set_: Sets = None) -> None:
    """Print the fully resolved config (JSON) of an experiment under a profile."""
    from mqvq.config import to_dict
    from mqvq.experiments import load_experiment

    print(json.dumps(to_dict(load_experiment(experiment, profile, set_ or [])), indent=2))


@app.command("fields")
def fields_() -> None:
    """Every config field with its default and meaning."""
    from mqvq.config import field_help

    table = Table("field", "default", "meaning")
    for name, default, help_ in field_help():
        table.add_row(name, default, help_)
    console.print(table)
