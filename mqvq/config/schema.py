"""The config schema: dataclasses whose defaults are the paper's, each field with a one-line meaning
(`mqvq experiment fields` prints them), and the Stackformer size presets.

Mask ratio is always the *masked* fraction (paper: N = (1 - ratio) * L tokens kept); the official
code's `topk_ratio` is the kept fraction, i.e. ratio = 1 - topk_ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args


def opt(default: Any, help: str, added: bool = False) -> Any:
    """A dataclass field with a default and a one-line meaning. `added`: a field introduced after
    runs were recorded; at its default it is left out of config hashes (`identity`), so those runs
    keep their identity."""
    return field(default=default, metadata={"help": help, "added": added})


def revised(default: int, help: str, when) -> Any:
    """A revision of how some configs train: in their config hashes whenever `when(section)` holds, so
    runs trained before the revision are never reused under the new code; left out of every other
    config's hash (their training did not change)."""
    return field(default=default, metadata={"help": help, "hashed_if": when})


# the adaptive mask's token selectors: this Literal is their one list (SELECTORS reads it)
Selector = Literal["gain", "damage", "straight-through", "entropy", "oracle-foreground", "centre"]
SELECTORS: tuple[str, ...] = get_args(Selector)
NEEDS_FOREGROUND = ("oracle-foreground",)  # selectors that read the data's foreground masks
SELECTOR_NAMES = {  # what a report calls each (a verdict on one selector's Table 6 claims)
    "gain": "the paper's scorer",
    "damage": "damage prediction",
    "straight-through": "straight-through",
    "entropy": "the entropy rule",
    "oracle-foreground": "the foreground oracle",
    "centre": "the centre prior",
}
REVISED_SELECTORS = ("damage", "straight-through")  # whose training signal revision 2 changed


# the sampling search's choices and defaults (`mqvq search sampling` and a study's [search] both read them)
SAMPLERS = ("tpe", "gp", "grid", "random")
PRUNERS = ("median", "none")
SEARCH_MAX_SAMPLES = 10_000  # a trial's samples at most unless asked for more (eval.num_samples is often 50,000)
SEARCH_RUNGS = (1000, 5000)  # sample counts at which a trial may be pruned, those below its total
SEARCH_HEARTBEAT_S = 30.0  # seconds between a search worker's heartbeats
SEARCH_TOP_P = (0.7, 1.0)  # the searched top-p range, for codes and positions (top-k: 1 to K or L)
SEARCH_TEMPERATURE = (1.0, 1.0)  # temperature is fixed unless a range is asked for
SEARCH_CFG_SCALE = (1.0, 5.0)  # guidance scale, for models trained with condition dropout


def sub(cls: type, help: str, hashed: bool = True) -> Any:
    """A nested section. `hashed=False`: what is logged, never what is trained or measured; left
    out of config hashes whatever its values (turning it off must not make a run a new one)."""
    return field(default_factory=cls, metadata={"help": help, "hashed": hashed})


