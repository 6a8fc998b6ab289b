"""Stage-2 training loop: Stackformer (or the raster baseline) on frozen stage-1 tokens.

The stage-1 model encodes the dataset once (cached per checkpoint + dataset); training then
reads token tensors only. Loss = CE_code + CE_position (Eq. 14), AdamW (0.9, 0.95) with weight
decay on Linear weights only, cosine schedule, as released. The run is tagged with its stage-1
run and checkpoint digest; validation loss on the test tokens every `val_every` steps gives
Fig. 6a's curves. A text-conditional model learns its caption vocabulary from the training
captions here and keeps it in its checkpoint; with `cond_dropout` each sequence's condition is
dropped with that probability (classifier-free guidance needs the unconditional model too).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from mqvq import runtime, signals
from mqvq.config import ExperimentConfig, StackformerConfig, flatten, from_dict, to_dict
from mqvq.data import StepSampler, build_dataset
from mqvq.errors import UserError
from mqvq.files import file_digest
from mqvq.images import sample_grid, to_pixels
from mqvq.metrics.registry import STEP_SECONDS, TOKENIZE_SECONDS, TRAIN_LOSS
from mqvq.models.checkpoint import FORMAT, atomic_save, read_checkpoint
from mqvq.models.mqvae import MQVAE
from mqvq.models.sampling import generate
from mqvq.models.stackformer import Stackformer, TokenShape, sequence_loss
from mqvq.models.text import WordTokenizer
from mqvq.models.text import from_dict as tokenizer_from_dict
from mqvq.runtime import Dist, autocast, autocast_dtype, progress_bar, seed_all
from mqvq.stages.lookup import MODEL_FILE, ModelRef, check_compatible, find_stage1, resolve, stage2_hash
from mqvq.stages.runs import (
    LoopClock,
    MetricWindow,
    model_location,
    TrainingRun,
    checkpoint_on_exit,
    closing_run,
    new_stage_model,
    open_run,
    publish,
    stage_run_name,
)
from mqvq.stages.schedule import lr_at, set_lr
from mqvq.stages.tokenize import TokenSet, cached_tokens
from mqvq.tracking import tags as T
from mqvq.tracking.store import Tracker

STAGE = "stage2"
VAL_TOKENS = 2048  # test images whose tokens give the validation loss (Fig. 6a): only these are encoded


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, fused: bool) -> torch.optim.AdamW:
    """AdamW with decay on Linear weights only (minGPT / released)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            (decay if isinstance(module, nn.Linear) and name == "weight" else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=fused)


@dataclass
class Conditions:
    """What each token sequence is conditioned on: class labels (M,) or caption ids (M, T), or None."""

    train: torch.Tensor | None
    test: torch.Tensor | None
    num_classes: int = 0
    tokenizer: WordTokenizer | None = None
    text_length: int = 0

    def shape(self, tokens: TokenSet) -> TokenShape:
        return TokenShape(
            tokens.codebook_size,
            tokens.grid,
            tokens.codes.shape[1],
            self.num_classes,
            self.tokenizer.size if self.tokenizer else 0,
            self.text_length,
        )


def save_model(
    path: Path,
    cfg: ExperimentConfig,
    model: Stackformer,
    step: int,
    run_id: str,
    stage1: dict,
    tokenizer: WordTokenizer | None = None,
) -> Path:
    s = model.shape
    text = {"text": tokenizer.to_dict()} if tokenizer is not None else {}
    return atomic_save(
        {
            "format": FORMAT,
            "stage": STAGE,
            "step": step,
            "run_id": run_id,
            "experiment": cfg.name,
            "config": to_dict(cfg),
            "model": model.state_dict(),
            "stage1": stage1,
            "shape": {
                "codebook_size": s.codebook_size,
                "grid": list(s.grid),
                "length": s.length,
                "num_classes": s.num_classes,
                "text_vocab": s.text_vocab,
                "text_length": s.text_length,
            },
            **text,
        },
        path,
    )


def load_stackformer(path: Path, map_location="cpu") -> tuple[Stackformer, dict]:
    """A stage-2 model checkpoint -> (model in eval mode, the checkpoint dict)."""
    ckpt = read_checkpoint(path)
    if ckpt.get("stage") != STAGE:
        raise UserError(f"{path} is a {ckpt.get('stage')} checkpoint, not a stage-2 model.")
    shape = ckpt["shape"]
    model = Stackformer(
        from_dict(StackformerConfig, ckpt["config"]["stage2"]["model"], "stage2.model."),
        TokenShape(
            shape["codebook_size"],
            tuple(shape["grid"]),
            shape["length"],
            shape["num_classes"],
            shape.get("text_vocab", 0),
            shape.get("text_length", 0),
        ),
    )
    model.load_state_dict(ckpt["model"])
    return model.to(map_location).eval(), ckpt


