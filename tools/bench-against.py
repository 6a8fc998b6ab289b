#!/usr/bin/env python3
"""Speed of this tree against an earlier commit, measured in one process (interleaved A B A B ...,
order alternating, medians of paired CPU-time ratios), so load swings on a shared machine cancel.

    python tools/bench-against.py REV [--threads 1] [--rounds 8] [--out FILE.json] [--into BENCH.json]

REV's `mqvq` is copied as `mqvq_base` (imports renamed) into a temporary folder; both run the
same model weights on the same inputs:
  - stage-1 G + D training step: 64 px, f = 16, ch 32, K 1024, 25 % adaptive mask, LPIPS-VGG16
    (random weights) + PatchGAN (3 layers, 64 ch) with the adaptive weight, batch 4, each tree in the
    memory layout its training loop uses;
  - sampling (Algorithm 1), Stackformer preset `cpu`, K 1024, batch 16, top-k 100 / top-p 0.95
    (positions 10 / 0.95): cached at 25 % on 16x16 and on 4x4 (64 px at f = 16), uncached at 25 % on 8x8, and the
    50 % vs 0 % (raster baseline) speed-up on 16x16 and 4x4 for both trees.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from mqvq.timing import interleaved, paired_ratio

ROOT = Path(__file__).resolve().parents[1]


def base_package(rev: str, into: Path) -> None:
    """REV's mqvq/ as `mqvq_base`, every `mqvq` import pointing at the copy."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "mqvq"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "mqvq").rename(into / "mqvq_base")
    for f in (into / "mqvq_base").rglob("*.py"):
        text = re.sub(r"\b(from|import) mqvq\b(?=[. ])", r"\1 mqvq_base", f.read_text())
        f.write_text(text)


def cpu_times(a, b, rounds: int, n: int = 1) -> tuple[list[float], list[float]]:
    """CPU seconds per call of a and b (each measurement `n` calls), interleaved by mqvq.timing."""
    import torch

    times, _ = interleaved(
        {"a": lambda: [a() for _ in range(n)], "b": lambda: [b() for _ in range(n)]}, torch.device("cpu"), rounds=rounds
    )
    return [t / n for t in times["a"]["cpu"]], [t / n for t in times["b"]["cpu"]]


def summary(ta, tb, per: int) -> dict:
    return {
        "main_per_s": per / statistics.median(ta),
        "new_per_s": per / statistics.median(tb),
        "speedup_median_paired": paired_ratio(ta, tb),
        "paired": [round(x / y, 3) for x, y in zip(ta, tb)],
    }


def stage1(rounds: int) -> dict:
    import torch

    import mqvq.models.losses as new_losses
    import mqvq.models.lpips as new_lpips
    import mqvq_base.models.losses as old_losses
    import mqvq_base.models.lpips as old_lpips
    from mqvq.experiments import load_experiment
    from mqvq.bench import stage1_step
    from mqvq.models.mqvae import MQVAE

    sets = [
        "stage1.data.resolution=64",
        "stage1.model.channels=32",
        "stage1.model.quantizer.codebook_size=1024",
        "stage1.loss.disc_layers=3",
        "stage1.loss.disc_channels=64",
        "stage1.loss.disc_start=0",
        "stage1.train.batch_size=4",
    ]
    cfg = load_experiment("mqvae-f16-adaptive-25", "smoke", sets).stage1
    torch.manual_seed(0)
    models = {"main": MQVAE(cfg.model).train()}
    models["new"] = copy.deepcopy(models["main"])
    lp_new, lp_old = new_lpips.LPIPS("vgg"), old_lpips.LPIPS("vgg")
    lp_old.load_state_dict(lp_new.state_dict())
    fns = {"new": new_losses.Stage1Loss(cfg.loss, lp_new), "main": old_losses.Stage1Loss(cfg.loss, lp_old)}
    fns["main"].disc.load_state_dict(fns["new"].disc.state_dict())
    cpu = torch.device("cpu")
    # each tree in the layout its own training loop uses: 355b995 trained contiguous
    main = stage1_step(models["main"], fns["main"], cfg, cpu, False, layout=torch.contiguous_format)
    new = stage1_step(models["new"], fns["new"], cfg, cpu, False)
    ta, tb = cpu_times(main, new, rounds, n=3)
    return {"figure": "stage-1 training step (G + D), img/s", "overrides": sets} | summary(ta, tb, 4)


