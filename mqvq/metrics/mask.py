"""Does the adaptive mask keep the object? Diagnostics of a keep mask against a foreground mask.

On data with a known foreground (Fashion-MNIST, procedural) a token is foreground when most of
its f x f patch is. Over a split (or a validation subset during training) we count:

    mask_fg_precision   share of kept tokens that are foreground (random mask: = fg_token_fraction)
    mask_fg_recall      share of foreground tokens that are kept
    fg_token_fraction   share of all tokens that are foreground
    mask_score_fg/_bg   mean importance score on foreground / background tokens (adaptive only)
    mask_keep_border    how often a position of the latent grid's outer ring is kept
    mask_keep_centre    how often any other position is kept
    mask_edge_precision share of kept tokens on the object's outline (patch partly foreground),
                        beside edge_token_fraction
    mask_auroc          per-image AUROC of the score against the foreground tokens, averaged over
                        images with both kinds of token (1: every foreground token scores above
                        every background one; 0.5: blind; 0: the reverse; adaptive only)
    mask_sauc           shuffled AUROC: the same, with the negatives of image i taken at the tokens that
                        are foreground in the *other* images of the split (`shuffled_auroc`), so
                        that a score which only knows where objects usually are scores 0.5
    mask_detail_ratio   mean pixel std of kept tokens / of all tokens (> 1: the mask keeps the
                        detailed regions, flat ones masked; random = 1; needs no foreground mask)
    mask_score_corr_brightness / _detail   Pearson correlation, over all tokens, of the score with
                        the token's mean brightness / pixel std (adaptive only): a score that
                        tracks brightness with a seed-dependent sign keeps the object or the
                        background by chance (reports/cpu/README.md)

and the keep frequency of every grid position (the heat map `mqvq eval` draws). A mask that
learned importance has precision above the foreground fraction; one that learned the opposite
(or the padding ring of 28 -> 32 px Fashion-MNIST) has it below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_foreground(fg: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) pixel mask -> (B, L) bool: a token is foreground when most of its f x f patch is."""
    frac = F.adaptive_avg_pool2d(fg[:, None].float(), grid)
    return (frac >= 0.5).flatten(1)


def token_edges(fg: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) pixel mask -> (B, L) bool: tokens whose patch is partly foreground (the outline)."""
    frac = F.adaptive_avg_pool2d(fg[:, None].float(), grid).flatten(1)
    return (frac > 0) & (frac < 1)


def token_detail(images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) -> (B, L): pixel standard deviation inside each token's patch (channels averaged)."""
    x = images.float()
    mean = F.adaptive_avg_pool2d(x, grid)
    var = (F.adaptive_avg_pool2d(x * x, grid) - mean * mean).clamp_min(0)
    return var.mean(1).sqrt().flatten(1)


def _wins(scores: torch.Tensor) -> torch.Tensor:
    """(c, L) -> (c, L, L): [b, i, j] = 1 when token i outscores token j in image b, 1/2 on a tie."""
    diff = scores[:, :, None] - scores[:, None, :]
    return (diff > 0).double() + 0.5 * (diff == 0).double()