# --------------------------------------------------------------------------- stage 1
@dataclass(frozen=True)
class DataConfig:
    name: Literal["procedural", "fashion-mnist", "folder"] = opt(
        "procedural", "dataset: procedural (synthetic), fashion-mnist (Debian package) or an image folder"
    )
    style: Literal["mixed", "textured", "textured-objects", "textured-both", "flat"] = opt(
        "mixed",
        "procedural: mixed (plain, gradient or faint tiled backgrounds) or textured (flat objects on only high-contrast stripes, checks or gradients, object and background colours from one range: importance is not brightness); textured-objects (textured objects on plain backgrounds), textured-both and flat complete the crossing object {textured, flat} x background {textured, flat}",
        added=True,
    )
    placement: Literal["inset", "uniform", "wrap"] = opt(
        "inset",
        "procedural: inset (centres in [-0.9 + r, 0.9 - r]; the textured styles' large objects then sit near the middle), uniform (smaller objects, centres uniform over every position that keeps them wholly inside; objects still avoid the border) or wrap (smaller objects, centres uniform over the canvas on a torus: every position is as often foreground as any other); not with style mixed",
        added=True,
    )
    holdout: Literal["none", "top-left"] = opt(
        "none",
        "procedural, uniform placement: top-left keeps every training object wholly out of the top-left quadrant and puts every test object's centre in it (a new-position test)",
        added=True,
    )
    resolution: int = opt(256, "square image side in pixels")
    root: str = opt(
        "", "dataset directory (folder datasets; fashion-mnist defaults to /usr/share/datasets/fashion-mnist)"
    )
    layout: Literal["plain", "ffhq", "imagenet", "coco"] = opt(
        "plain", "folder layout: plain/ffhq (images), imagenet (class subfolders), coco (captions JSON)"
    )
    captions: str = opt("", "coco: captions JSON file (default <root>/annotations/captions_<split>2017.json)")
    test_fraction: float = opt(
        0.1, "folder without train/ and test/ subfolders: the last fraction of sorted files is the test split"
    )
    num_train: int = opt(4096, "procedural: number of training images")
    num_test: int = opt(512, "procedural: number of test images")
    seed: int = opt(0, "procedural: generator seed (part of the dataset's identity, not the run seed)")
    limit_train: int = opt(0, "use only the first N training images (0 = all)")
    fit: Literal["pad", "resize", "translate"] = opt(
        "pad",
        "fashion-mnist: 28 -> 32 px by padding the black background (2 px ring) or by resizing (64 px: resized from 32 either way), or translate: the 28 px garment at a uniformly random offset on a black canvas of data.resolution px (for instance 48; data.seed draws the offsets)",
    )
    augment: bool = opt(
        True, "paper's training augmentation (random resized crop for FFHQ, random crop for ImageNet, horizontal flip)"
    )
    workers: int = opt(0, "DataLoader worker processes for folder datasets")


@dataclass(frozen=True)
class MaskConfig:
    type: Literal["adaptive", "random", "none"] = opt(
        "adaptive", "adaptive (learned scorer), random, or none (VQGAN baseline)"
    )
    ratio: float = opt(0.25, "masked fraction of the L tokens: N = (1 - ratio) * L are kept")
    scorer: Literal["mlp", "mlp-bn", "conv", "conv-nobn"] = opt(
        "mlp",
        "scoring network of the gain, damage and straight-through selectors: mlp (the paper's two-layer MLP), conv (the released conv + BatchNorm scorer), or either with the BatchNorm switched (mlp-bn, conv-nobn)",
    )
    scorer_hidden: int = opt(256, "hidden width of the scoring network")
    selector: Selector = opt(
        "gain",
        "how the adaptive mask picks its N tokens: gain (the paper's: top-N of the scorer, kept features LayerNorm(z)*s), "
        "damage (the scorer predicts the reconstruction damage of dropping a token, HPM), straight-through (Gumbel top-N with a "
        "sigmoid surrogate gradient, DynamicViT / DQ-VAE), entropy (patch grey-level entropy, DQ-VAE's rule, no learning) or "
        "oracle-foreground (largest ground-truth foreground share, a bound; needs data with foreground masks) or centre (the N tokens "
        "nearest the grid's centre in every image: the position prior, no parameters)",
        added=True,
    )
    damage_random_share: float = opt(
        0.0,
        "damage: share of training images whose mask is drawn at random instead of by predicted damage (HPM's mix), so that the decoder does not learn to restore only what the selector drops",
        added=True,
    )
    tau_start: float = opt(
        1.0,
        "straight-through: temperature of the sigmoid surrogate at step 0 (annealed geometrically to tau_end)",
        added=True,
    )
    tau_end: float = opt(0.1, "straight-through: temperature at the last training step", added=True)
    revision: Literal[2] = revised(
        2,
        "revision of the damage and straight-through selectors' training signal: 2 = surrogate centred on the top-N threshold, codes read before the EMA update, damage probes of the training mask's size (revision 1 runs are not reused; docs/faithfulness.md)",
        lambda mask: mask.selector in REVISED_SELECTORS,
    )


