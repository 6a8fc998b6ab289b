"""Every metric a study, a report or `mqvq eval` names, defined once: its logged name under each
feature backend, its label, which way is better, its decimals, the stage whose run logs it, the
paper's column it compares with, and its variants (guided sampling `_cfg`, searched sampling
`_best`). Free of torch, so that `study status` and `plan` start fast.

A Fréchet distance is FID only on Inception features; on VGG16 features it is FD-VGG16
(`fd_vgg16`, `rfd_vgg16`), so a table never mixes the two under one name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BACKENDS = ("inception", "vgg16")
GUIDED_SUFFIX = "_cfg"  # measured with classifier-free guidance at eval.cfg_scale
BEST_SUFFIX = "_best"  # measured with the sampling settings a search found


@dataclass(frozen=True)
class Metric:
    key: str  # the study's name for it (rfid, fid, usage, mask, ...)
    names: dict[str, str]  # feature backend ("" when it has none) -> the metric's logged name
    labels: dict[str, str]  # backend -> header (unit in parentheses)
    short: str | dict[str, str]  # LaTeX header short enough for one column of a two-column paper
    lower: bool | None  # lower is better; None: a diagnostic with no better direction
    decimals: int
    stage: str  # the stage whose run logs it
    paper: str | None = None  # the paper's column it compares with (paper.py's key)
    auto: bool = False  # shown beside a declared metric, never declared itself
    variants: tuple[str, ...] = field(default=())  # suffixes it is also measured with

    def name(self, backend: str = "") -> str:
        """Its logged name under `backend` (a metric of one backend, IS, has that name under any)."""
        return self.names.get(backend) or self.names.get("") or next(iter(self.names.values()))

    def label(self, backend: str = "") -> str:
        return self.labels.get(backend) or self.labels.get("") or next(iter(self.labels.values()))


def _fd(key, stem_i, stem_v, label_i, label_v, short_i, short_v, stage, paper=None, variants=()):
    return Metric(
        key,
        {"inception": stem_i, "vgg16": stem_v},
        {"inception": label_i, "vgg16": label_v},
        {"inception": short_i, "vgg16": short_v},
        True,
        2,
        stage,
        paper,
        variants=variants,
    )


def _one(key, name, label, short, lower, decimals, stage, paper=None, auto=False):
    return Metric(key, {"": name}, {"": label}, short, lower, decimals, stage, paper, auto)


# the seconds per training step a stage run logs, one name per stage (a row copies both stages' metrics
# into one place); runs logged before had one name for both, read through `named_step_seconds`
STEP_SECONDS = {"stage1": "time/stage1_step_seconds", "stage2": "time/stage2_step_seconds"}
LEGACY_STEP_SECONDS = "time/step_seconds"
TOKENIZE_SECONDS = "time/tokenize_seconds"  # stage 2's one-off tokenizing of its data: part of the row's cost
TRAIN_LOSS, VAL_LOSS = "train/loss", "val/loss"  # the loss curves (Fig. 6a) and the loss a trainer prints


def named_step_seconds(metrics: dict[str, float], stage: str) -> dict[str, float]:
    """`metrics` with an older run's `time/step_seconds` also under its stage's name: on a stage run
    it was that stage's; on a row, the last stage copied (stage 2 when the row has one)."""
    if LEGACY_STEP_SECONDS in metrics and stage in STEP_SECONDS and STEP_SECONDS[stage] not in metrics:
        return metrics | {STEP_SECONDS[stage]: metrics[LEGACY_STEP_SECONDS]}
    return metrics


