"""`mqvq eval`: compute a run's metrics and figures and log them back to that run.

Stage-1 runs: rfid (or rfd_vgg16), usage (+ perplexity, per-code counts), psnr, lpips, mask
quality, Fig. 4 / Fig. 5 / reconstruction grid. Stage-2 runs: fid (or fd_vgg16), is, sampling
speed, sample grid, Fig. 6a, and for text-conditional models on procedural data `attr`: how often
samples show their caption's attributes (attr_acc), beside the same classifier on real test images
(attr_acc_real) and against shuffled captions (attr_acc_chance). A text model samples with the test
split's captions. A model trained with condition dropout also gets each of fid and attr with
classifier-free guidance at eval.cfg_scale (fid_cfg / fd_vgg16_cfg, attr_acc_cfg).

Every Fréchet metric carries tags (`tags.eval_tag(metric, fact)`) naming its backend, sample count,
reference statistics and split, so a table can never mix backends or references silently.
"""

from __future__ import annotations

import dataclasses
import json
import time

import torch

from mqvq import figures, images
from mqvq.config import ExperimentConfig, SamplingConfig, validate_eval
from mqvq.data import build_dataset
from mqvq.errors import UserError
from mqvq.metrics.features import make_backend
from mqvq.metrics.frechet import frechet_distance
from mqvq.metrics.mask import MASK_METRICS
from mqvq.runtime import autocast_dtype, environment, setup
from mqvq.metrics.registry import TRAIN_LOSS, VAL_LOSS, best, frechet, guided
from mqvq.stages.lookup import resolve
from mqvq.stages.reconstruction import reconstruction_metrics
from mqvq.stages.reference import reference_stats, sample_reference
from mqvq.timing import device_name
from mqvq.tracking import tags as T
from mqvq.tracking.store import Tracker
from mqvq.tracking.system import SystemMetrics

STAGE_METRICS = {
    "stage1": ("rfid", "usage", "psnr", "lpips", "mask", "figures"),
    "stage2": ("fid", "is", "speed", "attr", "figures"),
}
ALL_METRICS = tuple(sorted({m for ms in STAGE_METRICS.values() for m in ms}))


def parse_metrics(text: str | None) -> list[str] | None:
    if not text:
        return None
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in ALL_METRICS]
    if bad:
        raise UserError(f"unknown metric {bad[0]!r}: allowed metrics are {', '.join(ALL_METRICS)}.")
    return names


