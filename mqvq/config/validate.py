"""Checks across fields that types alone cannot express; each failure names the dotted field, the
bad value and what is allowed."""

from __future__ import annotations

import math

from mqvq.config.schema import (
    NEEDS_FOREGROUND,
    SELECTORS,
    EvalConfig,
    SamplingConfig,
    Stage1Config,
    Stage2Config,
    TrackingConfig,
)
from mqvq.errors import UserError

MAX_CFG_SCALE = 100.0  # guidance scales beyond this give the same samples as the largest ones (argmax of u + S (c - u))


def field_name(prefix: str, name: str) -> str:
    """How the user wrote the value: `--cfg-scale` on the command line, `eval.cfg_scale` in a config."""
    return "--" + name.replace("_", "-") if prefix == "--" else prefix + name


def validate_stage1(cfg: Stage1Config, prefix: str = "stage1.") -> None:
    d, m = cfg.data, cfg.model
    f = m.downsample
    if f not in (2, 4, 8, 16, 32):
        raise UserError(f"{prefix}model.downsample = {f} is invalid: allowed values are 2, 4, 8, 16 and 32.")
    if d.resolution <= 0 or d.resolution % f:
        raise UserError(
            f"{prefix}data.resolution = {d.resolution} is not divisible by the downsampling factor f = {f}: use a multiple of {f}."
        )
    if m.channel_mult and len(m.channel_mult) != int(math.log2(f)) + 1:
        raise UserError(
            f"{prefix}model.channel_mult has {len(m.channel_mult)} levels but f = {f} needs log2(f) + 1 = {int(math.log2(f)) + 1}."
        )
    r = m.mask.ratio
    if not 0.0 <= r < 1.0:
        raise UserError(
            f"{prefix}model.mask.ratio = {r} is outside [0, 1): it is the masked fraction, so 0 keeps every token and values near 1 keep few."
        )
    if m.mask.type == "none" and r != 0.0:
        raise UserError(
            f"{prefix}model.mask.ratio = {r} needs a mask: with model.mask.type = 'none' the ratio must be 0 (use 'adaptive' or 'random')."
        )
    if m.mask.selector != "gain" and m.mask.type != "adaptive":
        raise UserError(
            f"{prefix}model.mask.selector = {m.mask.selector!r} needs model.mask.type = 'adaptive' (random and none have no selector): "
            f"set the type to adaptive or leave the selector at 'gain'."
        )
    if m.mask.selector in NEEDS_FOREGROUND and d.name == "folder":
        others = ", ".join(s for s in SELECTORS if s not in NEEDS_FOREGROUND)
        raise UserError(
            f"{prefix}model.mask.selector = {m.mask.selector!r} needs foreground masks, which {d.name} data does not have: "
            f"allowed with procedural or fashion-mnist data; use one of {others} here."
        )
    if not 0.0 <= m.mask.damage_random_share <= 1.0 or (m.mask.damage_random_share and m.mask.selector != "damage"):
        raise UserError(
            f"{prefix}model.mask.damage_random_share = {m.mask.damage_random_share} must lie in [0, 1] and needs "
            f"model.mask.selector = 'damage' (it mixes random masks into that selector's training)."
        )
    if m.mask.selector == "straight-through" and not 0.0 < m.mask.tau_end <= m.mask.tau_start:
        raise UserError(
            f"{prefix}model.mask.tau_start = {m.mask.tau_start} and tau_end = {m.mask.tau_end} must satisfy 0 < tau_end <= tau_start."
        )
    if d.style != "mixed" and d.name != "procedural":
        raise UserError(
            f"{prefix}data.style = {d.style!r} applies to procedural data only: leave it at 'mixed' for {d.name}."
        )
    if m.demask.type in ("dcsa", "dcsa-update") and not 0.0 <= m.demask.mask_init <= 1.0:
        raise UserError(f"{prefix}model.demask.mask_init = {m.demask.mask_init} must lie in [0, 1].")
    positive = {
        "model.channels": m.channels,
        "model.num_res_blocks": m.num_res_blocks,
        "model.z_channels": m.z_channels,
        "model.demask.layers": m.demask.layers,
        "model.quantizer.codebook_size": m.quantizer.codebook_size,
        "model.quantizer.dim": m.quantizer.dim,
        "model.mask.scorer_hidden": m.mask.scorer_hidden,
        "train.steps": cfg.train.steps,
        "train.batch_size": cfg.train.batch_size,
        "train.log_every": cfg.train.log_every,
        "train.ckpt_every": cfg.train.ckpt_every,
        "train.val_images": cfg.train.val_images,
        "loss.disc_layers": cfg.loss.disc_layers,
        "loss.disc_channels": cfg.loss.disc_channels,
    }
    for name, v in positive.items():
        if v < 1:
            raise UserError(f"{prefix}{name} = {v} must be at least 1.")
    if cfg.train.val_every < 0:
        raise UserError(f"{prefix}train.val_every = {cfg.train.val_every} must be 0 (only at the end) or positive.")
    if m.quantizer.beta < 0:
        raise UserError(
            f"{prefix}model.quantizer.beta = {m.quantizer.beta} must be 0 or positive (it weights the commitment loss)."
        )
    if not 0.0 < m.quantizer.decay < 1.0:
        raise UserError(f"{prefix}model.quantizer.decay = {m.quantizer.decay} must lie in (0, 1).")
    if cfg.train.lr <= 0:
        raise UserError(f"{prefix}train.lr = {cfg.train.lr} must be positive.")
    if cfg.train.scorer_lr_scale <= 0:
        raise UserError(f"{prefix}train.scorer_lr_scale = {cfg.train.scorer_lr_scale} must be positive.")
    if not 0.0 <= d.test_fraction < 1.0:
        raise UserError(f"{prefix}data.test_fraction = {d.test_fraction} must lie in [0, 1).")
    if d.name == "fashion-mnist" and d.fit == "translate" and not 32 <= d.resolution <= 256:
        raise UserError(
            f"{prefix}data.resolution = {d.resolution} is the canvas of translated fashion-mnist: use 32 to 256 (48 with f = 4 gives 144 tokens)."
        )
    if d.name == "fashion-mnist" and d.fit != "translate" and d.resolution not in (32, 64):
        raise UserError(
            f"{prefix}data.resolution = {d.resolution} is not available for fashion-mnist: use 32 or 64 (or data.fit = 'translate' for a larger canvas)."
        )
    if (d.placement != "inset" or d.holdout != "none") and d.name != "procedural":
        raise UserError(
            f"{prefix}data.placement and data.holdout apply to procedural data only: leave them at 'inset' and 'none' for {d.name}."
        )
    if d.placement == "uniform" and d.style == "mixed":
        raise UserError(
            f"{prefix}data.placement = 'uniform' needs one of the styles textured, textured-objects, textured-both or flat (style mixed keeps its own placement)."
        )
    if d.holdout != "none" and d.placement != "uniform":
        raise UserError(f"{prefix}data.holdout = {d.holdout!r} needs data.placement = 'uniform'.")
    if d.name == "procedural" and (d.resolution < 8 or d.resolution & (d.resolution - 1)):
        raise UserError(
            f"{prefix}data.resolution = {d.resolution} is invalid for procedural data: use a power of two of at least 8."
        )
    if d.name == "procedural" and (d.num_train < 1 or d.num_test < 1):
        raise UserError(f"{prefix}data.num_train and data.num_test must be at least 1.")
    if (d.resolution // f) ** 2 < 1:
        raise UserError(f"{prefix}data.resolution = {d.resolution} gives an empty latent grid at f = {f}.")


def validate_sampling(s: SamplingConfig, prefix: str = "stage2.sampling.") -> None:
    """`prefix` "--" names the CLI options (--top-k) instead of config fields."""
    name_of = lambda n: field_name(prefix, n)  # noqa: E731
    for name in ("top_k", "top_k_pos"):
        if getattr(s, name) < 1:
            raise UserError(
                f"{name_of(name)} = {getattr(s, name)} must be at least 1 (use a large value to disable top-k)."
            )
    for name in ("top_p", "top_p_pos"):
        if not 0.0 < getattr(s, name) <= 1.0:
            raise UserError(f"{name_of(name)} = {getattr(s, name)} must lie in (0, 1] (1 disables nucleus filtering).")
    for name in ("temperature", "temperature_pos"):
        if getattr(s, name) <= 0.0:
            raise UserError(f"{name_of(name)} = {getattr(s, name)} must be positive.")
    if s.batch_size < 1:
        raise UserError(f"{name_of('batch_size')} = {s.batch_size} must be at least 1.")
    if not math.isfinite(s.cfg_scale) or not 0.0 <= s.cfg_scale <= MAX_CFG_SCALE:
        raise UserError(
            f"{name_of('cfg_scale')} = {s.cfg_scale} must lie in [0, {MAX_CFG_SCALE:g}] (1 = no guidance, "
            f"0 = the unconditional model; beyond a few the samples stop changing)."
        )


def validate_stage2(cfg: Stage2Config, stage1: Stage1Config, prefix: str = "stage2.") -> None:
    m, t = cfg.model, cfg.train
    if m.conditioning == "text":
        for name in ("text_length", "text_vocab"):
            if getattr(m, name) < (1 if name == "text_length" else 3):
                raise UserError(
                    f"{prefix}model.{name} = {getattr(m, name)} must be at least {1 if name == 'text_length' else 3}."
                )
        if stage1.data.name == "procedural" and t.flip:
            raise UserError(
                f"{prefix}train.flip = true with text conditioning on procedural data: its captions name left "
                f"and right, which a mirrored copy contradicts; set {prefix}train.flip=false."
            )
        if stage1.data.name == "fashion-mnist" or (stage1.data.name == "folder" and stage1.data.layout != "coco"):
            what = (
                "fashion-mnist"
                if stage1.data.name == "fashion-mnist"
                else f"a folder with layout {stage1.data.layout!r}"
            )
            raise UserError(
                f"{prefix}model.conditioning = 'text' needs captions, which {what} has none of: "
                f"use stage1.data.name = 'procedural' (captions of what it draws) or a folder with layout 'coco'."
            )
    if not 0.0 <= t.cond_dropout < 1.0:
        raise UserError(f"{prefix}train.cond_dropout = {t.cond_dropout} must lie in [0, 1).")
    if t.cond_dropout > 0 and m.conditioning == "none":
        raise UserError(
            f"{prefix}train.cond_dropout = {t.cond_dropout} needs a condition to drop: set {prefix}model.conditioning "
            f"to 'class' or 'text', or cond_dropout to 0."
        )
    if cfg.sampling.cfg_scale != 1.0 and t.cond_dropout == 0.0:
        raise UserError(
            f"{prefix}sampling.cfg_scale = {cfg.sampling.cfg_scale} needs a model trained with condition dropout: "
            f"set {prefix}train.cond_dropout > 0 (e.g. 0.1) or cfg_scale to 1."
        )
    if m.kind == "raster" and stage1.model.mask.type != "none":
        raise UserError(
            f"{prefix}model.kind = 'raster' models all L codes and needs a stage 1 without a mask "
            f"(stage1.model.mask.type = 'none'), not {stage1.model.mask.type!r}: use kind = 'stackformer'."
        )
    if m.kind == "stackformer" and stage1.model.mask.type == "none":
        raise UserError(
            f"{prefix}model.kind = 'stackformer' needs masked stage-1 tokens; a mask-ratio-0 stage 1 uses kind = 'raster'."
        )
    for name, v in {
        "model.code_layers": m.code_layers,
        "model.width": m.width,
        "model.heads": m.heads,
        "train.steps": t.steps,
        "train.batch_size": t.batch_size,
        "train.log_every": t.log_every,
        "train.val_every": t.val_every,
        "train.ckpt_every": t.ckpt_every,
    }.items():
        if v < 1:
            raise UserError(f"{prefix}{name} = {v} must be at least 1.")
    if m.kind == "stackformer" and m.position_layers < 1:
        raise UserError(f"{prefix}model.position_layers = {m.position_layers} must be at least 1 for a Stackformer.")
    if m.width % m.heads:
        raise UserError(f"{prefix}model.width = {m.width} must be divisible by model.heads = {m.heads}.")
    if not 0.0 <= m.dropout < 1.0:
        raise UserError(f"{prefix}model.dropout = {m.dropout} must lie in [0, 1).")
    if t.lr <= 0:
        raise UserError(f"{prefix}train.lr = {t.lr} must be positive.")
    validate_sampling(cfg.sampling, prefix + "sampling.")


def validate_eval(cfg: EvalConfig, prefix: str = "eval.") -> None:
    for name in ("num_samples", "batch_size", "speed_batch_size", "speed_repeats", "is_splits"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{prefix}{name} = {getattr(cfg, name)} must be at least 1.")
    if cfg.num_samples < 2:
        raise UserError(f"{prefix}num_samples = {cfg.num_samples} must be at least 2 (a covariance needs two samples).")
    if cfg.test_images < 0:
        raise UserError(f"{prefix}test_images = {cfg.test_images} must be 0 (all) or positive.")
    if not math.isfinite(cfg.cfg_scale) or not 0.0 <= cfg.cfg_scale <= MAX_CFG_SCALE:
        raise UserError(f"{field_name(prefix, 'cfg_scale')} = {cfg.cfg_scale} must lie in [0, {MAX_CFG_SCALE:g}].")


def validate_tracking(cfg: TrackingConfig, prefix: str = "tracking.") -> None:
    if not 1.0 <= cfg.system_metrics_interval <= 3600.0:
        raise UserError(
            f"{prefix}system_metrics_interval = {cfg.system_metrics_interval} must lie between 1 and 3600 seconds."
        )