REGISTRY: dict[str, Metric] = {
    m.key: m
    for m in (
        _fd("rfid", "rfid", "rfd_vgg16", "rFID", "rFD-VGG16", "rFID", "rFD", "stage1", "rfid"),
        _fd("fid", "fid", "fd_vgg16", "FID", "FD-VGG16", "FID", "FD", "stage2", "fid", (GUIDED_SUFFIX, BEST_SUFFIX)),
        _fd(
            "fid_best",
            "fid" + BEST_SUFFIX,
            "fd_vgg16" + BEST_SUFFIX,
            "FID (best sampling)",
            "FD-VGG16 (best sampling)",
            "FID*",
            "FD*",
            "stage2",
            "fid",
        ),
        _fd(
            "fid_cfg",
            "fid" + GUIDED_SUFFIX,
            "fd_vgg16" + GUIDED_SUFFIX,
            "FID (guided)",
            "FD-VGG16 (guided)",
            "FID$_g$",
            "FD$_g$",
            "stage2",
        ),
        _one("attr", "attr_acc", "caption match (%)", "Match", False, 1, "stage2"),
        _one("attr_cfg", "attr_acc" + GUIDED_SUFFIX, "caption match guided (%)", "Match$_g$", False, 1, "stage2"),
        _one("attr_real", "attr_acc_real", "real images (%)", "Real", None, 1, "stage2"),
        _one("attr_chance", "attr_acc_chance", "shuffled captions (%)", "Chance", None, 1, "stage2"),
        _one("usage", "usage", "usage (%)", "Use (\\%)", False, 2, "stage1", "usage"),
        _one("usage_effective", "usage_effective", "effective usage (%)", "Eff. (\\%)", False, 2, "stage1", auto=True),
        _one("mask", "mask_fg_precision", "kept on foreground", "FG", False, 3, "stage1"),
        _one("detail", "mask_detail_ratio", "detail kept / mean", "Detail", False, 3, "stage1", auto=True),
        _one("auroc", "mask_auroc", "AUROC score vs foreground", "AUC", False, 3, "stage1"),
        _one("sauc", "mask_sauc", "shuffled AUROC (0.5: position only)", "sAUC", False, 3, "stage1"),
        _one("damage_fg", "mask_damage_fg", "damage: drop a foreground token", "Dmg FG", None, 4, "stage1"),
        _one("damage_bg", "mask_damage_bg", "damage: drop a background token", "Dmg BG", None, 4, "stage1"),
        _one("cost", STEP_SECONDS["stage1"], "stage-1 s / step", "s/step", None, 3, "stage1"),
        _one("fg_fraction", "fg_token_fraction", "foreground tokens", "FG tok.", None, 3, "stage1"),
        _one("keep_border", "mask_keep_border", "kept at border", "Border", None, 3, "stage1"),
        _one("keep_centre", "mask_keep_centre", "kept in centre", "Centre", None, 3, "stage1"),
        _one("score_brightness", "mask_score_corr_brightness", "r(score, brightness)", "$r$", None, 2, "stage1"),
        _one("psnr", "psnr", "PSNR", "PSNR", False, 2, "stage1"),
        _one("lpips", "lpips", "LPIPS", "LPIPS", True, 3, "stage1"),
        Metric("is", {"inception": "is"}, {"inception": "IS"}, "IS", False, 2, "stage2"),
        _one("speed", "speed_images_per_s", "img/s", "img/s", False, 1, "stage2"),
        _one("speedup", "speedup", "speed-up vs 0 %", "Speed-up", False, 2, "stage2", "speedup"),
    )
}
GUIDED = {"fid": "fid_cfg", "attr": "attr_cfg"}  # a family -> its guided twin, shown after it when the runs have it


def metric(key: str) -> Metric:
    return REGISTRY[key]


def frechet(kind: str, backend: str) -> str:
    """The logged name of `kind` (rfid or fid) under `backend`: fid / rfid only on Inception features."""
    return REGISTRY[kind].name(backend)


def metric_names(backend: str) -> dict[str, str]:
    """{"fid": ..., "rfid": ...} under `backend`."""
    return {k: frechet(k, backend) for k in ("fid", "rfid")}


def backend_of(name: str) -> str | None:
    """The feature backend a Fréchet metric's logged name implies (None for other metrics)."""
    base = strip_variants(name)
    return next((b for m in (REGISTRY["rfid"], REGISTRY["fid"]) for b, n in m.names.items() if n == base), None)


def guided(name: str) -> str:
    return name + GUIDED_SUFFIX


def best(name: str) -> str:
    return name + BEST_SUFFIX


def strip_variants(name: str) -> str:
    for suffix in (GUIDED_SUFFIX, BEST_SUFFIX):
        if name.endswith(suffix):
            return strip_variants(name[: -len(suffix)])
    return name


SAMPLE_METRICS = tuple(REGISTRY["fid"].names.values())  # what a sampling search can minimise


def metric_family(name: str) -> str:
    """The `mqvq eval` metric that computes a logged metric name."""
    base = strip_variants(name)
    for key in ("rfid", "fid"):
        if base in REGISTRY[key].names.values():
            return key
    if base == "is":
        return "is"
    if base.startswith("attr_"):
        return "attr"
    if base.startswith("mask_") or base in ("fg_token_fraction", "edge_token_fraction"):
        return "mask"
    if base.startswith("usage") or base == "perplexity":
        return "usage"
    if base.startswith("speed"):
        return "speed"
    return base


def metric_stage(name: str) -> str:
    """The stage whose run a logged metric lives on."""
    return "stage2" if metric_family(name) in ("fid", "is", "speed", "attr") else "stage1"