def evaluate_run(
    tracker: Tracker,
    spec: str,
    metrics: list[str] | None = None,
    *,
    backend: str | None = None,
    num_samples: int | None = None,
    test_images: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    sampling: SamplingConfig | None = None,
    progress: bool = True,
    sampling_choice: str = "default",
    cfg_scale: float | None = None,
    system_metrics: bool | None = None,
) -> dict:
    """Evaluate a finished run and log the results to it; returns {metric: value} and what was logged.
    `system_metrics`: sample them while evaluating (default: the run's `tracking.system_metrics`)."""
    ref = resolve(tracker, spec, need_run=True)  # evaluation logs to the run
    run, stage, cfg, path = tracker.get_run(ref.run_id), ref.stage, ref.experiment, ref.checkpoint
    ev = dataclasses.replace(
        cfg.eval,
        **{
            k: v
            for k, v in {
                "backend": backend,
                "num_samples": num_samples,
                "test_images": test_images,
                "batch_size": batch_size,
                "cfg_scale": cfg_scale,
            }.items()
            if v is not None
        },
    )
    validate_eval(ev, "--" if any(v is not None for v in (num_samples, batch_size, cfg_scale)) else "eval.")
    allowed = STAGE_METRICS[stage]
    wanted = metrics or [m for m in allowed if m != "is" and not (m == "attr" and not _captioned(cfg))]
    wrong = [m for m in wanted if m not in allowed]
    if wrong:
        other = "stage-1" if stage == "stage2" else "stage-2"
        hint = (
            f" (its stage-1 run is {run.data.tags[T.STAGE1_RUN]})"
            if stage == "stage2" and run.data.tags.get(T.STAGE1_RUN)
            else ""
        )
        raise UserError(
            f"{wrong[0]} is a {other} metric; this is a {stage} run{hint}. Metrics for {stage} runs: {', '.join(allowed)}."
        )
    d = setup(device)
    t0 = time.perf_counter()
    # every refusal before the system-metrics sampler starts: a refused command writes nothing to the run
    request = (
        _stage2_request(tracker, run.info.run_id, cfg, ev, wanted, d.device, sampling, sampling_choice, cfg_scale)
        if stage == "stage2"
        else None
    )
    watch = cfg.tracking.system_metrics if system_metrics is None else system_metrics
    with SystemMetrics(tracker, run.info.run_id, cfg.tracking.system_metrics_interval, enabled=watch):
        if stage == "stage1":
            values, tags = _eval_stage1(tracker, run.info.run_id, cfg, ev, path, wanted, d.device, progress)
        else:
            values, tags = _eval_stage2(
                tracker,
                run.info.run_id,
                cfg,
                ev,
                wanted,
                d.device,
                progress,
                sampling_choice,
                *request,
                searched=sampling is None and sampling_choice == "best",
            )
    env = environment(d.device)
    tags |= {
        T.EVAL_DEVICE: device_name(d.device),
        T.EVAL_TORCH: env["torch"],
        T.EVAL_TIME: env["time"],
        T.EVAL_SECONDS: f"{time.perf_counter() - t0:.1f}",
    }
    if "threads" in env:
        tags[T.EVAL_THREADS] = env["threads"]
    numeric = {k: v for k, v in values.items() if isinstance(v, (int, float))}
    tracker.log_metrics(
        run.info.run_id, numeric, step=0, model_id=tracker.model_of(run.info.run_id)
    )  # the Models tab shows them
    tracker.set_tags(run.info.run_id, tags)
    return {"run_id": run.info.run_id, "stage": stage, "metrics": numeric, "tags": tags}


def _captioned(cfg: ExperimentConfig) -> bool:
    """A text-conditional model on procedural data, whose captions the attribute classifier checks."""
    return cfg.stage2.model.conditioning == "text" and cfg.stage1.data.name == "procedural"


def _frechet_tags(name: str, backend, num: int, reference: str, split: str) -> dict:
    return {
        T.eval_tag(name, "backend"): backend.name,
        T.eval_tag(name, "num"): num,
        T.eval_tag(name, "reference"): reference,
        T.eval_tag(name, "resolution"): backend.resolution,
        T.eval_tag(name, "split"): split,
    }