def sampling(rounds: int) -> dict:
    import torch

    import mqvq.models.sampling as new_s
    import mqvq_base.models.sampling as old_s
    from mqvq.config import STACKFORMER_PRESETS, SamplingConfig, StackformerConfig, num_kept
    from mqvq.models.stackformer import Stackformer, TokenShape

    params = SamplingConfig(top_k=100, top_p=0.95, top_k_pos=10, top_p_pos=0.95)
    batch = 16

    def model(kind: str, grid: int, ratio: float):
        sizes = STACKFORMER_PRESETS[
            "cpu"
        ]  # a dict of fields; revisions before 2026-12 kept a (code, position, width, heads) tuple
        if not isinstance(sizes, dict):
            sizes = dict(zip(("code_layers", "position_layers", "width", "heads"), sizes))
        torch.manual_seed(0)
        n = grid * grid if kind == "raster" else num_kept(grid * grid, ratio)
        cfg = StackformerConfig(kind=kind, preset="cpu", **sizes, dropout=0.0)
        return Stackformer(cfg, TokenShape(1024, (grid, grid), n)).eval()

    out = {}
    m = model("stackformer", 16, 0.25)
    out["cached_25_grid16"] = summary(
        *cpu_times(lambda: old_s.generate(m, batch, params), lambda: new_s.generate(m, batch, params), rounds), batch
    )
    m4 = model("stackformer", 4, 0.25)  # the 64 px at f = 16: 12 tokens
    out["cached_25_grid4"] = summary(
        *cpu_times(lambda: old_s.generate(m4, batch, params), lambda: new_s.generate(m4, batch, params), rounds), batch
    )
    m8 = model("stackformer", 8, 0.25)
    out["uncached_25_grid8"] = summary(
        *cpu_times(
            lambda: old_s.generate(m8, batch, params, use_cache=False),
            lambda: new_s.generate(m8, batch, params, use_cache=False),
            max(2, rounds // 2),
        ),
        batch,
    )
    for grid in (16, 4):
        m50, m0 = model("stackformer", grid, 0.5), model("raster", grid, 0.0)
        for name, gen in (("main", old_s.generate), ("new", new_s.generate)):
            ta, tb = cpu_times(lambda: gen(m0, batch, params), lambda: gen(m50, batch, params), rounds)
            out[f"speedup_50_vs_0_grid{grid}_{name}"] = paired_ratio(ta, tb)
    return {"figure": "sampling img/s (Algorithm 1)", "preset": "cpu", "batch_size": batch} | out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--out", type=Path, help="write the result here")
    ap.add_argument(
        "--into", type=Path, help="add the result to this JSON file (e.g. a `bench all` result) as `before_after`"
    )
    args = ap.parse_args()
    if args.into and not args.into.is_file():
        sys.exit(
            f"bench-against: {args.into} does not exist: write it first (e.g. mqvq bench all --quick --out {args.into})."
        )
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        base_package(args.rev, Path(tmp))
        sys.path.insert(0, tmp)
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", args.rev], capture_output=True, text=True
        ).stdout.strip()
        head = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
        ).stdout.strip()
        result = {
            "main": rev,
            "new": head,
            "threads": args.threads,
            "rounds": args.rounds,
            "timer": "CPU time (process_time)",
            "stage1": stage1(args.rounds),
            "sampling": sampling(args.rounds),
            "load_average": os.getloadavg(),
            "torch": torch.__version__,
            "device": "cpu",
        }
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.into:
        merged = json.loads(args.into.read_text()) | {"before_after": result}
        args.into.write_text(json.dumps(merged, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
