"""A fixed mask that keeps the tokens nearest the image centre, as a position-only bound for the
mask-learning study (no model: its foreground share and AUROC are properties of the data):

    python tools/centre-prior.py

On the same 1,000 test images the study's diagnostics use, at the `cpu` profile's 8x8 grid and 50 %.
"""
import torch

from mqvq.data import build_dataset, eval_batches
from mqvq.metrics.mask import per_image_auroc, token_foreground
from mqvq.studies.spec import load_study, row_config

study = load_study("mask-learning")
print("| data | fixed centre mask: foreground share | AUROC of the distance to the centre |")
print("|---|---|---|")
for row in study.rows:
    if not row.name.endswith("-random"):
        continue
    cfg = row_config(row, "cpu", 0)
    grid = cfg.stage1.data.resolution // cfg.stage1.model.downsample
    yy, xx = torch.meshgrid(torch.arange(grid, dtype=torch.float), torch.arange(grid, dtype=torch.float), indexing="ij")
    c = (grid - 1) / 2
    score = -((yy - c) ** 2 + (xx - c) ** 2).flatten()
    torch.manual_seed(0)
    score = score + torch.rand(grid * grid) * 1e-3  # ties between equally distant tokens broken once, at random
    kept = score.topk(grid * grid // 2).indices
    share = auc_sum = images = 0.0
    tokens = 0
    for batch in eval_batches(build_dataset(cfg.stage1.data, "test"), 500, cfg.eval.test_images):
        fg = token_foreground(batch["fg"], (grid, grid))
        share += fg[:, kept].sum().item()
        tokens += fg[:, kept].numel()
        auc, defined = per_image_auroc(score.expand(fg.shape[0], -1), fg)
        auc_sum += (auc * defined).sum().item()
        images += defined.sum().item()
    print(f"| {row.name.split('-')[0]} | {share / tokens:.3f} | {auc_sum / images:.3f} |")