def _eval_stage1(tracker, run_id, cfg, ev, path, wanted, device, progress):
    from mqvq.models.lpips import load_lpips
    from mqvq.models.mqvae import MQVAE

    model = MQVAE.from_checkpoint(path, device)
    test = build_dataset(cfg.stage1.data, "test")  # limit_train never shortens the test split
    backend = (
        make_backend(ev.backend, device, cfg.stage1.data.resolution, ev.inception_weights or None)
        if "rfid" in wanted
        else None
    )
    lpips = load_lpips(ev.lpips_net).to(device) if "lpips" in wanted else None
    dtype = autocast_dtype(cfg.stage1.train.precision, device)
    res = reconstruction_metrics(
        model,
        test,
        device,
        backend=backend,
        lpips=lpips,
        batch_size=ev.batch_size,
        dtype=dtype,
        limit=ev.test_images,
        workers=ev.workers,
        progress=progress,
    )
    n = int(res.metrics["num_images"])
    values, tags = {}, {T.EVAL_TEST_IMAGES: n}
    if "rfid" in wanted:  # reconstructions of the test split against the same images
        ref, key = reference_stats(backend, test, "test", tracker.home, ev.batch_size, ev.workers, progress)
        name = frechet("rfid", backend.name)
        values[name] = frechet_distance(res.recon_stats, ref)
        tags |= _frechet_tags(name, backend, n, key, "test")
    if "usage" in wanted:
        values |= {k: res.metrics[k] for k in ("usage", "usage_effective", "perplexity")}
        tags[T.eval_tag("usage", "num")] = n
        tracker.log_dict(
            run_id,
            {"codebook_size": len(res.counts), "test_images": n, "counts": [int(c) for c in res.counts.tolist()]},
            "metrics/codebook_counts.json",
        )
    if "psnr" in wanted:
        values["psnr"] = res.metrics["psnr"]
    if "lpips" in wanted:
        values["lpips"] = res.metrics["lpips"]
        tags[T.eval_tag("lpips", "net")] = ev.lpips_net
        tags[T.eval_tag("lpips", "resolution")] = max(cfg.stage1.data.resolution, 64)
    if "mask" in wanted:
        values |= {k: res.metrics[k] for k in MASK_METRICS if k in res.metrics}
        if res.keep_frequency is not None:
            fg = None if res.fg_frequency is None else res.fg_frequency.round(decimals=4).tolist()
            tracker.log_dict(
                run_id,
                {
                    "grid": list(res.keep_frequency.shape),
                    "test_images": n,
                    "keep": res.keep_frequency.round(decimals=4).tolist(),
                    "foreground": fg,
                },
                "metrics/keep_frequency.json",
            )
    if "figures" in wanted and res.examples:
        ex = res.examples
        tracker.log_figure(
            run_id,
            figures.importance_grid(
                ex["images"],
                ex["keep"],
                ex["grid"],
                ex["scores"],
                title=f"{cfg.name} ({cfg.profile}, seed {cfg.seed}): Fig. 4",
                fg=ex.get("fg"),
            ),
            "figures/fig4_mask.png",
        )
        if res.keep_frequency is not None:
            tracker.log_figure(
                run_id,
                figures.keep_frequency_figure(
                    res.keep_frequency, res.fg_frequency, f"{cfg.name}: where the mask keeps tokens ({n} test images)"
                ),
                "figures/keep_frequency.png",
            )
        tracker.log_image(
            run_id,
            images.reconstruction_grid(
                ex["images"], ex["recon"], ex["keep"], ex["grid"], title=f"{cfg.name}: test-split reconstructions"
            ),
            "figures/reconstructions_test.png",
        )
        fig = figures.codebook_pca_figure(model.quantizer.embed.detach(), res.counts, f"{cfg.name}: codebook PCA")
        tracker.log_figure(run_id, fig, "figures/fig5_codebook_pca.png")
        # the projected codebook itself (K x 2), so reports can draw Fig. 5 from a store without checkpoints
        tracker.log_dict(
            run_id, {"pc": figures.codebook_pca(model.quantizer.embed).round(6).tolist()}, "metrics/codebook_pca.json"
        )
    return values, tags


def _stage2_request(tracker, run_id, cfg, ev, wanted, device, sampling, sampling_choice, cfg_scale):
    """The generator and the sampling settings, once what was asked for is known to fit the model."""
    from mqvq.stages.generate import check_guidance, load_generator, resolve_sampling

    if "attr" in wanted and not _captioned(cfg):
        kind = {"none": "an unconditional", "class": "a class-conditional", "text": "a text-conditional"}[
            cfg.stage2.model.conditioning
        ]
        raise UserError(
            "attr (caption-following accuracy) needs a text-conditional model trained on procedural data; "
            f"this run is {kind} model trained on {cfg.stage1.data.name!r} data."
        )
    if "is" in wanted and ev.backend != "inception":
        raise UserError("IS needs class logits, which only the inception backend has: use --backend inception.")
    gen = load_generator(tracker, run_id, device)
    params = sampling or resolve_sampling(tracker, gen, sampling_choice)
    for scale in (params.cfg_scale, cfg_scale if cfg_scale is not None else 1.0):  # what was asked for fits the model
        check_guidance(gen, scale)
    return gen, params


