"""Sample images from a trained stage-2 model: Stackformer codes/positions -> stage-1 decoder -> PNGs."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mqvq.config import SamplingConfig, from_dict, to_dict, validate_sampling
from mqvq.errors import UserError
from mqvq.files import file_digest
from mqvq.models.mqvae import MQVAE
from mqvq.models.sampling import generate
from mqvq.models.stackformer import Stackformer
from mqvq.runtime import autocast_dtype, progress_bar
from mqvq.stages.lookup import model_file, resolve
from mqvq.tracking.store import Tracker, ensure_writable

# the tags `mqvq search sampling` writes on a stage-2 run and `--sampling best` reads
SAMPLING_PARAMS = ("top_k", "top_p", "temperature", "top_k_pos", "top_p_pos", "temperature_pos")
INT_PARAMS = {"top_k", "top_k_pos"}
BEST_PREFIX = "mqvq.sampling.best."


@dataclass
class Generator:
    """A stage-2 model with its stage-1 decoder, ready to sample."""
    stackformer: Stackformer
    vae: MQVAE
    sampling: SamplingConfig
    run_id: str | None
    config: dict

    @property
    def num_classes(self) -> int:
        return self.stackformer.shape.num_classes


def load_generator(tracker: Tracker, spec: str, device: torch.device) -> Generator:
    """Stage-2 run id or checkpoint path -> Generator on `device` (stage 1 found via the recorded reference)."""
    from mqvq.stages.train_stage2 import load_stackformer

    ref = resolve(tracker, spec, "stage2")
    model, ckpt = load_stackformer(ref.checkpoint, "cpu")
    s1 = ckpt["stage1"]
    path = Path(s1["checkpoint"])
    if not path.is_file() or file_digest(path) != s1["digest"]:
        if not s1.get("run_id"):
            raise UserError(f"the stage-1 checkpoint {path} this model was trained on is missing or changed.")
        path = model_file(tracker, s1["run_id"])
        if file_digest(path) != s1["digest"]:
            raise UserError(f"stage-1 run {s1['run_id']}'s checkpoint differs from the one stage 2 was trained on.")
    vae = MQVAE.from_checkpoint(path, "cpu")
    sampling = from_dict(SamplingConfig, ckpt["config"]["stage2"]["sampling"], "stage2.sampling.")
    return Generator(model.to(device), vae.to(device), sampling, ref.run_id, ckpt["config"])


def resolve_sampling(tracker: Tracker, gen: Generator, which: str) -> SamplingConfig:
    """`default`: the run's stage2.sampling; `best`: what `mqvq search sampling` found for it."""
    if which == "default":
        return gen.sampling
    if which == "best":
        if gen.run_id is None:
            raise UserError("--sampling best needs a model with an MLflow run: pass the stage-2 run id.")
        return best_sampling(tracker, gen.run_id, gen.sampling)
    raise UserError(f"--sampling {which!r} is invalid: use default or best.")


def best_sampling(tracker: Tracker, run_id: str, base: SamplingConfig) -> SamplingConfig:
    """The best values a search wrote to the model's run (for --sampling best)."""
    tags = tracker.get_run(run_id).data.tags
    found = {k[len(BEST_PREFIX):]: v for k, v in tags.items() if k.startswith(BEST_PREFIX) and k[len(BEST_PREFIX):] in SAMPLING_PARAMS}
    if not found:
        raise UserError(f"run {run_id} has no searched sampling settings: run `mqvq search sampling {run_id}` first.")
    values = {k: int(v) if k in INT_PARAMS else float(v) for k, v in found.items()}
    return dataclasses.replace(base, **values)


def sampling_params(base: SamplingConfig, **overrides) -> SamplingConfig:
    params = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    validate_sampling(params, "--")
    return params


