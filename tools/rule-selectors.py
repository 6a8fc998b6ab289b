"""The selectors that need no model, measured on a study's data sets without training anything:

    python tools/rule-selectors.py [STUDY ...]        (default: mask-learning mask-position)

The centre prior, the entropy rule and the foreground oracle choose their tokens from the position,
the pixels or the foreground mask alone, so their foreground share, AUROC and shuffled AUROC are
properties of the data: here they are computed with the selectors' own code (`mqvq.models.selectors`)
and the study's diagnostics (`MaskTally`) on the test images its evaluation uses (`eval.test_images`),
at the `cpu` profile's grid and each study's 50 % mask, one line per data set of the study (named
after its random row). The per-position foreground frequency (max / min over the grid) says how much
position alone tells.
"""

import sys

import torch

from mqvq.config import num_kept
from mqvq.data import build_dataset, eval_batches
from mqvq.metrics.mask import MaskTally, foreground_contrast
from mqvq.models.selectors import CentreMask, EntropyMask, OracleForegroundMask
from mqvq.studies.spec import load_study, row_config


def main(studies: list[str]) -> None:
    import datetime

    from mqvq.tracking.provenance import git_commit

    torch.set_num_threads(1)
    print(
        f"Model-free selectors on every data set of {', '.join(studies)} (`python tools/rule-selectors.py`, git {git_commit()}, "
        f"{datetime.date.today()}, CPU, torch {torch.__version__}, 1 thread): 50 % mask at the `cpu` profile's grid (8 x 8; "
        "translated Fashion-MNIST 12 x 12), on the test images each study evaluates on. These selectors choose from position, "
        "pixels or the foreground mask alone, so nothing is trained. 'fg per position max / min': how much more often the "
        "likeliest grid position is foreground than the least likely one (1 = flat; ∞: some position never is).\n"
    )
    print("| study | data | fg per position max / min | selector | foreground share | AUROC | shuffled AUROC |")
    print("|---|---|---|---|---|---|---|")
    for name in studies:
        study = load_study(name)
        for row in study.rows:
            if not row.name.endswith("-random"):
                continue
            cfg = row_config(row, "cpu", 0)
            f, ratio = cfg.stage1.model.downsample, cfg.stage1.model.mask.ratio
            grid = (cfg.stage1.data.resolution // f,) * 2
            data = build_dataset(cfg.stage1.data, "test")
            info = foreground_contrast(eval_batches(data, 500, cfg.eval.test_images), f)
            flat = "∞" if info["foreground_frequency_ratio"] is None else f"{info['foreground_frequency_ratio']:.2f}"
            for label, selector in (
                ("centre prior", CentreMask(ratio)),
                ("entropy rule", EntropyMask(ratio)),
                ("foreground oracle", OracleForegroundMask(ratio)),
            ):
                torch.manual_seed(0)  # the oracle breaks ties at random
                tally = MaskTally(grid)
                for batch in eval_batches(data, 500, cfg.eval.test_images):
                    z = torch.zeros(batch["image"].shape[0], 1, *grid)
                    out = selector(z, images=batch["image"], fg=batch["fg"])
                    assert out.positions.shape[1] == num_kept(grid[0] * grid[1], ratio)
                    tally.add(out.keep, batch["fg"], out.scores, batch["image"])
                r = tally.result()
                print(
                    f"| {name} | {row.name.rsplit('-', 1)[0]} | {flat} | {label} | {r['mask_fg_precision']:.3f} "
                    f"(blind {r['fg_token_fraction']:.3f}) | {r['mask_auroc']:.3f} | {r['mask_sauc']:.3f} |"
                )


if __name__ == "__main__":
    main(sys.argv[1:] or ["mask-learning", "mask-position"])
