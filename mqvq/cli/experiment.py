"""`mqvq experiment list|show|fields`"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from mqvq.cli.common import AsJson, HELP_MARKUP, Profile, Sets, cli_errors, console, print_json, table

app = typer.Typer(
    rich_markup_mode=HELP_MARKUP, no_args_is_help=True, help="Declared experiments and their resolved configs."
)


@app.command("list")
@cli_errors
def list_(as_json: AsJson = False) -> None:
    """Every experiment in experiments/ with its description."""
    from mqvq.experiments import PROFILES, list_experiments

    if as_json:
        print_json(
            {
                "experiments": [{"name": k, "description": v} for k, v in list_experiments().items()],
                "profiles": {k: p.description for k, p in PROFILES.items()},
            }
        )
        return
    console.print(table(["experiment", "description"], [[k, v] for k, v in list_experiments().items()]))
    console.print("profiles: " + "; ".join(f"[bold]{k}[/] {p.description}" for k, p in PROFILES.items()))


@app.command("show")
@cli_errors
def show(
    experiment: Annotated[str, typer.Argument(help="experiment name or .toml path")],
    profile: Profile = "smoke",
    set_: Sets = None,
) -> None:
    """Print the fully resolved config (JSON) of an experiment under a profile."""
    from mqvq.config import to_dict
    from mqvq.experiments import load_experiment

    print(json.dumps(to_dict(load_experiment(experiment, profile, set_ or [])), indent=2))


@app.command("fields")
@cli_errors
def fields_(as_json: AsJson = False) -> None:
    """Every config field with its default and meaning."""
    from mqvq.config import field_help

    if as_json:
        print_json({"fields": [{"field": n, "default": d, "meaning": h} for n, d, h in field_help()]})
        return
    console.print(table(["field", "default", "meaning"], [list(f) for f in field_help()]))