def load_tokenizer(ckpt: dict) -> WordTokenizer | None:
    """The caption tokenizer a text-conditional checkpoint carries (None for other models)."""
    return tokenizer_from_dict(ckpt["text"]) if ckpt.get("text") else None


def text_conditions(cfg: ExperimentConfig, train_ds, test_ds, train_tok: TokenSet, test_tok: TokenSet) -> Conditions:
    """Learn the caption vocabulary from the training captions; caption ids for every sequence."""
    m = cfg.stage2.model
    caps = {}
    for split, ds in (("train", train_ds), ("test", test_ds)):
        caps[split] = getattr(ds, "caption_list", None)
        if not caps[split]:
            raise UserError(
                f"text conditioning needs captions, but the {split} split of {ds.name} has none: "
                f"use procedural data or a COCO folder (stage1.data.layout = 'coco')."
            )
    tokenizer = WordTokenizer.build(caps["train"], m.text_vocab)
    encode = lambda captions, tok: tokenizer.encode(captions, m.text_length)[tok.index]  # noqa: E731
    return Conditions(encode(caps["train"], train_tok), encode(caps["test"], test_tok), 0, tokenizer, m.text_length)


def prepare_tokens(
    cfg: ExperimentConfig, ref: ModelRef, home: Path, d, batch_size: int
) -> tuple[TokenSet, TokenSet, MQVAE, Conditions]:
    """Tokenize train (with flips) and test splits once; rank 0 computes, the others read the cache."""
    vae = MQVAE.from_checkpoint(ref.checkpoint, d.device)
    train_ds, test_ds = build_dataset(cfg.stage1.data, "train"), build_dataset(cfg.stage1.data, "test")
    out = []
    for rank_turn in (True, False):  # rank 0 first, then everyone else from the cache
        if d.main == rank_turn:
            out = [
                cached_tokens(
                    home, ref.checkpoint, vae, train_ds, "train", batch_size, d.device, cfg.stage2.train.flip
                ),
                cached_tokens(home, ref.checkpoint, vae, test_ds, "test", batch_size, d.device, False, VAL_TOKENS),
            ]
        if d.world > 1:
            torch.distributed.barrier()
    train_tok, test_tok = out
    kind = cfg.stage2.model.conditioning
    if kind == "text":
        return train_tok, test_tok, vae, text_conditions(cfg, train_ds, test_ds, train_tok, test_tok)
    if kind == "class":
        if not train_ds.num_classes or (train_tok.labels < 0).any():
            raise UserError(
                f"class conditioning needs labels, but {train_ds.name} has none: use stage2.model.conditioning='none'."
            )
        return train_tok, test_tok, vae, Conditions(train_tok.labels, test_tok.labels, train_ds.num_classes)
    return train_tok, test_tok, vae, Conditions(None, None)