def num_kept(length: int, ratio: float) -> int:
    """N = (1 - ratio) * L, floored as the released code does (at least one token)."""
    return max(1, int(math.floor((1.0 - ratio) * length + 1e-6)))


@dataclass(frozen=True)
class DemaskConfig:
    type: Literal["dcsa-update", "dcsa", "sa", "none"] = opt(
        "dcsa-update", "de-mask: direction-constrained SA with/without mask update, plain SA, or none (VQGAN mid block)"
    )
    layers: int = opt(8, "H, the number of (ResNet block + attention) sub-modules")
    mask_init: float = opt(0.02, "B_1 value on masked keys (paper: 0 replaced by 0.02 so that sqrt can grow it)")
    renormalize: bool = opt(
        False, "renormalise attention over keys after weighting (False = Eq. 6 as released: no renormalisation)"
    )


@dataclass(frozen=True)
class QuantizerConfig:
    codebook_size: int = opt(1024, "K, number of codes")
    dim: int = opt(256, "code dimension n_z")
    beta: float = opt(0.25, "commitment loss weight")
    update: Literal["ema", "loss"] = opt(
        "ema", "codebook update: EMA with dead-code restart (released code) or the VQGAN codebook loss"
    )
    decay: float = opt(0.99, "EMA decay")
    restart_dead: bool = opt(True, "EMA: replace codes whose EMA usage falls below dead_threshold with batch vectors")
    dead_threshold: float = opt(1.0, "EMA: usage below which a code counts as dead")


@dataclass(frozen=True)
class MQVAEConfig:
    downsample: int = opt(16, "f, the downsampling factor (paper: 8, 16 or 32; smoke/mini profiles divide it by 4)")
    channels: int = opt(128, "base channel width of encoder and decoder")
    channel_mult: tuple[int, ...] = opt(
        (), "per-level channel multipliers; empty = derived from f as (1, 1, 2, 2, 4, 4)[: log2(f) + 1]"
    )
    num_res_blocks: int = opt(2, "ResNet blocks per encoder level (decoder uses one more)")
    z_channels: int = opt(256, "encoder output channels")
    attention: bool = opt(True, "self-attention blocks at the latent resolution (as VQGAN)")
    projection: Literal["released", "taming"] = opt(
        "released",
        "quantizer projections: released (bias-free Linear in, 1x1 conv out to the decoder width) or taming (VQGAN's quant_conv / post_quant_conv via z_channels)",
    )
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
    lpips_weights: str = opt(
        "", "LPIPS-VGG16 weights file (default: $MQVQ_WEIGHTS_DIR or ~/.cache/mqvq/weights/lpips_vgg.pth)"
    )
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
    precision: Literal["auto", "fp32", "bf16"] = opt(
        "auto", "auto = bf16 autocast on CUDA, fp32 on CPU; the quantizer always runs in fp32"
    )
    compile: bool = opt(False, "torch.compile the encoder and decoder")
    log_every: int = opt(50, "steps between metric logs")
    ckpt_every: int = opt(5000, "steps between checkpoints (one is always written at the end)")
    eval_images: int = opt(256, "test images reconstructed at the end for validation metrics and the grid")
    scorer_lr_scale: float = opt(1.0, "the adaptive mask scorer's learning rate as a multiple of lr")
    val_every: int = opt(
        0,
        "steps between validation passes over the first val_images test images during training (L1 and the mask diagnostics as curves; 0 = only at the end)",
    )
    val_images: int = opt(256, "test images in each validation pass during training")
    double_forward: bool = opt(
        False,
        "run the model a second time for the discriminator step, as the released Lightning code does: the EMA codebook, dead-code restart and scorer BatchNorm statistics then update twice per batch",
    )