def _eval_stage2(tracker, run_id, cfg, ev, wanted, device, progress, sampling_choice, gen, params, searched):
    """The stage-2 metric families `wanted` asks for, each from its own function below: the
    sample-based ones (Fréchet distance, Inception Score, caption accuracy) from one set of samples
    per sampling variant, then sampling speed and figures. Returns (metrics, tags)."""
    settings = json.dumps(dataclasses.asdict(params), sort_keys=True)
    values, tags = {}, {T.EVAL_SAMPLING: settings, T.EVAL_SAMPLING_CHOICE: sampling_choice}
    prompts, targets = _test_captions(cfg, ev, gen, wanted)
    variants = _variants(gen, params, ev)
    first = None
    if {"fid", "is", "attr"} & set(wanted):
        sampled = (gen, variants, searched, prompts, targets)
        first = _sample_families(tracker, cfg, ev, wanted, device, progress, sampling_choice, sampled, values, tags)
    if "speed" in wanted:
        _speed(cfg, ev, device, gen, params, values, tags)
    if "figures" in wanted:
        _stage2_figures(tracker, run_id, cfg, gen, params, sampling_choice, prompts, variants, first)
    return values, tags


def _test_captions(cfg, ev, gen, wanted):
    """A text model's prompts (the test split's captions, cycled over the samples) and, for caption
    accuracy, the attributes each sample was asked for; (None, None) for a class-free model."""
    if gen.conditioning != "text":
        return None, None
    test = build_dataset(cfg.stage1.data, "test")
    prompts, targets = test.caption_list, None
    if "attr" in wanted:
        idx = torch.arange(ev.num_samples) % len(prompts)
        targets = {k: v[idx] for k, v in test.attributes.items()}
    return prompts, targets


def _variants(gen, params, ev):
    """[(suffix, sampling settings)]: the settings asked for, and guidance as a second measurement
    when the model learned the unconditional distribution too."""
    variants = [("", params)]
    if gen.cond_dropout > 0 and params.cfg_scale == 1.0 and ev.cfg_scale != 1.0:
        variants.append(("guided", dataclasses.replace(params, cfg_scale=ev.cfg_scale)))
    return variants


def _sample_families(tracker, cfg, ev, wanted, device, progress, sampling_choice, sampled, values, tags):
    """Draw `ev.num_samples` samples per variant once and measure each wanted sample-based family on
    them, into `values` and `tags`; returns the first variant's first images (for the figure).
    `sampled`: (generator, variants, whether the settings are the searched ones, prompts, targets)."""
    gen, variants, searched, prompts, targets = sampled
    from mqvq.stages.attributes import attribute_classifier
    from mqvq.stages.sample_metrics import sample_metrics

    backend = ref = key = split = None
    if "fid" in wanted or "is" in wanted:
        backend = make_backend(ev.backend, device, cfg.stage1.data.resolution, ev.inception_weights or None)
        ref, key, split = sample_reference(cfg, backend, tracker.home, ev.batch_size, ev.workers, progress)
    clf = attribute_classifier(cfg.stage1.data, tracker.home, device, progress) if "attr" in wanted else None
    first = None
    for tail, p in variants:
        sm = sample_metrics(
            gen, ev.num_samples, p, backend, ref, cfg.seed, ev.is_splits, progress, prompts, keep=clf is not None
        )
        first = sm["first_images"] if first is None else first
        p_settings = json.dumps(dataclasses.asdict(p), sort_keys=True)
        if "fid" in wanted:
            _frechet_family(sm, backend, ev, key, split, searched, tail, p_settings, sampling_choice, values, tags)
        if "is" in wanted and not tail:  # Inception Score is reported for the settings asked for only
            values |= {"is": sm["is_mean"], "is_std": sm["is_std"]}
            tags |= {T.eval_tag("is", "backend"): backend.name, T.eval_tag("is", "num"): ev.num_samples}
        if clf is not None:
            _caption_family(clf, sm, targets, ev, tail, p_settings, values, tags)
    return first


