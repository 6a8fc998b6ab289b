"""Datasets: procedural (synthetic), Fashion-MNIST from the Debian package, image folders.

Every dataset yields dicts with `image` (float, 3xHxW in [-1, 1]) and `label` (int, -1 if
none); procedural and Fashion-MNIST also give `fg` (bool HxW foreground mask). Captioned
datasets (procedural: what was drawn; COCO: the first caption of each image) list them in
`caption_list`, in index order; procedural data also has `attributes` (the caption's facts as
integers, for the caption-following check). Nothing is ever downloaded: a missing or unreadable
path is a `UserError`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mqvq.config import DataConfig
from mqvq.data import procedural
from mqvq.errors import UserError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


class InMemoryImages(Dataset):
    """Small datasets held as a uint8 tensor (N, C, h, w); batches are gathered in one op.

    Images are stored at their native size (Fashion-MNIST: 32x32 grey) and resized and
    expanded to RGB when a batch is gathered, which keeps 60k images in ~60 MB.
    """

    def __init__(
        self,
        name: str,
        images: torch.Tensor,
        labels: torch.Tensor,
        fg: torch.Tensor | None,
        resolution: int,
        digest: str,
        num_classes: int,
        class_names: tuple[str, ...] = (),
        caption_list: list[str] | None = None,
        attributes: dict[str, torch.Tensor] | None = None,
    ):
        self.name, self.images, self.labels, self.fg = name, images, labels, fg
        self.resolution, self._digest, self.num_classes, self.class_names = resolution, digest, num_classes, class_names
        self.caption_list, self.attributes = caption_list, attributes

    def head(self, n: int, digest: str) -> "InMemoryImages":
        """The first n images (and their captions and attributes) under a new digest."""
        return InMemoryImages(
            self.name,
            self.images[:n],
            self.labels[:n],
            None if self.fg is None else self.fg[:n],
            self.resolution,
            digest,
            self.num_classes,
            self.class_names,
            None if self.caption_list is None else self.caption_list[:n],
            None if self.attributes is None else {k: v[:n] for k, v in self.attributes.items()},
        )

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict:
        batch = self.__getitems__([i])
        return {k: v[0] for k, v in batch.items()}

    def __getitems__(self, indices) -> dict:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx].float().div_(127.5).sub_(1.0)
        fg = self.fg[idx] if self.fg is not None else None
        if x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
            if fg is not None:
                fg = F.interpolate(fg[:, None].float(), size=(self.resolution, self.resolution), mode="nearest")[
                    :, 0
                ].bool()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1).contiguous()
        out = {"image": x, "label": self.labels[idx]}
        if fg is not None:
            out["fg"] = fg
        return out

    def digest(self) -> str:
        return self._digest


def collate(batch):
    """Batches gathered by `__getitems__` are already dicts of tensors."""
    if isinstance(batch, dict):
        return batch
    return torch.utils.data.default_collate(batch)


# --------------------------------------------------------------------------- procedural
def procedural_dataset(cfg: DataConfig, split: str) -> InMemoryImages:
    count = cfg.num_train if split == "train" else cfg.num_test
    start = 0 if split == "train" else cfg.num_train  # test images never overlap training images
    imgs, fgs, labels, attrs = procedural.render_all(
        cfg.seed, start, count, cfg.resolution, cfg.style, cfg.placement, cfg.holdout, split != "train"
    )
    style = "" if cfg.style == "mixed" else f":{cfg.style}"  # the mixed style keeps its digest
    if cfg.placement != "inset" or cfg.holdout != "none":  # and the original placement keeps every style's
        style += f":{cfg.placement}:{cfg.holdout}"
    digest = hashlib.sha256(f"procedural-v1:{cfg.seed}:{start}:{count}:{cfg.resolution}{style}".encode()).hexdigest()[
        :16
    ]
    return InMemoryImages(
        f"procedural-{split}",
        torch.from_numpy(imgs.copy()),
        torch.from_numpy(labels.copy()),
        torch.from_numpy(fgs.copy()),
        cfg.resolution,
        digest,
        len(procedural.KINDS),
        procedural.KINDS,
        procedural.captions(attrs),
        {k: torch.from_numpy(v.copy()) for k, v in attrs.items()},
    )


# --------------------------------------------------------------------------- fashion-mnist
def _read_idx(path: Path, header: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f"cannot read Fashion-MNIST file {path}: {e}.") from None
    return np.frombuffer(raw, dtype=np.uint8, offset=header)


def fashion_mnist_dataset(cfg: DataConfig, split: str) -> InMemoryImages:
    root = Path(cfg.root or os.environ.get("MQVQ_FASHION_MNIST") or FASHION_MNIST_DIR)
    prefix = "train" if split == "train" else "t10k"
    img_path, lab_path = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    if not img_path.is_file() or not lab_path.is_file():
        raise UserError(
            f"Fashion-MNIST not found in {root} (expected {img_path.name}): install it with "
            f"`apt-get install dataset-fashion-mnist`, or point stage1.data.root or $MQVQ_FASHION_MNIST at a "
            f"folder holding the idx .gz files."
        )
    images = _read_idx(img_path, 16)
    labels = _read_idx(lab_path, 8)
    if images.size % (28 * 28) or images.size // (28 * 28) != labels.size:
        raise UserError(f"{img_path} and {lab_path.name} do not hold matching 28x28 images and labels.")
    images = torch.from_numpy(images.reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(labels.astype(np.int64))
    if cfg.fit == "translate":
        images = translate(images, cfg.resolution, cfg.seed, split)
        digest = hashlib.sha256(img_path.read_bytes() + f"translate:{cfg.resolution}:{cfg.seed}".encode()).hexdigest()[
            :16
        ]
        return InMemoryImages(
            f"fashion-mnist-{split}",
            images,
            labels,
            images[:, 0] > 0,
            cfg.resolution,
            digest,
            10,
            FASHION_MNIST_CLASSES,
        )
    if cfg.fit == "resize":  # the garment fills the frame: no empty ring for a mask to latch onto
        images = (
            F.interpolate(images.float(), size=(32, 32), mode="bilinear", align_corners=False)
            .round()
            .clamp(0, 255)
            .to(torch.uint8)
        )
    else:
        images = F.pad(images, (2, 2, 2, 2))  # 28 -> 32 on the black background
    fg = images[:, 0] > 0
    digest = hashlib.sha256(img_path.read_bytes() + (b"resize" if cfg.fit == "resize" else b"")).hexdigest()[:16]
    return InMemoryImages(
        f"fashion-mnist-{split}", images, labels, fg, cfg.resolution, digest, 10, FASHION_MNIST_CLASSES
    )


def translate(images: torch.Tensor, canvas: int, seed: int, split: str) -> torch.Tensor:
    """(N, 1, 28, 28) -> (N, 1, canvas, canvas): each garment at a uniformly random offset on black
    (translated MNIST's construction), the offset of image i drawn from (seed, split, i) so that the
    same image always lands in the same place."""
    n, side = images.shape[0], images.shape[-1]
    offsets = translate_offsets(n, canvas, side, seed, split)
    out = torch.zeros(n, 1, canvas, canvas, dtype=images.dtype)
    rows = offsets[:, 0, None] + torch.arange(side)  # (N, 28): the canvas rows each image occupies
    cols = offsets[:, 1, None] + torch.arange(side)
    idx = torch.arange(n)[:, None, None]
    out[idx, 0, rows[:, :, None], cols[:, None, :]] = images[:, 0]  # one batched scatter, no loop over images
    return out


def translate_offsets(n: int, canvas: int, side: int, seed: int, split: str) -> torch.Tensor:
    """(n, 2) int64 (row, column) of each image's top-left corner on the canvas, uniform over every
    offset that keeps the whole image inside."""
    g = torch.Generator().manual_seed(hash_seed(seed, split))
    return torch.randint(0, canvas - side + 1, (n, 2), generator=g)


def hash_seed(seed: int, split: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{split}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------- image folders
def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class FolderImages(Dataset):
    """A user's image folder: plain/FFHQ (images only), ImageNet (class subfolders), COCO (captions)."""

    def __init__(self, cfg: DataConfig, split: str):
        from torchvision import transforms as T  # imported here: torchvision is slow to import

        root = Path(cfg.root)
        if not cfg.root:
            raise UserError(
                f"stage1.data.root is empty: point it at your {cfg.layout} image folder, e.g. --set stage1.data.root=/data/ffhq."
            )
        if not root.is_dir():
            raise UserError(f"dataset folder {root} does not exist or is not a folder (stage1.data.root).")
        self.name, self.resolution, self.layout = f"{cfg.layout}-{split}", cfg.resolution, cfg.layout
        self.captions: dict[str, str] = {}
        if cfg.layout == "coco":
            folder = root / ("train2017" if split == "train" else "val2017")
            files = _list_images(folder) if folder.is_dir() else []
            cap_path = (
                Path(cfg.captions)
                if cfg.captions
                else root / "annotations" / f"captions_{'train' if split == 'train' else 'val'}2017.json"
            )
            self.captions = _read_coco_captions(cap_path)
            files = [p for p in files if p.name in self.captions]
        else:
            split_dirs = [root / d for d in (("train",) if split == "train" else ("test", "val", "validation"))]
            folder = next((d for d in split_dirs if d.is_dir()), None)
            if folder is not None and (root / "train").is_dir():
                files = _list_images(folder)
            else:
                folder = root
                files = _list_images(root)
                n_test = int(round(len(files) * cfg.test_fraction))
                files = files[: len(files) - n_test] if split == "train" else files[len(files) - n_test :]
        if not files:
            raise UserError(
                f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found for the {split} split under {folder}."
            )
        self.classes: tuple[str, ...] = ()
        if cfg.layout == "imagenet":
            self.classes = tuple(
                sorted({p.relative_to(folder).parts[0] for p in files if len(p.relative_to(folder).parts) > 1})
            )
            index = {c: i for i, c in enumerate(self.classes)}
            self.labels = [index.get(p.relative_to(folder).parts[0], -1) for p in files]
        else:
            self.labels = [-1] * len(files)
        if cfg.limit_train and split == "train":
            files, self.labels = files[: cfg.limit_train], self.labels[: cfg.limit_train]
        self.files = files
        self._digest: str | None = None
        self.num_classes = len(self.classes)
        self.class_names = self.classes
        r = cfg.resolution
        if split == "train" and cfg.augment:
            if cfg.layout == "ffhq":  # RQ-VAE / released FFHQ recipe
                crop = [T.RandomResizedCrop(r, scale=(0.75, 1.0), ratio=(1.0, 1.0))]
            else:  # ImageNet / COCO recipe: resize the short side, random crop
                crop = [T.Resize(r), T.RandomCrop(r)]
            ops = crop + [T.RandomHorizontalFlip()]
        else:
            ops = [T.Resize(r), T.CenterCrop(r)]
        self.transform = T.Compose(ops + [T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
        self._check(files[0])

    def _check(self, path: Path) -> None:
        from PIL import Image

        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as e:  # PIL raises many types for bad files
            raise UserError(f"cannot read image {path}: {e}.") from None

    def bad_files(self) -> list[tuple[Path, str]]:
        """Every file PIL cannot decode, with the reason (reads each file once; threads for I/O)."""
        from concurrent.futures import ThreadPoolExecutor

        def bad(path: Path) -> str | None:
            from PIL import Image

            try:
                with Image.open(path) as im:
                    im.load()  # a full decode: verify() alone passes some truncated files
                return None
            except Exception as e:  # PIL raises many types for bad files
                return str(e).split("\n")[0] or type(e).__name__

        with ThreadPoolExecutor(8) as pool:
            return [(p, why) for p, why in zip(self.files, pool.map(bad, self.files)) if why is not None]

    def __len__(self) -> int:
        return len(self.files)

    @property
    def caption_list(self) -> list[str] | None:
        return [self.captions[p.name] for p in self.files] if self.captions else None

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        path = self.files[i]
        try:
            with Image.open(path) as im:
                image = self.transform(im.convert("RGB"))
        except OSError as e:
            raise UserError(f"cannot read image {path}: {e}.") from None
        out = {"image": image, "label": torch.tensor(self.labels[i], dtype=torch.long)}
        if self.captions:
            out["caption"] = self.captions[path.name]
        return out

    def digest(self) -> str:
        """Names and sizes of the files (one stat per file, so computed once: the decode check,
        the run's tags and the token cache all ask)."""
        if self._digest is None:
            h = hashlib.sha256(self.layout.encode())
            for p in self.files:
                h.update(f"{p.name}:{p.stat().st_size}\n".encode())
            self._digest = h.hexdigest()[:16]
        return self._digest


def check_images(ds, cache_dir: Path | None = None) -> None:
    """Refuse a folder dataset holding files that do not decode, naming them, before anything is
    written. A folder already checked (same file names and sizes) is not read again."""
    if not isinstance(ds, FolderImages):
        return
    mark = cache_dir / f"{ds.digest()}.ok" if cache_dir is not None else None
    if mark is not None and mark.is_file():
        return
    bad = ds.bad_files()
    if bad:
        shown = "; ".join(f"{p} ({why})" for p, why in bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise UserError(
            f"{len(bad)} of {len(ds)} images in the {ds.name} split cannot be decoded: {shown}; remove or replace them."
        )
    if mark is not None:
        try:
            mark.parent.mkdir(parents=True, exist_ok=True)
            mark.write_text(f"{len(ds)} images decoded\n")
        except OSError:
            pass  # only a cache


def _read_coco_captions(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
        names = {im["id"]: im["file_name"] for im in data["images"]}
        out: dict[str, str] = {}
        for ann in data["annotations"]:  # first caption per image
            out.setdefault(names[ann["image_id"]], ann["caption"].strip())
        return out
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"cannot read COCO captions {path}: {e} (set stage1.data.captions to the captions JSON)."
        ) from None


# --------------------------------------------------------------------------- entry point
def build_dataset(cfg: DataConfig, split: str):
    """The `split` ("train" or "test") of the dataset `cfg` describes."""
    if split not in ("train", "test"):
        raise ValueError(split)
    if cfg.name == "procedural":
        ds = procedural_dataset(cfg, split)
    elif cfg.name == "fashion-mnist":
        ds = fashion_mnist_dataset(cfg, split)
    else:
        return FolderImages(cfg, split)
    if cfg.limit_train and split == "train" and cfg.limit_train < len(ds):
        n = cfg.limit_train
        ds = ds.head(n, hashlib.sha256(f"{ds.digest()}:{n}".encode()).hexdigest()[:16])
    return ds


class StepSampler:
    """Infinite stream of index batches: epoch e is a permutation seeded by (seed, e), sharded
    over ranks. Starting at `start_step` reproduces exactly the batches an uninterrupted run sees,
    so a resumed run trains on the same data in the same order."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        start_step: int = 0,
        shuffle: bool = True,
    ):
        if n < batch_size * world:
            raise UserError(
                f"the dataset has {n} images, fewer than one global batch of {batch_size * world}: lower train.batch_size."
            )
        self.n, self.batch, self.seed, self.rank, self.world, self.start, self.shuffle = (
            n,
            batch_size,
            seed,
            rank,
            world,
            start_step,
            shuffle,
        )
        self.per_epoch = n // (batch_size * world)

    def __iter__(self):
        epoch, offset = divmod(self.start, self.per_epoch)
        while True:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perm = torch.randperm(self.n, generator=g)
            else:
                perm = torch.arange(self.n)
            for b in range(offset, self.per_epoch):
                start = (b * self.world + self.rank) * self.batch
                yield perm[start : start + self.batch].tolist()
            epoch, offset = epoch + 1, 0


def train_loader(ds, batch_size: int, seed: int, rank: int, world: int, start_step: int, workers: int):
    sampler = StepSampler(len(ds), batch_size, seed, rank, world, start_step)
    # own generator: creating the iterator must not draw from the global RNG, or resumes would diverge
    return torch.utils.data.DataLoader(
        ds,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def eval_batches(ds, batch_size: int, limit: int = 0, rank: int = 0, world: int = 1, workers: int = 0):
    """Deterministic pass over the first `limit` images (all if 0), sharded over ranks. Folder
    datasets decode in `workers` processes; in-memory ones gather each batch in one op."""
    n = len(ds) if not limit else min(limit, len(ds))
    if workers > 0 and not hasattr(ds, "__getitems__"):
        idx = [list(range(s, min(s + batch_size, n))) for s in range(rank * batch_size, n, batch_size * world)]
        yield from torch.utils.data.DataLoader(ds, batch_sampler=idx, num_workers=workers, collate_fn=collate)
        return
    for start in range(rank * batch_size, n, batch_size * world):
        idx = list(range(start, min(start + batch_size, n)))
        items = ds.__getitems__(idx) if hasattr(ds, "__getitems__") else [ds[i] for i in idx]
        yield collate(items)


def data_source(cfg: DataConfig) -> tuple[str, str]:
    """(source type, source) of the data `cfg` describes, as a tracking store records it: a folder's
    path (its pixels are never read for this), or the generator or package it comes from."""
    if cfg.name == "procedural":
        return (
            "code",
            f"mqvq procedural generator (style {cfg.style}, {cfg.num_train} train / {cfg.num_test} test images)",
        )
    if cfg.name == "fashion-mnist":
        return "local", str(Path(cfg.root or os.environ.get("MQVQ_FASHION_MNIST") or FASHION_MNIST_DIR).resolve())
    return "local", str(Path(cfg.root).resolve())