@dataclass(frozen=True)
class Stage1Config:
    data: DataConfig = sub(DataConfig, "training and test data")
    model: MQVAEConfig = sub(MQVAEConfig, "MQ-VAE architecture")
    loss: LossConfig = sub(LossConfig, "reconstruction, perceptual, GAN and codebook losses")
    train: TrainConfig = sub(TrainConfig, "optimisation")


# --------------------------------------------------------------------------- stage 2
# size presets of StackformerConfig's fields; paper §4.1: small 18 + 6 blocks (307M), base 36 + 12 (607M)
STACKFORMER_PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(code_layers=2, position_layers=1, width=32, heads=2),
    "cpu": dict(code_layers=4, position_layers=2, width=128, heads=4),
    "mini": dict(code_layers=6, position_layers=2, width=256, heads=8),
    "small": dict(code_layers=18, position_layers=6, width=1024, heads=16),
    "base": dict(code_layers=36, position_layers=12, width=1024, heads=16),
}


@dataclass(frozen=True)
class StackformerConfig:
    kind: Literal["stackformer", "raster"] = opt(
        "stackformer",
        "stackformer (codes + positions) or raster (VQGAN transformer over all L codes; needs a mask-ratio-0 stage 1)",
    )
    preset: Literal["tiny", "cpu", "mini", "small", "base"] = opt(
        "small", "size preset; code_layers/position_layers/width/heads default to it"
    )
    code_layers: int = opt(
        18, "Code-Transformer blocks (raster: the single stack has code_layers + position_layers blocks)"
    )
    position_layers: int = opt(6, "Position-Transformer blocks")
    width: int = opt(1024, "model width d")
    heads: int = opt(16, "attention heads")
    dropout: float = opt(0.1, "dropout on embeddings, attention and residuals (released: 0.1)")
    conditioning: Literal["none", "class", "text"] = opt(
        "none", "unconditional, class-conditional (class token prefix), or text (caption tokens prefix the codes, §3.3)"
    )
    text_length: int = opt(
        32, "text: caption tokens in the prefix (longer captions are truncated, shorter ones padded)", added=True
    )
    text_vocab: int = opt(
        8192, "text: most word-level tokens learned from the training captions (with <pad> and <unk>)", added=True
    )
    text_encoder: Literal["word"] = opt(
        "word",
        "text: how captions become prefix tokens: word (a vocabulary learned from the training captions, no pretrained encoder, as the paper)",
        added=True,
    )


@dataclass(frozen=True)
class Stage2TrainConfig:
    steps: int = opt(200_000, "optimizer steps")
    batch_size: int = opt(32, "sequences per device per step")
    lr: float = opt(5e-4, "AdamW learning rate (released: 5e-4, not batch-scaled)")
    weight_decay: float = opt(0.01, "AdamW weight decay on Linear weights only (released)")
    warmup_steps: int = opt(0, "linear warm-up steps")
    schedule: Literal["cosine", "constant"] = opt(
        "cosine", "learning-rate schedule after warm-up (released: cosine to 0)"
    )
    grad_clip: float = opt(1.0, "gradient-norm clip (0 disables)")
    precision: Literal["auto", "fp32", "bf16"] = opt("auto", "auto = bf16 autocast on CUDA, fp32 on CPU")
    compile: bool = opt(False, "torch.compile the transformer for training")
    flip: bool = opt(True, "also tokenize horizontally flipped training images (2x sequences)")
    log_every: int = opt(50, "steps between metric logs")
    val_every: int = opt(1000, "steps between validation losses on the test tokens (Fig. 6a curves)")
    ckpt_every: int = opt(5000, "steps between checkpoints (one is always written at the end)")
    cond_dropout: float = opt(
        0.0,
        "probability of dropping a sequence's class or caption during training, so that the model also learns the unconditional distribution (needed for classifier-free guidance; 0.1 is common)",
        added=True,
    )