def train_stage2(
    cfg: ExperimentConfig,
    tracker: Tracker,
    *,
    stage1: str | None = None,
    resume: bool = False,
    run_id: str | None = None,
    device: str | None = None,
    progress: bool = True,
    mlflow_experiment: str | None = None,
    stop_after: int | None = None,
    parent_run_id: str | None = None,
    tags: dict | None = None,
) -> dict:
    d = runtime.setup(device)
    s2 = cfg.stage2
    experiment = mlflow_experiment or cfg.name
    dtype = autocast_dtype(s2.train.precision, d.device)

    ref = resolve(tracker, stage1, "stage1") if stage1 else find_stage1(tracker, cfg, experiment)
    check_compatible(ref, cfg)
    digest = file_digest(ref.checkpoint)
    t0 = time.perf_counter()
    train_tok, test_tok, vae, conds = prepare_tokens(
        cfg, ref, tracker.home, d, max(cfg.eval.batch_size, cfg.stage1.train.batch_size)
    )
    tokenize_s = time.perf_counter() - t0  # before the run exists: logged below, for `study plan`
    shape = conds.shape(train_tok)
    seed_all(cfg.seed)
    model = Stackformer(s2.model, shape).to(d.device)
    opt = make_optimizer(model, s2.train.lr, s2.train.weight_decay, d.device.type == "cuda")
    stage1_info = {"run_id": ref.run_id, "checkpoint": str(ref.checkpoint), "digest": digest}

    h = stage2_hash(cfg, digest)
    run = TrainingRun(tracker, d, None, {"model": model, "opt": opt}, {"stage": STAGE, "config": to_dict(cfg)})
    with closing_run(run) as ending:  # from the moment the MLflow run exists, it ends however this ends
        with signals.deferred():  # an interrupt waits until `run` knows the run it would have to end
            run.run_id = open_run(
                tracker,
                d,
                experiment=experiment,
                stage=STAGE,
                config_hash=h,
                seed=cfg.seed,
                what=f"{cfg.name} (profile {cfg.profile}, seed {cfg.seed}) on this stage-1 checkpoint",
                run_name=stage_run_name(STAGE, cfg),
                tags={
                    T.EXPERIMENT: cfg.name,
                    T.PROFILE: cfg.profile,
                    T.STAGE1_RUN: ref.run_id or "",
                    T.STAGE1_CHECKPOINT: digest,
                    T.PARAMS_COUNT: model.num_params(),
                    **(tags or {}),
                },
                params=flatten(to_dict(s2), "stage2.")
                | {
                    "seed": cfg.seed,
                    "experiment": cfg.name,
                    "profile": cfg.profile,
                    "stage1_run": ref.run_id or "",
                    "tokens_per_image": shape.length,
                    "grid": f"{shape.grid[0]}x{shape.grid[1]}",
                    "num_classes": shape.num_classes,
                }
                | ({"text_vocab_size": shape.text_vocab} if shape.text_vocab else {}),
                artifacts={"config.json": to_dict(cfg)},
                resume=resume,
                run_id=run_id,
                parent_run_id=parent_run_id,
            )
        if d.main:
            tracker.log_metrics(run.run_id, {TOKENIZE_SECONDS: tokenize_s}, 0)
            if ref.run_id:  # its tokens are the stage-1 model's data
                tracker.copy_datasets(ref.run_id, run.run_id)
        run.watch_system(cfg.tracking.system_metrics_interval, cfg.tracking.system_metrics)
        run.restore(cfg.seed)
        net = DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None) if d.world > 1 else model
        if s2.train.compile:
            net = torch.compile(net)
        job = Stage2Job(cfg, run, model, net, opt, dtype, conds)
        summary: dict = {
            "run_id": run.run_id,
            "checkpoint": str(run.checkpoint),
            "stage1": stage1_info,
            **run.mark_resumed(),
        }
        summary["train_metrics"] = _loop(job, train_tok, test_tok, progress, stop_after)
        summary["step"] = run.step
        if run.step < s2.train.steps:
            ending["status"] = "KILLED"
            return summary | {"finished": False}
        if d.main:
            summary |= _finish(job, vae, stage1_info)
        ending["status"] = "FINISHED"
        return summary | {"finished": True}


@dataclass
class Stage2Job:
    """What stage 2's loop trains: the Stackformer (`net`: its DDP / compiled wrapper), its optimizer,
    the conditions, and the run it logs and checkpoints to."""

    cfg: ExperimentConfig
    run: TrainingRun
    model: Stackformer
    net: nn.Module
    opt: torch.optim.Optimizer
    dtype: torch.dtype | None
    conds: "Conditions"

    @property
    def dist(self) -> Dist:
        return self.run.dist


def _batch(tokens: TokenSet, cond: torch.Tensor | None, idx, device):
    idx = torch.as_tensor(idx)
    return (
        tokens.codes[idx].to(device, non_blocking=True),
        tokens.positions[idx].to(device, non_blocking=True),
        None if cond is None else cond[idx].to(device, non_blocking=True),
    )


@torch.no_grad()
def validation_loss(
    model: Stackformer,
    tokens: TokenSet,
    batch_size: int,
    device,
    dtype,
    cond: torch.Tensor | None,
    limit: int = VAL_TOKENS,
) -> dict:
    model.eval()
    n = min(len(tokens), limit)
    sums: dict[str, float] = {}
    for start in range(0, n, batch_size):
        codes, positions, c = _batch(tokens, cond, range(start, min(start + batch_size, n)), device)
        with autocast(device, dtype):
            _, logs = model.loss(codes, positions, c)
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v.item() * codes.shape[0]
    model.train()
    return {f"val/{k}": v / n for k, v in sums.items()}


