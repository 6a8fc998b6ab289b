"""Sample images from a trained stage-2 model: Stackformer codes/positions -> stage-1 decoder -> PNGs.

A condition is a class label or a prompt per image; text-conditional models encode prompts with
the tokenizer saved in their checkpoint. `cfg_scale` != 1 (classifier-free guidance) needs a model
trained with condition dropout."""

from __future__ import annotations

import dataclasses
import os
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
from mqvq.models.text import WordTokenizer
from mqvq.runtime import autocast_dtype, progress_bar
from mqvq.stages.lookup import model_file, resolve
from mqvq.tracking import tags as T
from mqvq.tracking.location import ensure_writable
from mqvq.tracking.store import Tracker

# the tags `mqvq search sampling` writes on a stage-2 run and `--sampling best` reads
SAMPLING_PARAMS = ("top_k", "top_p", "temperature", "top_k_pos", "top_p_pos", "temperature_pos", "cfg_scale")
INT_PARAMS = {"top_k", "top_k_pos"}
BEST_PREFIX = T.SAMPLING_BEST


@dataclass
class Generator:
    """A stage-2 model with its stage-1 decoder, ready to sample."""

    stackformer: Stackformer
    vae: MQVAE
    sampling: SamplingConfig
    run_id: str | None
    config: dict
    tokenizer: WordTokenizer | None = None

    @property
    def num_classes(self) -> int:
        return self.stackformer.shape.num_classes

    @property
    def conditioning(self) -> str:
        return "class" if self.num_classes else ("text" if self.tokenizer is not None else "none")

    @property
    def cond_dropout(self) -> float:
        return float(self.config["stage2"]["train"].get("cond_dropout", 0.0))

    def condition(
        self, start: int, batch: int, class_label: int | None, prompts: list[str] | None, device: torch.device
    ) -> tuple[torch.Tensor | None, list | None]:
        """Images start..start+batch-1's condition for the model and as written beside them: one
        class label, or cycling through the classes / the prompts."""
        if self.num_classes:
            labels = (
                torch.full((batch,), class_label, device=device)
                if class_label is not None
                else torch.arange(start, start + batch, device=device) % self.num_classes
            )
            return labels, labels.tolist()
        if self.tokenizer is not None:
            texts = [prompts[i % len(prompts)] for i in range(start, start + batch)]
            return self.tokenizer.encode(texts, self.stackformer.shape.text_length).to(device), texts
        return None, None


def load_generator(tracker: Tracker, spec: str, device: torch.device) -> Generator:
    """Stage-2 run id or checkpoint path -> Generator on `device` (stage 1 found via the recorded reference)."""
    from mqvq.stages.train_stage2 import load_stackformer, load_tokenizer

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
    return Generator(model.to(device), vae.to(device), sampling, ref.run_id, ckpt["config"], load_tokenizer(ckpt))


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
    found = {
        k[len(BEST_PREFIX) :]: v
        for k, v in tags.items()
        if k.startswith(BEST_PREFIX) and k[len(BEST_PREFIX) :] in SAMPLING_PARAMS
    }
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
    limit, what = (
        (codebook_size, f"K = {codebook_size} codes") if name == "top_k" else (grid_len, f"L = {grid_len} positions")
    )
    if value > limit:
        raise UserError(f"--{name.replace('_', '-')} {value} exceeds this model's {what}: use at most {limit}.")