@dataclass(frozen=True)
class SamplingConfig:
    top_k: int = opt(100, "codes: keep the k most likely (released default 100)")
    top_p: float = opt(0.95, "codes: nucleus mass in (0, 1]")
    temperature: float = opt(1.0, "codes: softmax temperature")
    top_k_pos: int = opt(10, "positions: keep the k most likely (released default 10)")
    top_p_pos: float = opt(0.95, "positions: nucleus mass in (0, 1]")
    temperature_pos: float = opt(1.0, "positions: softmax temperature")
    enforce_raster: bool = opt(
        False, "also forbid positions before the last one (released: only repeats are forbidden)"
    )
    batch_size: int = opt(64, "images per sampling batch")
    cfg_scale: float = opt(
        1.0,
        "classifier-free guidance scale for conditional models trained with cond_dropout > 0 (1 = no guidance)",
        added=True,
    )


@dataclass(frozen=True)
class Stage2Config:
    model: StackformerConfig = sub(StackformerConfig, "Stackformer or raster baseline")
    train: Stage2TrainConfig = sub(Stage2TrainConfig, "optimisation")
    sampling: SamplingConfig = sub(SamplingConfig, "default sampling settings (Algorithm 1)")


@dataclass(frozen=True)
class EvalConfig:
    backend: Literal["inception", "vgg16"] = opt(
        "inception", "Fréchet/IS features: inception (FID, needs the weights file) or vgg16 (FD-VGG16, offline)"
    )
    inception_weights: str = opt(
        "",
        "FID Inception-v3 weights (pt_inception-2015-12-05-6726825d.pth); default $MQVQ_INCEPTION_WEIGHTS or the weights folder",
    )
    num_samples: int = opt(50_000, "generated samples for FID / IS (paper: 50k)")
    test_images: int = opt(0, "test images for rFID, usage, PSNR, LPIPS (0 = the entire test split, as the paper)")
    fid_reference: Literal["train", "test"] = opt(
        "train",
        "real images the samples' FID / FD is measured against: the training split (FFHQ convention) or the test split",
    )
    batch_size: int = opt(64, "images per batch for features and reconstructions")
    speed_batch_size: int = opt(64, "batch size at which sampling speed is measured")
    speed_repeats: int = opt(3, "timed repeats for sampling speed (median reported)")
    lpips_net: Literal["alex", "vgg"] = opt(
        "alex", "LPIPS network for the reconstruction metric (AlexNet is the LPIPS default)"
    )
    is_splits: int = opt(10, "Inception Score splits")
    workers: int = opt(0, "DataLoader workers for folder datasets")
    cfg_scale: float = opt(
        3.0,
        "guidance scale of the *_cfg metrics (a second FID / attribute accuracy) for models trained with condition dropout",
        added=True,
    )


@dataclass(frozen=True)
class TrackingConfig:
    system_metrics: bool = opt(
        True,
        "log CPU, memory, disk, network and (with pynvml) GPU use over time on training and evaluation runs (MLflow's system metrics)",
    )
    system_metrics_interval: float = opt(10.0, "seconds between two system-metrics samples")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = opt("", "experiment name (file stem)")
    description: str = opt("", "one line: what this experiment is")
    profile: str = opt("paper", "size profile the experiment was resolved under")
    seed: int = opt(0, "run seed (not part of the config hash)")
    stage1: Stage1Config = sub(Stage1Config, "stage 1: MQ-VAE")
    stage2: Stage2Config = sub(Stage2Config, "stage 2: Stackformer")
    eval: EvalConfig = sub(EvalConfig, "evaluation (mqvq eval)")
    tracking: TrackingConfig = sub(
        TrackingConfig, "what is logged beside the metrics (never part of a run's identity)", hashed=False
    )
