"""`mqvq data show`: what an experiment's data resolves to, before any training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from mqvq.cli.common import HELP_MARKUP, Profile, Sets, cli_errors, console, table
from mqvq.errors import UserError

app = typer.Typer(
    rich_markup_mode=HELP_MARKUP,
    no_args_is_help=True,
    help="Datasets: check what an experiment will train and evaluate on.",
)


@app.command("show")
@cli_errors
def show(
    experiment: Annotated[str, typer.Argument(help="experiment name or .toml path")],
    profile: Profile = "smoke",
    set_: Sets = None,
    preview: Annotated[
        Optional[Path],
        typer.Option("--preview", help="write a PNG of the first training images (and their foreground masks)"),
    ] = None,
    num: Annotated[int, typer.Option("--num", min=1, max=64, help="images in the preview")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Split sizes, classes, digests and foreground share of the experiment's dataset (stage1.data)."""
    from mqvq.data import eval_batches
    from mqvq.data.inspect import describe, load_splits
    from mqvq.metrics.mask import foreground_contrast
    from mqvq.experiments import load_experiment

    stage1 = load_experiment(experiment, profile, set_ or []).stage1
    cfg = stage1.data
    if preview is not None and preview.suffix.lower() != ".png":
        raise UserError(f"--preview {preview}: the preview is a PNG, give a path ending in .png.")
    splits = load_splits(cfg)
    info = describe(cfg, splits)
    for split, ds in splits.items():  # what a blind mask keeps on the foreground, and whether brightness tells it apart
        if "foreground_fraction" in info["splits"][split]:
            info["splits"][split] |= foreground_contrast(eval_batches(ds, 500), stage1.model.downsample)
    if preview is not None:
        info["preview"] = str(_write_preview(cfg, splits["train"], preview, num))
    if as_json:
        print(json.dumps(info, indent=2))
        return
    head = f"[bold]{info['name']}[/] {info['resolution']}x{info['resolution']}  root {info['root']}"
    console.print(
        head
        + (f"  style {info['style']}" if info["style"] else "")
        + (f"  placement {info['placement']}" if info["placement"] else "")
        + (f"  layout {info['layout']}" if info["layout"] else "")
        + (f"  fit {info['fit']}" if info["fit"] else "")
        + f"  augment {info['augment']}",
        highlight=False,
    )
    rows = []
    for split, s in info["splits"].items():
        classes = f"{len(s['classes'])}" + (
            f" (per class {min(s['per_class'])}–{max(s['per_class'])})" if s.get("per_class") else ""
        )
        fg = f"{s['foreground_fraction']:.1%}" if "foreground_fraction" in s else "—"
        tokens = f"{s['foreground_token_fraction']:.1%}" if "foreground_token_fraction" in s else "—"
        bright = (
            f"{s['brightness_foreground']:.2f} / {s['brightness_background']:.2f}"
            if "brightness_foreground" in s
            else "—"
        )
        rows.append(
            [split, str(s["images"]), classes if s["classes"] else "—", fg, tokens, bright, _flatness(s), s["digest"]]
        )
    f = stage1.model.downsample
    console.print(
        table(
            [
                "split",
                "images",
                "classes",
                "foreground",
                f"fg tokens (f = {f})",
                "brightness fg / bg",
                "fg per position max / min",
                "digest",
            ],
            rows,
            numeric=("images",),
        )
    )
    if "preview" in info:
        console.print(f"preview: {info['preview']}", highlight=False)


def _flatness(s: dict) -> str:
    """'3.2 (0.41 / 0.13)': how much more often the likeliest position is foreground than the least
    likely one (1.0: flat, position says nothing; ∞: some position never is)."""
    if "foreground_frequency_max" not in s:
        return "—"
    ratio = s["foreground_frequency_ratio"]
    return f"{'∞' if ratio is None else f'{ratio:.1f}'} ({s['foreground_frequency_max']:.2f} / {s['foreground_frequency_min']:.2f})"


def _write_preview(cfg, train, path: Path, num: int) -> Path:
    from PIL import Image

    from mqvq.data.inspect import preview
    from mqvq.tracking.location import ensure_writable

    ensure_writable(path.parent, "--preview")
    Image.fromarray(preview(cfg, "train", num, dataset=train)).save(path)
    return path
