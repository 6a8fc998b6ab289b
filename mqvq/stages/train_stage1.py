"""Stage-1 training loop: MQ-VAE + PatchGAN, explicit and resumable.

One step = one MQ-VAE forward, generator backward, then a discriminator step that reuses the
same (detached) reconstruction: the released code runs the whole MQ-VAE twice per batch and so
also updates the EMA codebook twice. Rank 0 owns the MLflow run and writes checkpoints;
every rank trains. Checkpoints hold model, discriminator, optimisers, step and every rank's
RNG state; data order is a function of (seed, step), so a resumed run continues exactly where
an uninterrupted one would be.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from mqvq import runtime, signals
from mqvq.config import ExperimentConfig, config_hash, flatten, identity, to_dict
from mqvq.data import build_dataset, eval_batches, train_loader
from mqvq.data.datasets import check_images
from mqvq.images import reconstruction_grid
from mqvq.metrics.mask import MaskTally
from mqvq.metrics.pixels import lpips_distance, psnr
from mqvq.metrics.registry import STEP_SECONDS, TRAIN_LOSS
from mqvq.models.checkpoint import FORMAT, atomic_save
from mqvq.models.losses import Stage1Loss
from mqvq.models.mqvae import MQVAE
from mqvq.models.quantizer import perplexity
from mqvq.models.selectors import StraightThroughMask, anneal_tau
from mqvq.runtime import Dist, autocast, autocast_dtype, conv_layout, progress_bar, seed_all
from mqvq.stages.runs import (
    LoopClock,
    MetricWindow,
    model_location,
    TrainingRun,
    checkpoint_on_exit,
    closing_run,
    log_datasets,
    new_stage_model,
    open_run,
    publish,
    stage_run_name,
)
from mqvq.stages.lookup import MODEL_FILE
from mqvq.stages.schedule import lr_at, set_lr
from mqvq.tracking import tags as T
from mqvq.tracking.store import Tracker

STAGE = "stage1"


@dataclass
class Stage1Job:
    """What stage 1's loop trains: the MQ-VAE (`net`: its DDP / compiled wrapper), the losses with
    their discriminator, both optimizers, and the run it logs and checkpoints to."""

    cfg: ExperimentConfig
    run: TrainingRun
    model: MQVAE
    net: torch.nn.Module
    loss_fn: Stage1Loss
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    dtype: torch.dtype | None

    @property
    def dist(self) -> Dist:
        return self.run.dist


def save_model(path: Path, cfg: ExperimentConfig, model: MQVAE, step: int, run_id: str) -> Path:
    """Weights + config only: what tokenizing, sampling and evaluation need."""
    return atomic_save(
        {
            "format": FORMAT,
            "stage": STAGE,
            "step": step,
            "run_id": run_id,
            "experiment": cfg.name,
            "config": to_dict(cfg),
            "model": model.state_dict(),
        },
        path,
    )


def generator_groups(model: MQVAE, scorer_lr_scale: float) -> list[dict]:
    """One Adam group for the whole MQ-VAE, the adaptive mask's scorer in its own group when its
    learning rate is scaled (`train.scorer_lr_scale`)."""
    scorer = list(model.mask.scorer.parameters()) if hasattr(model.mask, "scorer") else []
    if not scorer or scorer_lr_scale == 1.0:
        return [{"params": list(model.parameters())}]
    ids = {id(p) for p in scorer}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest}, {"params": scorer, "lr_scale": scorer_lr_scale}]


def train_stage1(
    cfg: ExperimentConfig,
    tracker: Tracker,
    *,
    resume: bool = False,
    run_id: str | None = None,
    device: str | None = None,
    progress: bool = True,
    mlflow_experiment: str | None = None,
    stop_after: int | None = None,
    parent_run_id: str | None = None,
    tags: dict | None = None,
) -> dict:
    """Train (or resume) stage 1 and return a summary. `stop_after` ends this process after that
    many steps with a checkpoint, leaving the run resumable (used for time-boxed jobs and tests)."""
    d = runtime.setup(device)
    s1 = cfg.stage1
    dtype = autocast_dtype(s1.train.precision, d.device)
    experiment = mlflow_experiment or cfg.name

    # everything that can fail on user input happens before an MLflow run exists
    train_ds = build_dataset(s1.data, "train")
    test_ds = build_dataset(s1.data, "test")
    for ds in (train_ds, test_ds):  # a file that does not decode would fail the run mid-way
        check_images(ds, tracker.home / "data-checks")
    seed_all(cfg.seed)
    layout = conv_layout(d.device)
    model = MQVAE(s1.model).to(d.device, memory_format=layout)
    loss_fn = Stage1Loss(s1.loss).to(d.device, memory_format=layout)
    fused = d.device.type == "cuda"
    opt_g = torch.optim.Adam(
        generator_groups(model, s1.train.scorer_lr_scale), lr=s1.train.lr, betas=(0.5, 0.9), fused=fused
    )
    opt_d = torch.optim.Adam(loss_fn.disc.parameters(), lr=s1.train.lr, betas=(0.5, 0.9), fused=fused)

    run = TrainingRun(
        tracker,
        d,
        None,
        {"model": model, "disc": loss_fn.disc, "opt_g": opt_g, "opt_d": opt_d},
        {"stage": STAGE, "experiment": cfg.name, "config": to_dict(cfg)},
    )
    with closing_run(run) as ending:  # from the moment the MLflow run exists, it ends however this ends
        with signals.deferred():  # an interrupt waits until `run` knows the run it would have to end
            run.run_id = open_run(
                tracker,
                d,
                experiment=experiment,
                stage=STAGE,
                config_hash=config_hash(identity(s1)),
                seed=cfg.seed,
                what=f"{cfg.name} (profile {cfg.profile}, seed {cfg.seed})",
                run_name=stage_run_name(STAGE, cfg),
                tags={T.EXPERIMENT: cfg.name, T.PROFILE: cfg.profile, T.DATA_DIGEST: train_ds.digest(), **(tags or {})},
                params=flatten(to_dict(s1), "stage1.")
                | {"seed": cfg.seed, "experiment": cfg.name, "profile": cfg.profile},
                artifacts={"config.json": to_dict(cfg)},
                resume=resume,
                run_id=run_id,
                parent_run_id=parent_run_id,
            )
        log_datasets(tracker, d, run.run_id, s1.data, train_ds, test_ds)
        run.watch_system(cfg.tracking.system_metrics_interval, cfg.tracking.system_metrics)
        start_step = run.restore(cfg.seed)
        net = DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None) if d.world > 1 else model
        if s1.train.compile:  # compile the wrapper, so `model`'s state-dict keys stay unchanged
            # the adaptive GAN weight differentiates the graph twice (retain_graph=True), which
            # donated buffers forbid
            torch._functorch.config.donated_buffer = False
            net = torch.compile(net)
        loader = train_loader(train_ds, s1.train.batch_size, cfg.seed, d.rank, d.world, start_step, s1.data.workers)
        job = Stage1Job(cfg, run, model, net, loss_fn, opt_g, opt_d, dtype)
        summary: dict = {"run_id": run.run_id, "checkpoint": str(run.checkpoint), **run.mark_resumed()}
        summary["train_metrics"] = _loop(job, loader, test_ds, progress, stop_after)
        summary["step"] = run.step
        if run.step < s1.train.steps:  # stopped early on purpose: resumable
            ending["status"] = "KILLED"
            return summary | {"finished": False}
        if d.main:
            summary |= _finish(job, test_ds)
        ending["status"] = "FINISHED"
        return summary | {"finished": True}


def _loop(job: Stage1Job, loader, val_ds, progress: bool, stop_after: int | None) -> dict[str, float]:
    """Train from `job.run.step` to the end (or `stop_after` steps more), keeping the step current on
    the run; returns the last logged training metrics."""
    cfg, d, run, model, net, loss_fn, opt_g, opt_d, dtype = (
        job.cfg,
        job.dist,
        job.run,
        job.model,
        job.net,
        job.loss_fn,
        job.opt_g,
        job.opt_d,
        job.dtype,
    )
    t, m = cfg.stage1.train, cfg.stage1.model.mask
    tracker, run_id = run.tracker, run.run_id
    layout = conv_layout(d.device)
    start_step = step = run.step
    end = t.steps if stop_after is None else min(t.steps, start_step + stop_after)
    window = MetricWindow(t.batch_size * d.world)
    counts = torch.zeros(model.config.quantizer.codebook_size, device=d.device)
    last_logs: dict[str, float] = {}
    clock = LoopClock(start_step)

    def validate() -> None:
        if d.main:
            with clock.pause():
                metrics, _ = validation_pass(model, val_ds, d.device, dtype, t.batch_size, t.val_images)
                publish(tracker, d, run_id, {f"val/{k}": v for k, v in metrics.items()}, step)

    # stop signals wait for a step's end, on every rank the same one (outermost: the checkpoint written
    # on the way out is covered too)
    with (
        signals.stops_between_steps(runtime.any_rank) as stops,
        progress_bar(progress and d.main) as bar,
        checkpoint_on_exit(run.save),
    ):
        task = bar.add_task(f"stage 1 {cfg.name}", total=t.steps, completed=step, info="")
        if t.val_every and step == 0:  # the untrained model: where the curves start
            validate()
        batches = iter(loader)
        while step < end:
            with stops.step():  # a step is whole: an interrupt waits for its end, so the checkpoint
                # written on the way out holds a consistent state and a resume continues exactly
                batch = next(batches)
                x = batch["image"].to(d.device, non_blocking=True, memory_format=layout)
                fg = batch["fg"].to(d.device, non_blocking=True) if "fg" in batch else None
                if isinstance(
                    model.mask, StraightThroughMask
                ):  # the surrogate's temperature, a function of the step (resumes exactly)
                    model.mask.tau.fill_(anneal_tau(m.tau_start, m.tau_end, step, t.steps))
                lr = lr_at(step, t.lr, t.warmup_steps, t.steps, t.schedule)
                set_lr(opt_g, lr)
                set_lr(opt_d, lr)
                with autocast(d.device, dtype):
                    out = net(x, fg)
                    g_loss, logs = loss_fn.generator_loss(x, out.recon, out.vq_loss, model.last_layer(), step)
                    if out.selector_loss is not None:  # the damage selector's ranking loss: it trains the scorer only
                        g_loss = g_loss + out.selector_loss
                        logs["selector_loss"] = out.selector_loss.detach()
                opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                opt_g.step()
                recon = out.recon
                if t.double_forward:  # the released step: a second forward for D, updating EMA and BatchNorm again
                    with torch.no_grad(), autocast(d.device, dtype):
                        recon = net(x, fg).recon
                if loss_fn.gan_active(step):
                    with autocast(d.device, dtype):
                        d_loss, dlogs = loss_fn.discriminator_loss(x, recon)
                    opt_d.zero_grad(set_to_none=True)
                    d_loss.backward()
                    runtime.all_reduce_mean_([p.grad for p in loss_fn.disc.parameters()])
                    opt_d.step()
                    logs |= dlogs
                window.add(logs)
                counts += out.counts
                step += 1
                run.step = step
                if step % t.log_every == 0 or step == end:
                    metrics = window.flush()  # one host sync per window
                    metrics["train/codebook_used"] = (counts > 0).float().mean().item()
                    metrics["train/perplexity"] = perplexity(counts).item()
                    metrics["train/lr"] = lr
                    last_logs = metrics
                    publish(tracker, d, run_id, metrics, step)
                    bar.update(
                        task,
                        completed=step,
                        info=f"loss {metrics[TRAIN_LOSS]:.4f}  {metrics['train/images_per_s']:.1f} img/s",
                    )
                    counts.zero_()
                if t.val_every and step % t.val_every == 0 and step < t.steps:  # the last point is _finish's
                    validate()
                if step % t.ckpt_every == 0 and step < end:
                    run.save()
    if (sec := clock.step_seconds(step)) is not None and d.main:
        tracker.log_metrics(run_id, {STEP_SECONDS["stage1"]: sec}, step)
    return last_logs


@torch.no_grad()
def validation_pass(
    model: MQVAE, test_ds, device, dtype, batch_size: int, limit: int, lpips=None, grid: bool = False
) -> tuple[dict, object]:
    """L1, PSNR, batch-union codebook usage, LPIPS and the mask diagnostics on the first `limit` test
    images, in eval mode, and (with `grid`) the first batch's reconstruction grid. The RNG is forked, so a random mask drawn here never shifts the training
    stream (a resumed run stays bit-identical to an uninterrupted one)."""
    was_training = model.training
    model.eval()
    used = torch.zeros(model.config.quantizer.codebook_size, dtype=torch.bool, device=device)
    l1 = lp = psnr_sum = 0.0
    n, tally, picture = 0, None, None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for batch in eval_batches(test_ds, batch_size, limit):
            x = batch["image"].to(device)
            with autocast(device, dtype):
                out = model(x, batch["fg"].to(device) if "fg" in batch else None)
            recon = out.recon.float().clamp(-1, 1)
            enc = out.encoded
            used[enc.codes.flatten()] = True
            l1 += (x - recon).abs().mean(dim=(1, 2, 3)).sum().item()
            psnr_sum += psnr(x, recon).sum().item()
            if lpips is not None:
                lp += lpips_distance(lpips, x, recon).sum().item()
            if model.config.mask.type != "none":
                tally = tally or MaskTally(enc.grid, device)
                tally.add(enc.keep, batch["fg"].to(device) if "fg" in batch else None, enc.scores, x)
            if grid and picture is None:
                picture = reconstruction_grid(x, recon, enc.keep, enc.grid, title="validation reconstructions")
            n += x.shape[0]
    model.train(was_training)
    metrics = {"l1": l1 / n, "psnr": psnr_sum / n, "codebook_usage": used.float().mean().item() * 100.0}
    if lpips is not None:
        metrics["lpips"] = lp / n
    if tally is not None:
        metrics |= tally.result()
    return metrics, picture


@torch.no_grad()
def _finish(job: Stage1Job, test_ds) -> dict:
    """Validation on the test split, reconstruction grid, model artifact."""
    cfg, d, model, run = job.cfg, job.dist, job.model, job.run
    tracker, run_id, step = run.tracker, run.run_id, run.step
    t = cfg.stage1.train
    res, grid_img = validation_pass(
        model, test_ds, d.device, job.dtype, t.batch_size, t.eval_images, job.loss_fn.lpips, grid=True
    )
    metrics = {f"val/{k}": v for k, v in res.items()}
    m = cfg.stage1.model
    with new_stage_model(
        run,
        cfg,
        STAGE,
        "VQGAN" if m.mask.type == "none" else "MQ-VAE",
        step,
        {
            "mask.type": m.mask.type,
            "mask.ratio": m.mask.ratio,
            "mask.selector": m.mask.selector,
            "downsample": m.downsample,
            "codebook_size": m.quantizer.codebook_size,
            "resolution": cfg.stage1.data.resolution,
            "params": sum(p.numel() for p in model.parameters()),
        },
    ) as (model_id, folder):
        model_file = save_model(
            folder / MODEL_FILE, cfg, model, step, run_id
        )  # written once, where the logged model points
    tracker.log_metrics(run_id, metrics, step, model_id=model_id)
    if grid_img is not None:
        tracker.log_image(run_id, grid_img, "figures/reconstructions.png")
    return {"val_metrics": metrics, "model": model_location(model_id, model_file)}