def clean_prompt(text: str) -> str:
    """A prompt as it can be stored and shown: bytes that are not UTF-8 (a shell's `$'\xff'`) become
    U+FFFD, control characters spaces (never echoed raw to a terminal), the ends trimmed."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()


def read_prompts(prompts: list[str] | None, path: Path | None) -> list[str] | None:
    """--prompt values and the lines of --prompts FILE (blank lines skipped; a UTF-8 byte-order mark
    is not a word), in that order, each cleaned (`clean_prompt`)."""
    out = [clean_prompt(p) for p in prompts or []]
    if path is not None:
        try:
            out += [
                clean_prompt(line) for line in Path(path).read_text(encoding="utf-8-sig").splitlines() if line.strip()
            ]
        except FileNotFoundError:
            raise UserError(f"--prompts {path}: no such file (one prompt per line).") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--prompts {path} cannot be read as text: {e}.") from None
        if len(out) == len(prompts or []):
            raise UserError(f"--prompts {path} holds no prompts: write one caption per line.")
    return out or None


def check_condition(gen: Generator, prompts: list[str] | None, cfg_scale: float) -> None:
    """The condition and guidance asked for fit the model."""
    kind = {"none": "unconditional", "class": "class-conditional", "text": "text-conditional"}[gen.conditioning]
    if prompts is not None and gen.conditioning != "text":
        hint = " (use --class-label)" if gen.conditioning == "class" else ""
        raise UserError(f"--prompt needs a text-conditional model; this one is {kind}{hint}.")
    if gen.conditioning == "text":
        if not prompts:
            raise UserError("this model is text-conditional: pass --prompt TEXT (repeatable) or --prompts FILE.")
        for p in prompts:
            if not any(ch.isalnum() for ch in p):  # nothing but spaces or punctuation
                raise UserError(f'the prompt {p!r} is empty: give a caption with words, e.g. --prompt "a red circle".')
    check_guidance(gen, cfg_scale)


def check_guidance(gen: Generator, cfg_scale: float) -> None:
    """A guidance scale other than 1 needs a conditional model trained with condition dropout."""
    if cfg_scale != 1.0:
        if gen.conditioning == "none":
            raise UserError(
                f"--cfg-scale {cfg_scale} needs a class- or text-conditional model; this one is unconditional."
            )
        if gen.cond_dropout <= 0.0:
            raise UserError(
                f"--cfg-scale {cfg_scale} needs a model trained with condition dropout "
                f"(stage2.train.cond_dropout > 0); this one was trained without, so it never learned the "
                f"unconditional distribution that guidance contrasts with. Use --cfg-scale 1."
            )


def check_request(
    gen: Generator,
    num: int,
    steps: int | None,
    class_label: int | None,
    prompts: list[str] | None = None,
    cfg_scale: float = 1.0,
) -> None:
    check_condition(gen, prompts, cfg_scale)
    model = gen.stackformer
    n_tok = model.shape.length
    if steps is not None and not 1 <= steps <= n_tok:
        raise UserError(
            f"--steps {steps} is invalid: this model samples between 1 and N = {n_tok} tokens "
            f"(grid {model.shape.grid[0]}x{model.shape.grid[1]} = {model.shape.grid_len} positions)."
        )
    if num < 1:
        raise UserError(f"--num {num} must be at least 1.")
    if class_label is not None and not (gen.num_classes and 0 <= class_label < gen.num_classes):
        allowed = (
            f"0..{gen.num_classes - 1}"
            if gen.num_classes
            else f"none (the model is {'text-conditional: use --prompt' if gen.tokenizer else 'unconditional'})"
        )
        raise UserError(f"--class-label {class_label} is invalid: allowed labels are {allowed}.")


@torch.no_grad()
def sample_images(
    gen: Generator,
    num: int,
    params: SamplingConfig,
    *,
    class_label: int | None = None,
    prompts: list[str] | None = None,
    seed: int = 0,
    steps: int | None = None,
    precision: str = "auto",
    progress: bool = True,
):
    """Yield (images uint8 (B, H, W, 3), codes, positions, conditions) batches until `num` images are
    made; conditions: the batch's class labels or prompts (list), None for unconditional models."""
    check_request(gen, num, steps, class_label, prompts, params.cfg_scale)
    model, device = gen.stackformer, next(gen.stackformer.parameters()).device
    dtype = autocast_dtype(precision, device)
    g = torch.Generator(device=device).manual_seed(seed)
    done = 0
    with progress_bar(progress) as bar:
        task = bar.add_task("sampling", total=num, info="")
        while done < num:
            b = min(params.batch_size, num - done)
            cond, shown = gen.condition(done, b, class_label, prompts, device)
            s = generate(model, b, params, cond, g, steps=steps, dtype=dtype, device=device)
            images = gen.vae.decode(s.codes, s.positions, model.shape.grid)
            x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            done += b
            bar.update(task, completed=done)
            yield x, s.codes.cpu(), s.positions.cpu(), shown


