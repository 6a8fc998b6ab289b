"""Does a trained model's own decoder find the object costlier to drop than the background?

    python tools/damage-equilibrium.py HOME [ROW ...]      (default rows: every *-damage* row)

For each finished stage-1 run of the mask-learning study's damage rows in the store at HOME: its
decoder reconstructs 512 test images under two random probe masks of its kept count (the target the
damage selector learns from, `MQVAE.probe_damage`; a mask and its complement at 50 %), and the mean
damage of foreground and of background tokens is printed beside the run's foreground share of kept
tokens. `mqvq eval` logs the same measure as `mask_damage_fg` / `mask_damage_bg` for every masked model. A decoder co-trained
with a selector learns to restore what that selector drops; if the damage it measures favours the
tokens the selector already keeps, whichever they are, the selection confirms itself.
"""

import sys
from pathlib import Path

import torch

from mqvq.data import build_dataset, eval_batches
from mqvq.metrics.mask import token_foreground
from mqvq.models.mqvae import MQVAE
from mqvq.stages.lookup import model_file
from mqvq.studies.spec import load_study, row_config
from mqvq.tracking.store import Tracker


def main(home: str, rows: list[str]) -> None:
    torch.set_num_threads(1)
    tracker = Tracker(home=Path(home), must_exist=True)
    study = load_study("mask-learning")
    wanted = rows or [r.name for r in study.rows if "damage" in r.name]
    print(
        "| row | seed | foreground share of kept tokens | damage of dropping a foreground token | of a background token |"
    )
    print("|---|---|---|---|---|")
    for row in study.rows:
        if row.name not in wanted:
            continue
        data = build_dataset(row_config(row, "cpu", 0).stage1.data, "test")
        runs = tracker.client.search_runs(
            [e.experiment_id for e in tracker.client.search_experiments()],
            f"tags.`mqvq.row` = '{row.name}' and tags.`mqvq.stage` = 'stage1' and attributes.status = 'FINISHED'",
        )
        for run in sorted(runs, key=lambda r: int(r.data.tags.get("mqvq.seed", 0))):
            model = MQVAE.from_checkpoint(model_file(tracker, run.info.run_id))
            probes = torch.Generator().manual_seed(0)
            fg_damage, bg_damage = [], []
            with torch.no_grad():
                for batch in eval_batches(data, 256, 512):
                    x = batch["image"]
                    d, valid = model.probe_damage(x, probes)
                    f = model.config.downsample
                    t = token_foreground(batch["fg"], (x.shape[-2] // f, x.shape[-1] // f))
                    fg_damage.append(d[t & valid])
                    bg_damage.append(d[~t & valid])
            share = run.data.metrics.get(
                "mask_fg_precision", run.data.metrics.get("val/mask_fg_precision", float("nan"))
            )
            print(
                f"| {row.name} | {run.data.tags.get('mqvq.seed')} | {share:.3f} | {torch.cat(fg_damage).mean():.4f} "
                f"| {torch.cat(bg_damage).mean():.4f} |"
            )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".mqvq-ml", sys.argv[2:])