def _loop(
    job: Stage2Job, train_tok: TokenSet, test_tok: TokenSet, progress: bool, stop_after: int | None
) -> dict[str, float]:
    """Train from `job.run.step` to the end (or `stop_after` steps more), keeping the step current on
    the run; returns the last logged metrics."""
    cfg, d, run, model, net, opt, dtype, conds = (
        job.cfg,
        job.dist,
        job.run,
        job.model,
        job.net,
        job.opt,
        job.dtype,
        job.conds,
    )
    tracker, run_id = run.tracker, run.run_id
    t = cfg.stage2.train
    start_step = step = run.step
    end = t.steps if stop_after is None else min(t.steps, start_step + stop_after)
    window = MetricWindow(t.batch_size * d.world * model.shape.length)
    sampler = iter(StepSampler(len(train_tok), t.batch_size, cfg.seed, d.rank, d.world, start_step))
    last: dict[str, float] = {}
    model.train()
    clock = LoopClock(start_step)
    # stop signals wait for a step's end, on every rank the same one (outermost: the checkpoint written
    # on the way out is covered too)
    with (
        signals.stops_between_steps(runtime.any_rank) as stops,
        progress_bar(progress and d.main) as bar,
        checkpoint_on_exit(run.save),
    ):
        task = bar.add_task(f"stage 2 {cfg.name}", total=t.steps, completed=step, info="")
        while step < end:
            with stops.step():  # a step is whole: an interrupt waits for its end, so the checkpoint
                # written on the way out holds a consistent state and a resume continues exactly
                codes, positions, cond = _batch(train_tok, conds.train, next(sampler), d.device)
                drop = torch.rand(codes.shape[0], device=d.device) < t.cond_dropout if t.cond_dropout > 0 else None
                lr = lr_at(step, t.lr, t.warmup_steps, t.steps, t.schedule)
                set_lr(opt, lr)
                with autocast(d.device, dtype):  # through `net`, so DDP all-reduces the gradients
                    loss, logs = sequence_loss(*net(codes, positions, cond, drop), codes, positions)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if t.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                opt.step()
                window.add(logs)
                step += 1
                run.step = step
                if step % t.log_every == 0 or step == end:
                    metrics = window.flush(rate_name="tokens_per_s") | {"train/lr": lr}
                    if step % t.val_every == 0 or step == t.steps:
                        with clock.pause():
                            metrics |= validation_loss(model, test_tok, t.batch_size, d.device, dtype, conds.test)
                    publish(tracker, d, run_id, metrics, step)
                    last = metrics
                    bar.update(
                        task,
                        completed=step,
                        info=f"loss {metrics[TRAIN_LOSS]:.3f}  {metrics['train/tokens_per_s']:,.0f} tok/s",
                    )
                if step % t.ckpt_every == 0 and step < end:
                    run.save()
    if (sec := clock.step_seconds(step)) is not None and d.main:
        tracker.log_metrics(run_id, {STEP_SECONDS["stage2"]: sec}, step)
    return last


@torch.no_grad()
def _finish(job: Stage2Job, vae, stage1_info: dict) -> dict:
    cfg, d, model, dtype, conds, run = job.cfg, job.dist, job.model, job.dtype, job.conds, job.run
    tracker, run_id, step = run.tracker, run.run_id, run.step
    m = cfg.stage2.model
    with new_stage_model(
        run,
        cfg,
        STAGE,
        "raster transformer" if m.kind == "raster" else "Stackformer",
        step,
        {
            "kind": m.kind,
            "conditioning": m.conditioning,
            "code_layers": m.code_layers,
            "position_layers": m.position_layers,
            "width": m.width,
            "params": model.num_params(),
            "stage1_run": stage1_info["run_id"] or "",
        },
    ) as (model_id, folder):
        model_file = save_model(
            folder / MODEL_FILE, cfg, model, step, run_id, stage1_info, conds.tokenizer
        )  # written once
    n = min(16, cfg.stage2.sampling.batch_size)
    cond = None
    if model.shape.num_classes:
        cond = torch.arange(n, device=d.device) % model.shape.num_classes
    elif model.shape.text_vocab:  # the first test captions
        cond = conds.test[torch.arange(n) % len(conds.test)]
    g = torch.Generator(device=d.device).manual_seed(cfg.seed)
    s = generate(model, n, cfg.stage2.sampling, cond, g, dtype=dtype, device=d.device)
    images = vae.decode(s.codes, s.positions, model.shape.grid)
    title = f"{cfg.name}: samples at step {step}"
    tracker.log_image(run_id, sample_grid(to_pixels(images), title), "figures/samples.png")
    return {"model": model_location(model_id, model_file)}