def per_image_auroc(scores: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """scores (B, L), positive (B, L) bool -> (AUROC per image (B,), defined (B,) bool).

    AUROC = P(score of a positive > score of a negative), ties counted half (Mann-Whitney). Images
    with only positives or only negatives have none (defined False, value 0). Pairwise, in chunks of
    images so that the (chunk, L, L) comparison stays small."""
    s = scores.detach().float()
    pos = positive.bool()
    b, length = s.shape
    out = torch.zeros(b, dtype=torch.float64, device=s.device)
    chunk = max(1, (1 << 22) // (length * length))
    for i in range(0, b, chunk):
        sc, p = s[i : i + chunk], pos[i : i + chunk]
        wins = _wins(sc)
        pairs = p[:, :, None] & ~p[:, None, :]
        out[i : i + chunk] = (wins * pairs).sum((1, 2)) / pairs.sum((1, 2)).clamp_min(1)
    npos = pos.sum(1)
    return out, (npos > 0) & (npos < length)


def shuffled_auroc(scores: torch.Tensor, positive: torch.Tensor) -> float | None:
    """The shuffled AUROC of the saliency benchmarks (Borji, Sihite and Itti, IEEE TIP 2013; the
    MIT/Tübingen benchmark's sAUC, Kümmerer, Wallis and Bethge, ECCV 2018), over a whole split.

    scores (N, L), positive (N, L) bool. For image i the positives are i's scores at i's foreground
    tokens; the negatives are i's scores at the tokens that are foreground in the *other* images,
    each position counted as often as it is foreground there (pooled with multiplicity, the
    Tübingen rule); ties count half. Every (image, positive, negative) triple weighs the same (the
    pairs are pooled over images, not averaged per image), and then a score map that is the same for
    every image, however it is shaped (a centre prior), scores exactly 0.5: with C the per-position
    foreground counts, its wins and losses pair up symmetrically, sum_{p,l} C_p C_l K(p, l) = (sum C)^2 / 2,
    less each image's own pairs, sum_{p,l} F_ip F_il K(p, l) = |F_i|^2 / 2, and the denominator is the same
    difference without the halves. The per-image mean would only come out near 0.5. A score that
    finds each image's own object scores near its AUROC on data where placement is uniform (the
    other images' foreground is then spread everywhere). None when no image has a foreground token."""
    s = scores.detach().float()
    pos = positive.bool()
    b, length = s.shape
    counts = pos.sum(0).double()  # (L,) how often each position is foreground
    num = torch.zeros((), dtype=torch.float64, device=s.device)
    den = torch.zeros((), dtype=torch.float64, device=s.device)
    chunk = max(1, (1 << 22) // (length * length))
    for i in range(0, b, chunk):
        sc, p = s[i : i + chunk], pos[i : i + chunk]
        neg = counts[None] - p.double()  # (c, L) the other images' foreground at each position
        num += ((_wins(sc) * neg[:, None, :]).sum(2) * p).sum()
        den += (p.sum(1).double() * neg.sum(1)).sum()
    return (num / den).item() if den > 0 else None


def foreground_contrast(batches, downsample: int) -> dict:
    """Over batches of {"image", "fg"}: the mean brightness (grey level in [0, 1]) of foreground and
    background pixels, and the share of latent tokens (f = `downsample`) that are foreground, which
    is what a mask blind to content keeps on the foreground; and how much position tells: the
    per-position foreground frequency over the grid, its largest and smallest value and their ratio
    (1.0: a flat map, where position says nothing; None when some position is never foreground)."""
    sums = torch.zeros(4, dtype=torch.float64)  # brightness on fg, fg pixels, brightness on bg, bg pixels
    tokens = torch.zeros(2, dtype=torch.float64)
    per_position, images = None, 0
    for batch in batches:
        grey, fg = (batch["image"].float().mean(1) + 1) / 2, batch["fg"]
        sums += torch.stack([(grey * fg).sum(), fg.sum(), (grey * ~fg).sum(), (~fg).sum()]).double()
        t = token_foreground(fg, (fg.shape[-2] // downsample, fg.shape[-1] // downsample))
        tokens += torch.tensor([t.sum().item(), t.numel()], dtype=torch.float64)
        per_position = t.sum(0).double() if per_position is None else per_position + t.sum(0)
        images += t.shape[0]
    freq = per_position / max(images, 1) if per_position is not None else torch.zeros(1, dtype=torch.float64)
    high, low = float(freq.max()), float(freq.min())
    return {
        "brightness_foreground": round(float(sums[0] / sums[1].clamp_min(1)), 4),
        "brightness_background": round(float(sums[2] / sums[3].clamp_min(1)), 4),
        "foreground_token_fraction": round(float(tokens[0] / tokens[1].clamp_min(1)), 4),
        "downsample": downsample,
        "foreground_frequency_max": round(high, 4),
        "foreground_frequency_min": round(low, 4),
        "foreground_frequency_ratio": round(high / low, 3) if low > 0 else None,
    }


def border_positions(grid: tuple[int, int], device=None) -> torch.Tensor:
    """(L,) bool: True on the outer ring of an h x w grid."""
    h, w = grid
    ring = torch.ones(h, w, dtype=torch.bool, device=device)
    ring[1:-1, 1:-1] = False
    return ring.flatten()


class MaskTally:
    """Running sums of the diagnostics over batches: one host sync, at `result()`."""

    def __init__(self, grid: tuple[int, int], device=None):
        self.grid = grid
        z = lambda: torch.zeros((), dtype=torch.float64, device=device)  # noqa: E731
        self.kept_fg, self.kept, self.fg, self.tokens = z(), z(), z(), z()
        self.score_fg, self.score_bg, self.scored_fg, self.scored_bg = z(), z(), z(), z()
        self.kept_edge, self.edge, self.detail_kept, self.detail_all = z(), z(), z(), z()
        self.detail_tokens = z()
        self.auroc_sum, self.auroc_images = z(), z()
        self.scored: list[
            tuple[torch.Tensor, torch.Tensor]
        ] = []  # (scores, foreground tokens) per batch, for the shuffled AUROC
        self.with_fg = False
        # score vs brightness / detail: n, sum s, sum b, sum d, sum s^2, sum b^2, sum d^2; then sum sb, sum sd
        self.moments = torch.zeros(7, dtype=torch.float64, device=device)
        self.cross = torch.zeros(2, dtype=torch.float64, device=device)
        self.keep_count = torch.zeros(grid[0] * grid[1], dtype=torch.float64, device=device)
        self.fg_count = torch.zeros_like(self.keep_count)
        self.images = 0
        self.border = border_positions(grid, device)

    def add(
        self,
        keep: torch.Tensor,
        fg: torch.Tensor | None = None,
        scores: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
    ) -> None:
        """keep: (B, L) bool; fg: (B, H, W) pixel foreground mask or None; scores: (B, L) or None;
        images: (B, C, H, W) for the detail ratio, or None."""
        dev = self.keep_count.device
        keep = keep.to(dev)
        self.kept += keep.sum()
        self.tokens += keep.numel()
        self.keep_count += keep.sum(0)
        self.images += keep.shape[0]
        if images is not None:
            detail = token_detail(images, self.grid).to(dev)
            self.detail_kept += (detail * keep).sum()
            self.detail_all += detail.sum()
            self.detail_tokens += detail.numel()
            if scores is not None:
                sc = scores.detach().to(dev).double().flatten()
                br = F.adaptive_avg_pool2d(images.float().mean(1, keepdim=True), self.grid).to(dev).double().flatten()
                de = detail.double().flatten()
                self.moments += torch.stack(
                    [
                        sc.new_tensor(sc.numel()),
                        sc.sum(),
                        br.sum(),
                        de.sum(),
                        (sc * sc).sum(),
                        (br * br).sum(),
                        (de * de).sum(),
                    ]
                )
                self.cross += torch.stack([(sc * br).sum(), (sc * de).sum()])
        if fg is None:
            return
        self.with_fg = True
        fg_tokens, edges = token_foreground(fg, self.grid).to(dev), token_edges(fg, self.grid).to(dev)
        self.kept_fg += (keep & fg_tokens).sum()
        self.fg += fg_tokens.sum()
        self.fg_count += fg_tokens.sum(0)
        self.kept_edge += (keep & edges).sum()
        self.edge += edges.sum()
        if scores is not None:
            auroc, defined = per_image_auroc(scores.to(dev), fg_tokens)
            self.auroc_sum += (auroc * defined).sum()
            self.auroc_images += defined.sum()
            self.scored.append((scores.detach().to(dev).float(), fg_tokens))
            s = scores.detach().to(self.keep_count).float()
            self.score_fg += (s * fg_tokens).sum()
            self.score_bg += (s * ~fg_tokens).sum()
            self.scored_fg += fg_tokens.sum()
            self.scored_bg += (~fg_tokens).sum()

    def keep_frequency(self) -> torch.Tensor:
        """(h, w): share of images in which each position was kept."""
        return (self.keep_count / max(self.images, 1)).reshape(self.grid).float().cpu()

    def fg_frequency(self) -> torch.Tensor:
        """(h, w): share of images in which each position is foreground."""
        return (self.fg_count / max(self.images, 1)).reshape(self.grid).float().cpu()

    def result(self) -> dict[str, float]:
        if not self.images:
            return {}
        freq = self.keep_count / self.images
        out = {"mask_keep_border": freq[self.border].mean().item()}
        if (~self.border).any():
            out["mask_keep_centre"] = freq[~self.border].mean().item()
        if self.detail_tokens > 0 and self.detail_all > 0:
            out["mask_detail_ratio"] = (
                (self.detail_kept / self.kept.clamp_min(1)) / (self.detail_all / self.detail_tokens)
            ).item()
        n, s_sum, b_sum, d_sum, s_sq, b_sq, d_sq = self.moments.tolist()
        if n > 1:

            def corr(x_sum, x_sq, sx):
                var_s, var_x = s_sq / n - (s_sum / n) ** 2, x_sq / n - (x_sum / n) ** 2
                return (sx / n - s_sum * x_sum / n**2) / (var_s * var_x) ** 0.5 if var_s > 0 and var_x > 0 else 0.0

            sb, sd = self.cross.tolist()
            out["mask_score_corr_brightness"] = corr(b_sum, b_sq, sb)
            out["mask_score_corr_detail"] = corr(d_sum, d_sq, sd)
        if not self.with_fg:
            return out
        out |= {
            "mask_fg_precision": (self.kept_fg / self.kept.clamp_min(1)).item(),
            "mask_fg_recall": (self.kept_fg / self.fg.clamp_min(1)).item(),
            "fg_token_fraction": (self.fg / self.tokens.clamp_min(1)).item(),
            "mask_edge_precision": (self.kept_edge / self.kept.clamp_min(1)).item(),
            "edge_token_fraction": (self.edge / self.tokens.clamp_min(1)).item(),
        }
        if self.auroc_images > 0:
            out["mask_auroc"] = (self.auroc_sum / self.auroc_images).item()
        if self.scored:
            sauc = shuffled_auroc(torch.cat([s for s, _ in self.scored]), torch.cat([f for _, f in self.scored]))
            if sauc is not None:
                out["mask_sauc"] = sauc
        if self.scored_fg + self.scored_bg > 0:
            if self.scored_fg > 0:
                out["mask_score_fg"] = (self.score_fg / self.scored_fg).item()
            if self.scored_bg > 0:
                out["mask_score_bg"] = (self.score_bg / self.scored_bg).item()
        return out


MASK_METRICS = (
    "mask_fg_precision",
    "mask_auroc",
    "mask_sauc",
    "mask_damage_fg",
    "mask_damage_bg",
    "mask_fg_recall",
    "fg_token_fraction",
    "mask_score_fg",
    "mask_score_bg",
    "mask_keep_border",
    "mask_keep_centre",
    "mask_edge_precision",
    "edge_token_fraction",
    "mask_detail_ratio",
    "mask_score_corr_brightness",
    "mask_score_corr_detail",
)