def _frechet_family(sm, backend, ev, key, split, searched, tail, p_settings, sampling_choice, values, tags):
    """The samples' Fréchet distance under its own name: `best` when the searched settings drew them
    (so the default-sampling number that studies and reports show is never silently replaced),
    `guided` for the guided variant."""
    name = frechet("fid", backend.name)
    name = best(name) if searched else name
    name = guided(name) if tail else name
    values[name] = sm["fd"]
    tags |= _frechet_tags(name, backend, ev.num_samples, key, split) | {
        T.eval_tag(name, "sampling"): p_settings,
        T.eval_tag(name, "sampling_choice"): sampling_choice,
    }


def _caption_family(clf, sm, targets, ev, tail, p_settings, values, tags):
    """Caption accuracy: how often the attribute classifier reads back what the prompt asked for; the
    guided variant adds its own mean and per-attribute numbers (the real-data and chance bounds once)."""
    from mqvq.stages.attributes import caption_accuracy

    acc = caption_accuracy(clf, sm["images"], targets)
    if tail:
        acc = {guided(k): v for k, v in acc.items() if k not in ("attr_acc_real", "attr_acc_chance")}
    values |= acc
    attr = guided("attr_acc") if tail else "attr_acc"
    tags |= {T.eval_tag(attr, "num"): ev.num_samples, T.eval_tag(attr, "sampling"): p_settings}


def _speed(cfg, ev, device, gen, params, values, tags):
    from mqvq.stages.sample_metrics import sampling_speed

    dtype = autocast_dtype(cfg.stage2.train.precision, device)
    values |= sampling_speed(gen, params, ev.speed_batch_size, ev.speed_repeats, dtype)
    tags[T.eval_tag("speed", "batch_size")] = ev.speed_batch_size


def _stage2_figures(tracker, run_id, cfg, gen, params, sampling_choice, prompts, variants, first):
    """Samples (a prompt grid for a text model) and the stage-2 loss curves, as run artifacts."""
    if gen.conditioning == "text":
        tracker.log_image(run_id, _prompt_grid(gen, params, cfg, prompts[:6], variants), "figures/samples_eval.png")
    else:
        if first is None:
            first = next(iter(_few_samples(gen, params, cfg.seed)))
        tracker.log_image(
            run_id,
            images.sample_grid(first[:32], f"{cfg.name}: samples ({sampling_choice} sampling)"),
            "figures/samples_eval.png",
        )
    curves = {}
    for curve, label in ((TRAIN_LOSS, "train"), (VAL_LOSS, "validation")):
        hist = tracker.metric_history(run_id, curve)
        if hist:
            curves[label] = ([m.step for m in hist], [m.value for m in hist])
    if curves:
        tracker.log_figure(
            run_id,
            figures.loss_curves_figure(
                {cfg.name: curves}, {cfg.name: cfg.stage2.model.kind}, f"{cfg.name}: stage-2 loss"
            ),
            "figures/fig6a_loss_curves.png",
        )


def _prompt_grid(gen, params, cfg, prompts: list[str], variants, per_prompt: int = 6):
    """One row per prompt (and per guidance setting): `per_prompt` samples each, the prompt as the row label."""
    import textwrap

    from mqvq.stages.generate import sample_images

    rows = []
    for tail, p in variants:
        for prompt in prompts:
            batch = next(
                iter(
                    sample_images(
                        gen,
                        per_prompt,
                        dataclasses.replace(p, batch_size=per_prompt),
                        prompts=[prompt],
                        seed=cfg.seed,
                        progress=False,
                    )
                )
            )[0]
            guide = f"\n(guidance {p.cfg_scale:g})" if tail else ""
            rows.append((textwrap.fill(prompt, 28) + guide, batch))
    return images.labelled_grid(rows, title=f"{cfg.name}: samples for test captions")


def _few_samples(gen, params, seed):
    from mqvq.stages.generate import sample_images

    for batch, *_ in sample_images(gen, min(16, params.batch_size), params, seed=seed, progress=False):
        yield batch
