"""The `mqvq` command line: thin commands over library functions."""

from __future__ import annotations

import gc

import typer

from mqvq.cli import bench, common, data, evaluate, experiment, report, sample, search, study, train, ui, weights
from mqvq.signals import stop_on_sigterm

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=common.HELP_MARKUP,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="mqvq: Masked Vector Quantization (MQ-VAE + Stackformer) — train, evaluate, study, report.",
)
app.add_typer(train.app, name="train")
app.add_typer(experiment.app, name="experiment")
app.add_typer(weights.app, name="weights")
app.add_typer(data.app, name="data")
app.add_typer(bench.app, name="bench")
app.command("sample")(sample.sample)
app.command("eval")(evaluate.evaluate)
app.add_typer(study.app, name="study")
app.add_typer(search.app, name="search")
app.command("report")(report.report)
app.command("ui")(ui.ui)


def main() -> None:
    # Importing mlflow and torch allocates millions of objects, and the collector's default
    # thresholds walk them hundreds of times: 0.3 s of a 1.7 s `study status`. Collections still
    # run, only less often.
    gc.set_threshold(100_000, 50, 1000)
    common.QUICK_EXIT = True
    stop_on_sigterm()
    app()
