"""Typed configs: dataclasses with defaults equal to the paper, TOML loading, dotted overrides.

Every field carries a one-line meaning in its metadata (`mqvq experiment fields` prints them).
Invalid values fail at load time with the field's dotted name, the bad value and what is
allowed. Mask ratio is always the *masked* fraction (paper: N = (1 - ratio) * L tokens kept);
the official code's `topk_ratio` is the kept fraction, i.e. ratio = 1 - topk_ratio.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from mqvq.errors import UserError


def opt(default: Any, help: str, added: bool = False) -> Any:
    """A dataclass field with a default and a one-line meaning. `added`: a field introduced after
    runs were recorded; at its default it is left out of config hashes (`identity`), so those runs
    keep their identity."""
    return field(default=default, metadata={"help": help, "added": added})


def sub(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


# --------------------------------------------------------------------------- stage 1
@dataclass(frozen=True)
class DataConfig:
    name: Literal["procedural", "fashion-mnist", "folder"] = opt("procedural", "dataset: procedural (synthetic), fashion-mnist (Debian package) or an image folder")
    style: Literal["mixed", "textured"] = opt("mixed", "procedural: mixed (plain, gradient or faint tiled backgrounds) or textured (only high-contrast stripes, checks or gradients, object and background colours from one range: importance is not brightness)", added=True)
    resolution: int = opt(256, "square image side in pixels")
    root: str = opt("", "dataset directory (folder datasets; fashion-mnist defaults to /usr/share/datasets/fashion-mnist)")
    layout: Literal["plain", "ffhq", "imagenet", "coco"] = opt("plain", "folder layout: plain/ffhq (images), imagenet (class subfolders), coco (captions JSON)")
    captions: str = opt("", "coco: captions JSON file (default <root>/annotations/captions_<split>2017.json)")
    test_fraction: float = opt(0.1, "folder without train/ and test/ subfolders: the last fraction of sorted files is the test split")
    num_train: int = opt(4096, "procedural: number of training images")
    num_test: int = opt(512, "procedural: number of test images")
    seed: int = opt(0, "procedural: generator seed (part of the dataset's identity, not the run seed)")
    limit_train: int = opt(0, "use only the first N training images (0 = all)")
    fit: Literal["pad", "resize"] = opt("pad", "fashion-mnist: 28 -> 32 px by padding the black background (2 px ring) or by resizing (64 px: resized from 32 either way)")
    augment: bool = opt(True, "paper's training augmentation (random resized crop for FFHQ, random crop for ImageNet, horizontal flip)")
    workers: int = opt(0, "DataLoader worker processes for folder datasets")


@dataclass(frozen=True)
class MaskConfig:
    type: Literal["adaptive", "random", "none"] = opt("adaptive", "adaptive (learned scorer), random, or none (VQGAN baseline)")
    ratio: float = opt(0.25, "masked fraction of the L tokens: N = (1 - ratio) * L are kept")
    scorer: Literal["mlp", "mlp-bn", "conv", "conv-nobn"] = opt("mlp", "scoring network of the gain, damage and straight-through selectors: mlp (the paper's two-layer MLP), conv (the released conv + BatchNorm scorer), or either with the BatchNorm switched (mlp-bn, conv-nobn)")
    scorer_hidden: int = opt(256, "hidden width of the scoring network")
    selector: Literal["gain", "damage", "straight-through", "entropy", "oracle-foreground"] = opt(
        "gain", "how the adaptive mask picks its N tokens: gain (the paper's: top-N of the scorer, kept features LayerNorm(z)*s), "
        "damage (the scorer predicts the reconstruction damage of dropping a token, HPM), straight-through (Gumbel top-N with a "
        "sigmoid surrogate gradient, DynamicViT / DQ-VAE), entropy (patch grey-level entropy, DQ-VAE's rule, no learning) or "
        "oracle-foreground (largest ground-truth foreground share, a bound; needs data with foreground masks)", added=True)
    damage_random_share: float = opt(0.0, "damage: share of training images whose mask is drawn at random instead of by predicted damage (HPM's mix), so that the decoder does not learn to restore only what the selector drops", added=True)
    tau_start: float = opt(1.0, "straight-through: temperature of the sigmoid surrogate at step 0 (annealed geometrically to tau_end)", added=True)
    tau_end: float = opt(0.1, "straight-through: temperature at the last training step", added=True)


@dataclass(frozen=True)
class DemaskConfig:
    type: Literal["dcsa-update", "dcsa", "sa", "none"] = opt("dcsa-update", "de-mask: direction-constrained SA with/without mask update, plain SA, or none (VQGAN mid block)")
    layers: int = opt(8, "H, the number of (ResNet block + attention) sub-modules")
    mask_init: float = opt(0.02, "B_1 value on masked keys (paper: 0 replaced by 0.02 so that sqrt can grow it)")
    renormalize: bool = opt(False, "renormalise attention over keys after weighting (False = Eq. 6 as released: no renormalisation)")


@dataclass(frozen=True)
class QuantizerConfig:
    codebook_size: int = opt(1024, "K, number of codes")
    dim: int = opt(256, "code dimension n_z")
    beta: float = opt(0.25, "commitment loss weight")
    update: Literal["ema", "loss"] = opt("ema", "codebook update: EMA with dead-code restart (released code) or the VQGAN codebook loss")
    decay: float = opt(0.99, "EMA decay")
    restart_dead: bool = opt(True, "EMA: replace codes whose EMA usage falls below dead_threshold with batch vectors")
    dead_threshold: float = opt(1.0, "EMA: usage below which a code counts as dead")


@dataclass(frozen=True)
class MQVAEConfig:
    downsample: int = opt(16, "f, the downsampling factor (paper: 8, 16 or 32; smoke/mini profiles divide it by 4)")
    channels: int = opt(128, "base channel width of encoder and decoder")
    channel_mult: tuple[int, ...] = opt((), "per-level channel multipliers; empty = derived from f as (1, 1, 2, 2, 4, 4)[: log2(f) + 1]")
    num_res_blocks: int = opt(2, "ResNet blocks per encoder level (decoder uses one more)")
    z_channels: int = opt(256, "encoder output channels")
    attention: bool = opt(True, "self-attention blocks at the latent resolution (as VQGAN)")
    projection: Literal["released", "taming"] = opt("released", "quantizer projections: released (bias-free Linear in, 1x1 conv out to the decoder width) or taming (VQGAN's quant_conv / post_quant_conv via z_channels)")
    dropout: float = opt(0.0, "dropout inside ResNet blocks")
    mask: MaskConfig = sub(MaskConfig, "adaptive mask module")
    demask: DemaskConfig = sub(DemaskConfig, "adaptive de-mask module")
    quantizer: QuantizerConfig = sub(QuantizerConfig, "vector quantizer")

    @property
    def levels(self) -> tuple[int, ...]:
        if self.channel_mult:
            return tuple(self.channel_mult)
        return (1, 1, 2, 2, 4, 4)[: int(math.log2(self.downsample)) + 1]


@dataclass(frozen=True)
class LossConfig:
    l1_weight: float = opt(1.0, "weight of the L1 reconstruction loss")
    perceptual_weight: float = opt(1.0, "weight of LPIPS-VGG16 (0 disables it and needs no weights file)")
    lpips_weights: str = opt("", "LPIPS-VGG16 weights file (default: $MQVQ_WEIGHTS_DIR or ~/.cache/mqvq/weights/lpips_vgg.pth)")
    disc_weight: float = opt(0.75, "GAN loss weight (released code: 0.75)")
    disc_weight_max: float = opt(1.0, "upper clamp of the adaptive GAN weight (released code: 1.0)")
    adaptive_weight: bool = opt(True, "scale the GAN loss by |grad nll| / |grad g| at the decoder's last layer (VQGAN)")
    disc_start: int = opt(0, "step at which the discriminator starts (released code: 0; taming FFHQ: 30001)")
    disc_layers: int = opt(3, "PatchGAN discriminator depth")
    disc_channels: int = opt(64, "PatchGAN discriminator base width")
    codebook_weight: float = opt(1.0, "weight of the quantizer loss")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = opt(400_000, "optimizer steps")
    batch_size: int = opt(16, "images per device per step")
    lr: float = opt(5.76e-4, "learning rate (released: 4.5e-6 x global batch; 8 GPUs x 16 = 5.76e-4)")
    warmup_steps: int = opt(0, "linear warm-up steps")
    schedule: Literal["cosine", "constant"] = opt("cosine", "learning-rate schedule after warm-up")
    precision: Literal["auto", "fp32", "bf16"] = opt("auto", "auto = bf16 autocast on CUDA, fp32 on CPU; the quantizer always runs in fp32")
    compile: bool = opt(False, "torch.compile the encoder and decoder")
    log_every: int = opt(50, "steps between metric logs")
    ckpt_every: int = opt(5000, "steps between checkpoints (one is always written at the end)")
    eval_images: int = opt(256, "test images reconstructed at the end for validation metrics and the grid")
    scorer_lr_scale: float = opt(1.0, "the adaptive mask scorer's learning rate as a multiple of lr")
    val_every: int = opt(0, "steps between validation passes over the first val_images test images during training (L1 and the mask diagnostics as curves; 0 = only at the end)")
    val_images: int = opt(256, "test images in each validation pass during training")
    double_forward: bool = opt(False, "run the model a second time for the discriminator step, as the released Lightning code does: the EMA codebook, dead-code restart and scorer BatchNorm statistics then update twice per batch")


@dataclass(frozen=True)
class Stage1Config:
    data: DataConfig = sub(DataConfig, "training and test data")
    model: MQVAEConfig = sub(MQVAEConfig, "MQ-VAE architecture")
    loss: LossConfig = sub(LossConfig, "reconstruction, perceptual, GAN and codebook losses")
    train: TrainConfig = sub(TrainConfig, "optimisation")


# --------------------------------------------------------------------------- stage 2
# name -> (code_layers, position_layers, width, heads); paper §4.1: small 18 + 6 (307M), base 36 + 12 (607M)
STACKFORMER_PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (2, 1, 32, 2),
    "cpu": (4, 2, 128, 4),
    "mini": (6, 2, 256, 8),
    "small": (18, 6, 1024, 16),
    "base": (36, 12, 1024, 16),
}


@dataclass(frozen=True)
class StackformerConfig:
    kind: Literal["stackformer", "raster"] = opt("stackformer", "stackformer (codes + positions) or raster (VQGAN transformer over all L codes; needs a mask-ratio-0 stage 1)")
    preset: Literal["tiny", "cpu", "mini", "small", "base"] = opt("small", "size preset; code_layers/position_layers/width/heads default to it")
    code_layers: int = opt(18, "Code-Transformer blocks (raster: the single stack has code_layers + position_layers blocks)")
    position_layers: int = opt(6, "Position-Transformer blocks")
    width: int = opt(1024, "model width d")
    heads: int = opt(16, "attention heads")
    dropout: float = opt(0.1, "dropout on embeddings, attention and residuals (released: 0.1)")
    conditioning: Literal["none", "class", "text"] = opt("none", "unconditional, class-conditional (class token prefix), or text (caption tokens prefix the codes, §3.3)")
    text_length: int = opt(32, "text: caption tokens in the prefix (longer captions are truncated, shorter ones padded)", added=True)
    text_vocab: int = opt(8192, "text: most word-level tokens learned from the training captions (with <pad> and <unk>)", added=True)
    text_encoder: Literal["word"] = opt("word", "text: how captions become prefix tokens: word (a vocabulary learned from the training captions, no pretrained encoder, as the paper)", added=True)


@dataclass(frozen=True)
class Stage2TrainConfig:
    steps: int = opt(200_000, "optimizer steps")
    batch_size: int = opt(32, "sequences per device per step")
    lr: float = opt(5e-4, "AdamW learning rate (released: 5e-4, not batch-scaled)")
    weight_decay: float = opt(0.01, "AdamW weight decay on Linear weights only (released)")
    warmup_steps: int = opt(0, "linear warm-up steps")
    schedule: Literal["cosine", "constant"] = opt("cosine", "learning-rate schedule after warm-up (released: cosine to 0)")
    grad_clip: float = opt(1.0, "gradient-norm clip (0 disables)")
    precision: Literal["auto", "fp32", "bf16"] = opt("auto", "auto = bf16 autocast on CUDA, fp32 on CPU")
    compile: bool = opt(False, "torch.compile the transformer for training")
    flip: bool = opt(True, "also tokenize horizontally flipped training images (2x sequences)")
    log_every: int = opt(50, "steps between metric logs")
    val_every: int = opt(1000, "steps between validation losses on the test tokens (Fig. 6a curves)")
    ckpt_every: int = opt(5000, "steps between checkpoints (one is always written at the end)")
    cond_dropout: float = opt(0.0, "probability of dropping a sequence's class or caption during training, so that the model also learns the unconditional distribution (needed for classifier-free guidance; 0.1 is common)", added=True)


@dataclass(frozen=True)
class SamplingConfig:
    top_k: int = opt(100, "codes: keep the k most likely (released default 100)")
    top_p: float = opt(0.95, "codes: nucleus mass in (0, 1]")
    temperature: float = opt(1.0, "codes: softmax temperature")
    top_k_pos: int = opt(10, "positions: keep the k most likely (released default 10)")
    top_p_pos: float = opt(0.95, "positions: nucleus mass in (0, 1]")
    temperature_pos: float = opt(1.0, "positions: softmax temperature")
    enforce_raster: bool = opt(False, "also forbid positions before the last one (released: only repeats are forbidden)")
    batch_size: int = opt(64, "images per sampling batch")
    cfg_scale: float = opt(1.0, "classifier-free guidance scale for conditional models trained with cond_dropout > 0 (1 = no guidance)", added=True)


@dataclass(frozen=True)
class Stage2Config:
    model: StackformerConfig = sub(StackformerConfig, "Stackformer or raster baseline")
    train: Stage2TrainConfig = sub(Stage2TrainConfig, "optimisation")
    sampling: SamplingConfig = sub(SamplingConfig, "default sampling settings (Algorithm 1)")


@dataclass(frozen=True)
class EvalConfig:
    backend: Literal["inception", "vgg16"] = opt("inception", "Fréchet/IS features: inception (FID, needs the weights file) or vgg16 (FD-VGG16, offline)")
    inception_weights: str = opt("", "FID Inception-v3 weights (pt_inception-2015-12-05-6726825d.pth); default $MQVQ_INCEPTION_WEIGHTS or the weights folder")
    num_samples: int = opt(50_000, "generated samples for FID / IS (paper: 50k)")
    test_images: int = opt(0, "test images for rFID, usage, PSNR, LPIPS (0 = the entire test split, as the paper)")
    fid_reference: Literal["train", "test"] = opt("train", "real images the samples' FID / FD is measured against: the training split (FFHQ convention) or the test split")
    batch_size: int = opt(64, "images per batch for features and reconstructions")
    speed_batch_size: int = opt(64, "batch size at which sampling speed is measured")
    speed_repeats: int = opt(3, "timed repeats for sampling speed (median reported)")
    lpips_net: Literal["alex", "vgg"] = opt("alex", "LPIPS network for the reconstruction metric (AlexNet is the LPIPS default)")
    is_splits: int = opt(10, "Inception Score splits")
    workers: int = opt(0, "DataLoader workers for folder datasets")
    cfg_scale: float = opt(3.0, "guidance scale of the *_cfg metrics (a second FID / attribute accuracy) for models trained with condition dropout", added=True)


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = opt("", "experiment name (file stem)")
    description: str = opt("", "one line: what this experiment is")
    profile: str = opt("paper", "size profile the experiment was resolved under")
    seed: int = opt(0, "run seed (not part of the config hash)")
    stage1: Stage1Config = sub(Stage1Config, "stage 1: MQ-VAE")
    stage2: Stage2Config = sub(Stage2Config, "stage 2: Stackformer")
    eval: EvalConfig = sub(EvalConfig, "evaluation (mqvq eval)")


# --------------------------------------------------------------------------- generic machinery
def _allowed(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        item = typing.get_args(tp)[0]
        return "a list of " + ({int: "integers", str: "strings"}.get(item) or "tables")
    if origin is dict:
        return "a table of numbers"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    bad = UserError(f"{name} = {value!r} is invalid: expected {_allowed(tp)}.")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)):
            raise bad
        if dataclasses.is_dataclass(item):  # a TOML array of tables
            return tuple(from_dict(item, v, f"{name}[{i}].") for i, v in enumerate(value))
        if not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            raise bad
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()):
            raise bad
        return {str(k): float(v) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported config type {tp!r} for {name}")


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    """A dataclass's resolved field types; resolving them is most of the cost of reading a config."""
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a (possibly partial) nested dict, checking names and types."""
    if not isinstance(data, dict):
        raise UserError(f"{prefix.rstrip('.') or 'config'} must be a table, got {data!r}.")
    hints = _hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise UserError(f"unknown key {prefix}{unknown[0]} in {where}: allowed keys are {', '.join(sorted(names))}.")
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        name = prefix + f.name
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = from_dict(tp, data[f.name], name + ".")
        else:
            kwargs[f.name] = _coerce(data[f.name], tp, name)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples become lists) suitable for TOML/JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        nxt = d.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise UserError(f"cannot set {dotted}: {k} is a value, not a table.")
        d = nxt
    d[keys[-1]] = value


def get_dotted(d: dict, dotted: str, default: Any = None) -> Any:
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b.c=value` with a TOML value; bare words are strings (`--set stage1.data.name=folder`)."""
    if "=" not in text:
        raise UserError(f"override {text!r} must look like key=value, e.g. stage1.model.mask.ratio=0.5.")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key:
        raise UserError(f"override {text!r} has an empty key.")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def field_help(cls: type = ExperimentConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, meaning) for every leaf field."""
    rows = []
    hints = _hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += field_help(tp, f"{prefix}{f.name}.")
        else:
            default = f.default if f.default is not dataclasses.MISSING else ""
            rows.append((prefix + f.name, repr(default), f.metadata.get("help", "")))
    return rows


def identity(cfg: Any) -> dict:
    """`to_dict` without the `added` fields that hold their default: what config hashes read."""
    out = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out[f.name] = identity(v)
        elif not (f.metadata.get("added") and v == f.default):
            out[f.name] = json.loads(json.dumps(v))
    return out


def config_hash(cfg: dict) -> str:
    """Content hash of a resolved config section (canonical JSON); seed and names excluded."""
    blob = json.dumps(cfg, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- validation
def num_kept(length: int, ratio: float) -> int:
    """N = (1 - ratio) * L, floored as the released code does (at least one token)."""
    return max(1, int(math.floor((1.0 - ratio) * length + 1e-6)))


def validate_stage1(cfg: Stage1Config, prefix: str = "stage1.") -> None:
    d, m = cfg.data, cfg.model
    f = m.downsample
    if f not in (2, 4, 8, 16, 32):
        raise UserError(f"{prefix}model.downsample = {f} is invalid: allowed values are 2, 4, 8, 16 and 32.")
    if d.resolution <= 0 or d.resolution % f:
        raise UserError(f"{prefix}data.resolution = {d.resolution} is not divisible by the downsampling factor f = {f}: use a multiple of {f}.")
    if m.channel_mult and len(m.channel_mult) != int(math.log2(f)) + 1:
        raise UserError(f"{prefix}model.channel_mult has {len(m.channel_mult)} levels but f = {f} needs log2(f) + 1 = {int(math.log2(f)) + 1}.")
    r = m.mask.ratio
    if not 0.0 <= r < 1.0:
        raise UserError(f"{prefix}model.mask.ratio = {r} is outside [0, 1): it is the masked fraction, so 0 keeps every token and values near 1 keep few.")
    if m.mask.type == "none" and r != 0.0:
        raise UserError(f"{prefix}model.mask.ratio = {r} needs a mask: with model.mask.type = 'none' the ratio must be 0 (use 'adaptive' or 'random').")
    if m.mask.selector != "gain" and m.mask.type != "adaptive":
        raise UserError(f"{prefix}model.mask.selector = {m.mask.selector!r} needs model.mask.type = 'adaptive' (random and none have no selector): "
                        f"set the type to adaptive or leave the selector at 'gain'.")
    if m.mask.selector == "oracle-foreground" and d.name == "folder":
        raise UserError(f"{prefix}model.mask.selector = 'oracle-foreground' needs foreground masks, which {d.name} data does not have: "
                        f"allowed with procedural or fashion-mnist data; use gain, damage, straight-through or entropy here.")
    if not 0.0 <= m.mask.damage_random_share <= 1.0 or (m.mask.damage_random_share and m.mask.selector != "damage"):
        raise UserError(f"{prefix}model.mask.damage_random_share = {m.mask.damage_random_share} must lie in [0, 1] and needs "
                        f"model.mask.selector = 'damage' (it mixes random masks into that selector's training).")
    if m.mask.selector == "straight-through" and not 0.0 < m.mask.tau_end <= m.mask.tau_start:
        raise UserError(f"{prefix}model.mask.tau_start = {m.mask.tau_start} and tau_end = {m.mask.tau_end} must satisfy 0 < tau_end <= tau_start.")
    if d.style != "mixed" and d.name != "procedural":
        raise UserError(f"{prefix}data.style = {d.style!r} applies to procedural data only: leave it at 'mixed' for {d.name}.")
    if m.demask.type in ("dcsa", "dcsa-update") and not 0.0 <= m.demask.mask_init <= 1.0:
        raise UserError(f"{prefix}model.demask.mask_init = {m.demask.mask_init} must lie in [0, 1].")
    positive = {
        "model.channels": m.channels, "model.num_res_blocks": m.num_res_blocks, "model.z_channels": m.z_channels,
        "model.demask.layers": m.demask.layers, "model.quantizer.codebook_size": m.quantizer.codebook_size,
        "model.quantizer.dim": m.quantizer.dim, "model.mask.scorer_hidden": m.mask.scorer_hidden,
        "train.steps": cfg.train.steps, "train.batch_size": cfg.train.batch_size, "train.log_every": cfg.train.log_every,
        "train.ckpt_every": cfg.train.ckpt_every, "train.val_images": cfg.train.val_images,
        "loss.disc_layers": cfg.loss.disc_layers, "loss.disc_channels": cfg.loss.disc_channels,
    }
    for name, v in positive.items():
        if v < 1:
            raise UserError(f"{prefix}{name} = {v} must be at least 1.")
    if cfg.train.val_every < 0:
        raise UserError(f"{prefix}train.val_every = {cfg.train.val_every} must be 0 (only at the end) or positive.")
    if m.quantizer.beta < 0:
        raise UserError(f"{prefix}model.quantizer.beta = {m.quantizer.beta} must be 0 or positive (it weights the commitment loss).")
    if not 0.0 < m.quantizer.decay < 1.0:
        raise UserError(f"{prefix}model.quantizer.decay = {m.quantizer.decay} must lie in (0, 1).")
    if cfg.train.lr <= 0:
        raise UserError(f"{prefix}train.lr = {cfg.train.lr} must be positive.")
    if cfg.train.scorer_lr_scale <= 0:
        raise UserError(f"{prefix}train.scorer_lr_scale = {cfg.train.scorer_lr_scale} must be positive.")
    if not 0.0 <= d.test_fraction < 1.0:
        raise UserError(f"{prefix}data.test_fraction = {d.test_fraction} must lie in [0, 1).")
    if d.name == "fashion-mnist" and d.resolution not in (32, 64):
        raise UserError(f"{prefix}data.resolution = {d.resolution} is not available for fashion-mnist: use 32 or 64.")
    if d.name == "procedural" and (d.resolution < 8 or d.resolution & (d.resolution - 1)):
        raise UserError(f"{prefix}data.resolution = {d.resolution} is invalid for procedural data: use a power of two of at least 8.")
    if d.name == "procedural" and (d.num_train < 1 or d.num_test < 1):
        raise UserError(f"{prefix}data.num_train and data.num_test must be at least 1.")
    if (d.resolution // f) ** 2 < 1:
        raise UserError(f"{prefix}data.resolution = {d.resolution} gives an empty latent grid at f = {f}.")


def validate_sampling(s: SamplingConfig, prefix: str = "stage2.sampling.") -> None:
    """`prefix` "--" names the CLI options (--top-k) instead of config fields."""
    name_of = (lambda n: "--" + n.replace("_", "-")) if prefix == "--" else (lambda n: prefix + n)
    for name in ("top_k", "top_k_pos"):
        if getattr(s, name) < 1:
            raise UserError(f"{name_of(name)} = {getattr(s, name)} must be at least 1 (use a large value to disable top-k).")
    for name in ("top_p", "top_p_pos"):
        if not 0.0 < getattr(s, name) <= 1.0:
            raise UserError(f"{name_of(name)} = {getattr(s, name)} must lie in (0, 1] (1 disables nucleus filtering).")
    for name in ("temperature", "temperature_pos"):
        if getattr(s, name) <= 0.0:
            raise UserError(f"{name_of(name)} = {getattr(s, name)} must be positive.")
    if s.batch_size < 1:
        raise UserError(f"{name_of('batch_size')} = {s.batch_size} must be at least 1.")
    if not math.isfinite(s.cfg_scale) or s.cfg_scale < 0.0:
        raise UserError(f"{name_of('cfg_scale')} = {s.cfg_scale} must be a number >= 0 (1 = no guidance, 0 = the unconditional model).")


def validate_stage2(cfg: Stage2Config, stage1: Stage1Config, prefix: str = "stage2.") -> None:
    m, t = cfg.model, cfg.train
    if m.conditioning == "text":
        for name in ("text_length", "text_vocab"):
            if getattr(m, name) < (1 if name == "text_length" else 3):
                raise UserError(f"{prefix}model.{name} = {getattr(m, name)} must be at least {1 if name == 'text_length' else 3}.")
        if stage1.data.name == "procedural" and t.flip:
            raise UserError(f"{prefix}train.flip = true with text conditioning on procedural data: its captions name left "
                            f"and right, which a mirrored copy contradicts; set {prefix}train.flip=false.")
        if stage1.data.name == "fashion-mnist" or (stage1.data.name == "folder" and stage1.data.layout != "coco"):
            what = "fashion-mnist" if stage1.data.name == "fashion-mnist" else f"a folder with layout {stage1.data.layout!r}"
            raise UserError(f"{prefix}model.conditioning = 'text' needs captions, which {what} has none of: "
                            f"use stage1.data.name = 'procedural' (captions of what it draws) or a folder with layout 'coco'.")
    if not 0.0 <= t.cond_dropout < 1.0:
        raise UserError(f"{prefix}train.cond_dropout = {t.cond_dropout} must lie in [0, 1).")
    if t.cond_dropout > 0 and m.conditioning == "none":
        raise UserError(f"{prefix}train.cond_dropout = {t.cond_dropout} needs a condition to drop: set {prefix}model.conditioning "
                        f"to 'class' or 'text', or cond_dropout to 0.")
    if cfg.sampling.cfg_scale != 1.0 and t.cond_dropout == 0.0:
        raise UserError(f"{prefix}sampling.cfg_scale = {cfg.sampling.cfg_scale} needs a model trained with condition dropout: "
                        f"set {prefix}train.cond_dropout > 0 (e.g. 0.1) or cfg_scale to 1.")
    if m.kind == "raster" and stage1.model.mask.type != "none":
        raise UserError(f"{prefix}model.kind = 'raster' models all L codes and needs a stage 1 without a mask "
                        f"(stage1.model.mask.type = 'none'), not {stage1.model.mask.type!r}: use kind = 'stackformer'.")
    if m.kind == "stackformer" and stage1.model.mask.type == "none":
        raise UserError(f"{prefix}model.kind = 'stackformer' needs masked stage-1 tokens; a mask-ratio-0 stage 1 uses kind = 'raster'.")
    for name, v in {"model.code_layers": m.code_layers, "model.width": m.width, "model.heads": m.heads,
                    "train.steps": t.steps, "train.batch_size": t.batch_size, "train.log_every": t.log_every,
                    "train.val_every": t.val_every, "train.ckpt_every": t.ckpt_every}.items():
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
    if not math.isfinite(cfg.cfg_scale) or cfg.cfg_scale < 0.0:
        raise UserError(f"{prefix}cfg_scale = {cfg.cfg_scale} must be a number >= 0.")
