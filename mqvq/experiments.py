"""Declared experiments (experiments/*.toml) resolved under a size profile.

An experiment file states a variant in the paper's terms (mask type and ratio, de-mask
variant, f). A profile supplies sizes, data and schedule. Resolution order, later wins:

    dataclass defaults (the paper's values)
    < experiment file
    < profile overrides            (sizes, data, steps: so `smoke` never touches FFHQ)
    < the file's [profiles.<name>] section
    < --set key=value overrides

Profiles `smoke` and `mini` also divide the experiment's f by 4, keeping the paper's latent
grids at mini's 64² (f = 8, 16, 32 at 256² give 32x32, 16x16, 8x8; at 64² f = 2, 4, 8 give the
same) and halving them at smoke's 32².
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mqvq.config import (
    STACKFORMER_PRESETS,
    ExperimentConfig,
    MQVAEConfig,
    deep_merge,
    from_dict,
    get_dotted,
    parse_override,
    set_dotted,
    validate_eval,
    validate_stage1,
    validate_stage2,
    validate_tracking,
)
from mqvq.errors import UserError


@dataclass(frozen=True)
class Profile:
    description: str
    downsample_divisor: int = 1
    overrides: dict[str, Any] = field(default_factory=dict)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        "CPU in seconds: tiny model, procedural 32x32 images (synthetic), a few dozen steps",
        downsample_divisor=4,
        overrides={
            "stage1.data.name": "procedural",
            "stage1.data.resolution": 32,
            "stage1.data.num_train": 256,
            "stage1.data.num_test": 64,
            "stage1.model.channels": 16,
            "stage1.model.num_res_blocks": 1,
            "stage1.model.z_channels": 32,
            "stage1.model.mask.scorer_hidden": 32,
            "stage1.model.demask.layers": 2,
            "stage1.model.quantizer.codebook_size": 64,
            "stage1.model.quantizer.dim": 16,
            "stage1.loss.disc_layers": 2,
            "stage1.loss.disc_channels": 16,
            "stage1.loss.disc_start": 8,
            "stage1.train.steps": 16,
            "stage1.train.batch_size": 4,
            "stage1.train.lr": 3e-3,
            "stage1.train.warmup_steps": 2,
            "stage1.train.log_every": 8,
            "stage1.train.ckpt_every": 1000,
            "stage1.train.eval_images": 32,
            "stage2.model.preset": "tiny",
            "stage2.model.dropout": 0.0,
            "stage2.train.steps": 60,
            "stage2.train.batch_size": 16,
            "stage2.train.lr": 3e-3,
            "stage2.train.warmup_steps": 5,
            "stage2.train.log_every": 10,
            "stage2.train.val_every": 30,
            "stage2.train.ckpt_every": 1000,
            "stage2.sampling.batch_size": 16,
            "eval.backend": "vgg16",
            "eval.num_samples": 64,
            "eval.batch_size": 32,
            "eval.speed_batch_size": 16,
            "eval.speed_repeats": 1,
        },
    ),
    "mini": Profile(
        "one GPU, minutes per row: Fashion-MNIST 64x64, K = 512, H = 4",
        downsample_divisor=4,
        overrides={
            "stage1.data.name": "fashion-mnist",
            "stage1.data.resolution": 64,
            "stage1.model.channels": 64,
            "stage1.model.num_res_blocks": 1,
            "stage1.model.z_channels": 128,
            "stage1.model.mask.scorer_hidden": 128,
            "stage1.model.demask.layers": 4,
            "stage1.model.quantizer.codebook_size": 512,
            "stage1.model.quantizer.dim": 64,
            "stage1.loss.disc_layers": 3,
            "stage1.loss.disc_channels": 32,
            "stage1.loss.disc_start": 1000,
            "stage1.train.steps": 3000,
            "stage1.train.batch_size": 64,
            "stage1.train.lr": 4e-4,
            "stage1.train.warmup_steps": 100,
            "stage1.train.log_every": 100,
            "stage1.train.ckpt_every": 1000,
            "stage1.train.compile": False,
            "stage1.train.eval_images": 1000,
            "stage1.train.val_every": 250,
            "stage1.train.val_images": 1000,
            "stage2.model.preset": "mini",
            "stage2.train.steps": 4000,
            "stage2.train.batch_size": 128,
            "stage2.train.lr": 6e-4,
            "stage2.train.warmup_steps": 200,
            "stage2.train.log_every": 100,
            "stage2.train.val_every": 500,
            "stage2.train.ckpt_every": 1000,
            "stage2.sampling.batch_size": 256,
            "eval.backend": "vgg16",
            "eval.num_samples": 10_000,
            "eval.batch_size": 250,
            "eval.speed_batch_size": 64,
        },
    ),
    "cpu": Profile(
        "a 2-core CPU, about 4 minutes per row and seed: Fashion-MNIST 32x32 (8x8 tokens at the paper's f = 16), "
        "K = 512, L1 + codebook loss, a small Stackformer, FD-VGG16 on 2,000 samples",
        downsample_divisor=4,
        overrides={
            "stage1.data.name": "fashion-mnist",
            "stage1.data.resolution": 32,
            "stage1.data.limit_train": 6000,
            "stage1.model.channels": 32,
            "stage1.model.num_res_blocks": 1,
            "stage1.model.z_channels": 64,
            "stage1.model.mask.scorer_hidden": 64,
            "stage1.model.demask.layers": 4,
            "stage1.model.quantizer.codebook_size": 512,
            "stage1.model.quantizer.dim": 64,
            "stage1.loss.perceptual_weight": 0.0,
            "stage1.loss.disc_weight": 0.0,
            "stage1.train.steps": 500,
            "stage1.train.batch_size": 16,
            "stage1.train.lr": 1e-3,
            "stage1.train.warmup_steps": 50,
            "stage1.train.log_every": 50,
            "stage1.train.ckpt_every": 1000,
            "stage1.train.val_every": 100,
            "stage1.train.val_images": 256,
            "stage1.train.eval_images": 512,
            "stage2.model.preset": "cpu",
            "stage2.model.dropout": 0.1,
            "stage2.train.flip": False,
            "stage2.train.steps": 400,
            "stage2.train.batch_size": 32,
            "stage2.train.lr": 1e-3,
            "stage2.train.warmup_steps": 50,
            "stage2.train.log_every": 50,
            "stage2.train.val_every": 200,
            "stage2.train.ckpt_every": 1000,
            "stage2.sampling.batch_size": 250,
            "eval.backend": "vgg16",
            "eval.num_samples": 2000,
            "eval.test_images": 2000,
            "eval.fid_reference": "test",
            "eval.batch_size": 250,
            "eval.speed_batch_size": 64,
            "eval.speed_repeats": 3,
        },
    ),
    "paper": Profile(
        "the paper's sizes: FFHQ 256x256 from your folder, f = 16, K = 1024, H = 8 (multi-GPU via torchrun)",
        downsample_divisor=1,
        overrides={
            "stage1.data.name": "folder",
            "stage1.data.layout": "ffhq",
            "stage1.data.resolution": 256,
            "stage1.train.val_every": 5000,
            "stage1.data.test_fraction": 1 / 7,
            "stage1.data.workers": 8,
        },  # FFHQ: 60k train, 10k test
    ),
}

TOP_LEVEL_KEYS = {"description", "seed", "stage1", "stage2", "eval", "tracking", "profiles"}


def declared_dir(kind: str) -> Path:
    """Where the declared `kind` ("experiments" or "studies") are: $MQVQ_EXPERIMENTS / $MQVQ_STUDIES, else
    ./<kind> in the working folder, else the checkout's <kind>/ folder, else the copy an installed wheel
    carries (package data `mqvq/_declared/<kind>`, mapped from the same folders in pyproject.toml)."""
    env = os.environ.get(f"MQVQ_{kind.upper()}")
    if env:
        return Path(env)
    local = Path.cwd() / kind
    if local.is_dir():
        return local
    checkout = Path(__file__).resolve().parent.parent / kind
    return checkout if checkout.is_dir() else Path(__file__).resolve().parent / "_declared" / kind


def experiments_dir() -> Path:
    return declared_dir("experiments")


def list_experiments() -> dict[str, str]:
    """name -> description of every declared experiment."""
    out = {}
    for path in sorted(experiments_dir().glob("*.toml")):
        try:
            out[path.stem] = _read_toml(path).get("description", "")
        except UserError as e:
            out[path.stem] = f"(unreadable: {e})"
    return out


def find_declared(name: str, folder: Path, kind: str, plural: str = "") -> Path:
    """`name` in `folder` (name.toml), or a .toml path; unknown names list what exists."""
    if name.endswith(".toml") or os.sep in name:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"{kind} file {path} does not exist.")
        return path
    path = folder / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(folder.glob("*.toml"))) or "none found"
        raise UserError(f"unknown {kind} {name!r}: known {plural or kind + 's'} are {known} (or pass a .toml path).")
    return path


def find_experiment(name: str) -> Path:
    return find_declared(name, experiments_dir(), "experiment")


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}.") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is not valid TOML: {e}.") from None


def load_experiment(
    name: str, profile: str = "smoke", overrides: list[str] | tuple[str, ...] = (), seed: int | None = None
) -> ExperimentConfig:
    """Resolve experiment `name` (or a .toml path) under `profile` with `--set` overrides."""
    if profile not in PROFILES:
        raise UserError(f"unknown profile {profile!r}: allowed profiles are {', '.join(PROFILES)}.")
    path = find_experiment(name)
    raw = _read_toml(path)
    unknown = sorted(set(raw) - TOP_LEVEL_KEYS)
    if unknown:
        raise UserError(
            f"{path.name}: unknown top-level key {unknown[0]!r}: allowed keys are {', '.join(sorted(TOP_LEVEL_KEYS))}."
        )
    prof = PROFILES[profile]
    per_profile = raw.pop("profiles", {})
    if not isinstance(per_profile, dict) or set(per_profile) - set(PROFILES):
        raise UserError(f"{path.name}: [profiles] may only contain {', '.join(PROFILES)}.")

    merged = dict(raw)
    f = get_dotted(merged, "stage1.model.downsample", MQVAEConfig.downsample)
    if isinstance(f, int) and not isinstance(f, bool) and prof.downsample_divisor > 1:
        if f % prof.downsample_divisor or f // prof.downsample_divisor < 2:
            raise UserError(
                f"{path.name}: f = {f} cannot be scaled down for profile {profile!r} (it divides f by {prof.downsample_divisor}); use f of at least {2 * prof.downsample_divisor}."
            )
        merged = deep_merge(merged, {"stage1": {"model": {"downsample": f // prof.downsample_divisor}}})
    for key, value in prof.overrides.items():
        set_dotted(merged, key, value)
    merged = deep_merge(merged, per_profile.get(profile, {}))
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(merged, key, value)
    if seed is not None:
        merged["seed"] = seed
    merged.update(name=path.stem, profile=profile)
    _apply_preset(merged)
    cfg = from_dict(ExperimentConfig, merged)
    validate_stage1(cfg.stage1)
    validate_stage2(cfg.stage2, cfg.stage1)
    validate_eval(cfg.eval)
    validate_tracking(cfg.tracking)
    return cfg


def _apply_preset(merged: dict) -> None:
    """Fill Stackformer sizes not set explicitly from `stage2.model.preset`."""
    model = merged.setdefault("stage2", {}).setdefault("model", {})
    preset = model.get("preset", "small")
    if preset not in STACKFORMER_PRESETS:
        return  # from_dict reports the bad value with its allowed choices
    for key, value in STACKFORMER_PRESETS[preset].items():
        model.setdefault(key, value)
