"""`mqvq sample RUN --num N --out DIR`"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from mqvq.cli.common import Device, Home, Progress, TrackingUri, cli_errors, console, open_tracker


@cli_errors
def sample(
    run: Annotated[
        str,
        typer.Argument(
            help="stage-2 MLflow run id, logged model (m-..., models:/...), model checkpoint (.pt) or STUDY:ROW (that row's stage-2 run)"
        ),
    ],
    num: Annotated[int, typer.Option("--num", "-n", help="number of images")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for 000000.png, 000001.png, ...")],
    batch_size: Annotated[
        Optional[int], typer.Option(help="images per batch (default: the run's stage2.sampling.batch_size)")
    ] = None,
    top_k: Annotated[Optional[int], typer.Option(help="codes: top-k (>= 1)")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="codes: top-p in (0, 1]")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="codes: temperature (> 0)")] = None,
    top_k_pos: Annotated[Optional[int], typer.Option(help="positions: top-k (>= 1)")] = None,
    top_p_pos: Annotated[Optional[float], typer.Option(help="positions: top-p in (0, 1]")] = None,
    temperature_pos: Annotated[Optional[float], typer.Option(help="positions: temperature (> 0)")] = None,
    class_label: Annotated[
        Optional[int],
        typer.Option(help="class-conditional models: one class for every image (default: cycle through classes)"),
    ] = None,
    prompt: Annotated[
        Optional[list[str]],
        typer.Option(
            "--prompt", "-p", help="text-conditional models: a caption (repeatable; images cycle through the prompts)"
        ),
    ] = None,
    prompts: Annotated[
        Optional[Path], typer.Option("--prompts", help="text-conditional models: a file with one caption per line")
    ] = None,
    cfg_scale: Annotated[
        Optional[float],
        typer.Option(
            help="classifier-free guidance scale (1 = none; needs a model trained with stage2.train.cond_dropout > 0)"
        ),
    ] = None,
    steps: Annotated[
        Optional[int], typer.Option(help="tokens to sample per image (default and maximum: the model's N)")
    ] = None,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    sampling: Annotated[
        str,
        typer.Option(
            help="default (the run's stage2.sampling) or best (the best settings a `mqvq search sampling` found)"
        ),
    ] = "default",
    npz: Annotated[bool, typer.Option("--npz", help="also write samples.npz (images, codes, positions)")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace samples already in --out")] = False,
    profile: Annotated[str, typer.Option("--profile", help="the profile of a STUDY:ROW run")] = "smoke",
    device: Device = None,
    home: Home = None,
    tracking_uri: TrackingUri = None,
    progress: Progress = True,
) -> None:
    """Sample images with Algorithm 1 (KV-cached, batched) and write them as PNGs."""
    from mqvq.runtime import setup
    from mqvq.studies.plan import run_spec
    from mqvq.stages.generate import (
        check_top_k,
        load_generator,
        read_prompts,
        resolve_sampling,
        sampling_params,
        unknown_words_note,
        write_samples,
    )

    texts = read_prompts(prompt, prompts)  # before any model is loaded: a missing file is the user's first answer
    d = setup(device)
    tracker = open_tracker(tracking_uri, home)
    gen = load_generator(tracker, run_spec(tracker, run, profile, "stage2"), d.device)
    base = resolve_sampling(tracker, gen, sampling)
    shape = gen.stackformer.shape
    for name, value in (("top_k", top_k), ("top_k_pos", top_k_pos)):
        if value is not None:
            check_top_k(name, value, shape.codebook_size, shape.grid_len)
    params = sampling_params(
        base,
        batch_size=batch_size,
        top_k=top_k,
        top_p=top_p,
        temperature=temperature,
        top_k_pos=top_k_pos,
        top_p_pos=top_p_pos,
        temperature_pos=temperature_pos,
        cfg_scale=cfg_scale,
    )
    if gen.tokenizer is not None and texts:
        unknown = unknown_words_note(gen.tokenizer, texts, num)
        if unknown:
            console.print(f"[yellow]note[/]: not in the model's caption vocabulary, read as <unk>: {escape(unknown)}")
    result = write_samples(
        gen,
        out,
        num,
        params,
        class_label=class_label,
        prompts=texts,
        seed=seed,
        steps=steps,
        npz=npz,
        overwrite=overwrite,
        progress=progress,
    )
    console.print(f"[green]wrote[/] {result['num']} images to {result['out']} ({result['images_per_s']:.1f} img/s)")
    (out / "sampling.json").write_text(json.dumps(result, indent=2))