def check_top_k(name: str, value: int, codebook_size: int, grid_len: int) -> None:
    """A top-k the user asks for beyond what it ranks would silently mean "no top-k": refuse it,
    naming K or L. (The configs' defaults, 100 and 10 as released, may exceed a small model's K.)"""
    limit, what = (codebook_size, f"K = {codebook_size} codes") if name == "top_k" else (grid_len, f"L = {grid_len} positions")
    if value > limit:
        raise UserError(f"--{name.replace('_', '-')} {value} exceeds this model's {what}: use at most {limit}.")


def check_request(gen: Generator, num: int, steps: int | None, class_label: int | None) -> None:
    model = gen.stackformer
    n_tok = model.shape.length
    if steps is not None and not 1 <= steps <= n_tok:
        raise UserError(f"--steps {steps} is invalid: this model samples between 1 and N = {n_tok} tokens "
                        f"(grid {model.shape.grid[0]}x{model.shape.grid[1]} = {model.shape.grid_len} positions).")
    if num < 1:
        raise UserError(f"--num {num} must be at least 1.")
    if class_label is not None and not (gen.num_classes and 0 <= class_label < gen.num_classes):
        allowed = f"0..{gen.num_classes - 1}" if gen.num_classes else "none (the model is unconditional)"
        raise UserError(f"--class-label {class_label} is invalid: allowed labels are {allowed}.")


@torch.no_grad()
def sample_images(gen: Generator, num: int, params: SamplingConfig, *, class_label: int | None = None, seed: int = 0,
                  steps: int | None = None, precision: str = "auto", progress: bool = True):
    """Yield (images uint8 (B, H, W, 3), codes, positions, labels) batches until `num` images are made."""
    check_request(gen, num, steps, class_label)
    model, device = gen.stackformer, next(gen.stackformer.parameters()).device
    dtype = autocast_dtype(precision, device)
    g = torch.Generator(device=device).manual_seed(seed)
    done = 0
    with progress_bar(progress) as bar:
        task = bar.add_task("sampling", total=num, info="")
        while done < num:
            b = min(params.batch_size, num - done)
            labels = None
            if gen.num_classes:
                labels = torch.full((b,), class_label, device=device) if class_label is not None else \
                    torch.arange(done, done + b, device=device) % gen.num_classes
            s = generate(model, b, params, labels, g, steps=steps, dtype=dtype, device=device)
            images = gen.vae.decode(s.codes, s.positions, model.shape.grid)
            x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            done += b
            bar.update(task, completed=done)
            yield x, s.codes.cpu(), s.positions.cpu(), None if labels is None else labels.cpu()


def write_samples(gen: Generator, out: Path, num: int, params: SamplingConfig, *, class_label: int | None = None,
                  seed: int = 0, steps: int | None = None, npz: bool = False, overwrite: bool = False,
                  progress: bool = True) -> dict:
    """Write `num` PNGs (000000.png, ...) and optionally samples.npz to `out`; returns a summary."""
    from PIL import Image

    check_request(gen, num, steps, class_label)  # all input checks before anything is written
    ensure_writable(out, "--out")
    if not overwrite and any(out.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png")):
        raise UserError(f"{out} already holds samples: choose another --out or pass --overwrite.")
    t0 = time.perf_counter()
    index, arrays, codes, positions = 0, [], [], []
    for images, c, p, _ in sample_images(gen, num, params, class_label=class_label, seed=seed, steps=steps, progress=progress):
        for img in images:
            Image.fromarray(img).save(out / f"{index:06d}.png")
            index += 1
        if npz:
            arrays.append(images)
            codes.append(c.numpy())
            positions.append(p.numpy())
    if npz:
        np.savez(out / "samples.npz", images=np.concatenate(arrays), codes=np.concatenate(codes), positions=np.concatenate(positions))
    elapsed = time.perf_counter() - t0
    return {"num": index, "out": str(out), "seconds": elapsed, "images_per_s": index / elapsed, "run_id": gen.run_id,
            "sampling": to_dict(params)}