def used_prompts(prompts: list[str] | None, num: int) -> list[str] | None:
    """The prompts `num` images cycle through (a long file contributes only its first `num`)."""
    return None if prompts is None else prompts[: min(num, len(prompts))]


def unknown_words_note(tokenizer: WordTokenizer, prompts: list[str], num: int, show: int = 12) -> str | None:
    """The words of the prompts used that the model reads as <unk>: the first `show`, then a count."""
    unknown = sorted({w for t in used_prompts(prompts, num) for w in tokenizer.unknown(t)})
    if not unknown:
        return None
    more = f" and {len(unknown) - show} more" if len(unknown) > show else ""
    return ", ".join(unknown[:show]) + more


def shown_text(prompt: str, tokenizer: WordTokenizer | None, length: int) -> str:
    """What a sample's .txt says: the prompt when the model read all of it, else the prompt (its first
    500 characters) and what the model read, labelled."""
    if tokenizer is None:
        return prompt + "\n"
    if not tokenizer.unknown(prompt) and len(tokenizer.ids(prompt)) <= length:  # read whole, word for word
        return prompt + "\n"
    read = tokenizer.decode(tokenizer.encode([prompt], length)[0])
    head = prompt if len(prompt) <= 500 else prompt[:500] + " …"
    return f"prompt: {head}\nread as: {read}\n"


def _write_sample(out: Path, index: int, image: np.ndarray, text: str | None) -> None:
    """One image (and its prompt) whole or not at all: each file is written beside its name and
    renamed into place, the text after the image, and an error removes both."""
    from PIL import Image

    png, txt = out / f"{index:06d}.png", out / f"{index:06d}.txt"
    parts = [out / f".{index:06d}.png.part", out / f".{index:06d}.txt.part"]
    try:
        Image.fromarray(image).save(parts[0], format="PNG")
        if text is not None:
            parts[1].write_text(text, encoding="utf-8")
        os.replace(parts[0], png)
        if text is not None:
            os.replace(parts[1], txt)
    except BaseException as e:
        for f in (*parts, png, txt):
            f.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise UserError(f"cannot write {png}: {e.strerror or e}; the images before it are complete.") from None
        raise


def write_samples(
    gen: Generator,
    out: Path,
    num: int,
    params: SamplingConfig,
    *,
    class_label: int | None = None,
    prompts: list[str] | None = None,
    seed: int = 0,
    steps: int | None = None,
    npz: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write `num` PNGs (000000.png, ...; a text model's prompt beside each as 000000.txt) and
    optionally samples.npz to `out`; returns a summary."""
    check_request(
        gen, num, steps, class_label, prompts, params.cfg_scale
    )  # all input checks before anything is written
    ensure_writable(out, "--out")
    if not overwrite and any(out.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png")):
        raise UserError(f"{out} already holds samples: choose another --out or pass --overwrite.")
    t0 = time.perf_counter()
    index, arrays, codes, positions = 0, [], [], []
    for images, c, p, shown in sample_images(
        gen, num, params, class_label=class_label, prompts=prompts, seed=seed, steps=steps, progress=progress
    ):
        for i, img in enumerate(images):
            text = (
                shown_text(shown[i], gen.tokenizer, gen.stackformer.shape.text_length) if prompts is not None else None
            )
            _write_sample(out, index, img, text)
            index += 1
        if npz:
            arrays.append(images)
            codes.append(c.numpy())
            positions.append(p.numpy())
    if npz:
        np.savez(
            out / "samples.npz",
            images=np.concatenate(arrays),
            codes=np.concatenate(codes),
            positions=np.concatenate(positions),
        )
    elapsed = time.perf_counter() - t0
    return {
        "num": index,
        "out": str(out),
        "seconds": elapsed,
        "images_per_s": index / elapsed,
        "run_id": gen.run_id,
        "sampling": to_dict(params),
    } | ({"prompts": used_prompts(prompts, num), "prompts_given": len(prompts)} if prompts is not None else {})
