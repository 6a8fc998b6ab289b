"""The attribute classifier for caption-following accuracy: trained once per procedural dataset
(seed, size, resolution) and cached under <home>/attributes/, like the reference statistics.

`caption_accuracy` compares what the classifier reads in generated images with the attributes of
the captions they were sampled from; its accuracy on the real test images (stored with it) is the
ceiling a perfect generator would reach, and the same predictions scored against the captions
shifted by one image give the chance level (samples that ignore their caption).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mqvq.config import DataConfig
from mqvq.data import build_dataset, eval_batches
from mqvq.data.procedural import ATTRIBUTES
from mqvq.errors import UserError
from mqvq.models.attributes import AttributeNet, uint8_to_input
from mqvq.models.checkpoint import atomic_save
from mqvq.runtime import progress_bar

VERSION = "attributes-v1"
STEPS, BATCH, LR = 3000, 64, 3e-3
CLASSES = {name: len(words) for name, words in ATTRIBUTES.items()}


@dataclass
class AttributeClassifier:
    net: AttributeNet
    real_accuracy: dict[str, float]  # per attribute and "mean", on the test split, in %

    def predict(self, images_uint8: torch.Tensor, batch_size: int = 500) -> dict[str, torch.Tensor]:
        device = next(self.net.parameters()).device
        outs: dict[str, list[torch.Tensor]] = {k: [] for k in CLASSES}
        for s in range(0, images_uint8.shape[0], batch_size):
            for k, v in self.net.predict(uint8_to_input(images_uint8[s : s + batch_size].to(device))).items():
                outs[k].append(v.cpu())
        return {k: torch.cat(v) for k, v in outs.items()}


def _check(cfg: DataConfig) -> None:
    if cfg.name != "procedural":
        raise UserError(
            f"caption-following accuracy needs procedural data, whose captions say what was drawn; "
            f"this run was trained on {cfg.name!r} data."
        )


def train_steps(num_train: int) -> int:
    """About 20 epochs, at least 100 steps and at most STEPS (a smoke dataset trains in seconds)."""
    return max(100, min(STEPS, 20 * num_train // BATCH))


def _key(cfg: DataConfig) -> str:
    style = "" if cfg.style == "mixed" else f":{cfg.style}"  # mixed keeps the classifiers already cached
    return hashlib.sha256(
        f"{VERSION}:{cfg.seed}:{cfg.num_train}:{cfg.num_test}:{cfg.resolution}:{STEPS}{style}".encode()
    ).hexdigest()[:16]


def accuracy(pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-attribute accuracy (%) and their mean."""
    out = {k: 100.0 * (pred[k] == target[k]).float().mean().item() for k in CLASSES}
    out["mean"] = sum(out.values()) / len(CLASSES)
    return out


def attribute_classifier(
    cfg: DataConfig, home: Path, device: torch.device, progress: bool = False
) -> AttributeClassifier:
    """The cached classifier for this procedural dataset, trained on its training split if absent."""
    _check(cfg)
    data = DataConfig(
        name="procedural", resolution=cfg.resolution, num_train=cfg.num_train, num_test=cfg.num_test, seed=cfg.seed
    )
    path = home / "attributes" / f"{_key(data)}.pt"
    if path.is_file():
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
            net = AttributeNet(d["classes"])
            net.load_state_dict(d["model"])
            return AttributeClassifier(net.to(device).eval(), d["real_accuracy"])
        except Exception:  # a damaged cache: train again
            pass
    train, test = build_dataset(data, "train"), build_dataset(data, "test")
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # training must not move the caller's RNG
        torch.manual_seed(0)
        net = AttributeNet(CLASSES).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    steps = train_steps(len(train))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, LR, total_steps=steps, pct_start=0.15)
    net.train()
    with progress_bar(progress) as bar:
        task = bar.add_task("attribute classifier", total=steps, info="")
        for step in range(steps):
            idx = torch.randint(len(train), (BATCH,), generator=gen)
            x = uint8_to_input(train.images[idx]).to(device)
            logits = net(x)
            loss = sum(F.cross_entropy(logits[k], train.attributes[k][idx].to(device)) for k in CLASSES)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(task, completed=step + 1, info=f"loss {loss.item():.3f}")
    net.eval()
    clf = AttributeClassifier(net, {})
    images = torch.cat(
        [((b["image"] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8) for b in eval_batches(test, 500)]
    )
    clf.real_accuracy = accuracy(clf.predict(images), test.attributes)
    atomic_save(
        {
            "version": VERSION,
            "classes": CLASSES,
            "model": {k: v.cpu() for k, v in net.state_dict().items()},
            "real_accuracy": clf.real_accuracy,
        },
        path,
    )
    return clf


def caption_accuracy(
    clf: AttributeClassifier, images_uint8: torch.Tensor, targets: dict[str, torch.Tensor]
) -> dict[str, float]:
    """attr_acc (mean over attributes, %), attr_<name> per attribute, attr_acc_chance (the same
    predictions against the captions shifted by one image) and attr_acc_real (the real test images)."""
    pred = clf.predict(images_uint8)
    acc = accuracy(pred, targets)
    chance = accuracy(pred, {k: v.roll(1) for k, v in targets.items()})
    out = {f"attr_{k}": v for k, v in acc.items() if k != "mean"}
    return out | {
        "attr_acc": acc["mean"],
        "attr_acc_chance": chance["mean"],
        "attr_acc_real": clf.real_accuracy["mean"],
    }
