"""Feature backends for Fréchet distances and IS. Weights come from files only.

- `inception`: the standard FID Inception-v3 (pool3, 2048-d; logits for IS) through
  torch-fidelity, which resizes to 299x299 exactly as the original TensorFlow code. The weights
  file is `pt_inception-2015-12-05-6726825d.pth` (the pytorch-fid / torch-fidelity layout), found
  at `eval.inception_weights`, `$MQVQ_INCEPTION_WEIGHTS`, or in the weights folder, where it is
  fetched and verified on first use (`models.pretrained`). Features are
  computed in fp32 with TF32 off, as FID requires. Its metrics are `fid`, `rfid`, `is`.
- `vgg16`: ImageNet VGG16 relu5_3, average-pooled (512-d), from the LPIPS-VGG16 trunk weights
  (usable offline). Never called FID: its metrics are `fd_vgg16` and `rfd_vgg16`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from mqvq.errors import UserError
from mqvq.metrics import metric_names  # noqa: F401  (here since the metric names follow the backends)
from mqvq.models.lpips import load_lpips
from mqvq.models.pretrained import CATALOG, ensure, verified

INCEPTION_FILE = CATALOG["inception"].file
BACKENDS = ("inception", "vgg16")


def resolve_inception_weights(path: str | None = None) -> Path:
    """A file named by the config or `$MQVQ_INCEPTION_WEIGHTS` is used where it is (never downloaded
    over), once its SHA-256 is checked; otherwise the weights folder's copy, fetched on first use."""
    named = path or os.environ.get("MQVQ_INCEPTION_WEIGHTS")
    if named:
        if Path(named).is_file():
            return verified("inception", Path(named))
        raise UserError(
            f"FID Inception weights not found at {named}: put {INCEPTION_FILE} (the pytorch-fid / torch-fidelity "
            f"Inception-v3 file, ~96 MB) there, or unset MQVQ_INCEPTION_WEIGHTS / eval.inception_weights to use the "
            f"weights folder, where mqvq fetches it."
        )
    try:
        return ensure("inception")
    except UserError as e:
        raise UserError(
            f"FID Inception weights not found: {str(e).rstrip('.')}; or use --backend vgg16 "
            f"(reported as fd_vgg16, not FID)."
        ) from None


@contextlib.contextmanager
def _strict_fp32():
    """FID features in true fp32: TF32 changes them (and the metric)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class InceptionFeatures:
    name, dim = "inception", 2048
    has_logits = True

    def __init__(self, device: torch.device, weights: str | None = None):
        path = resolve_inception_weights(weights)
        try:  # weights_only proves the file holds tensors only, so torch-fidelity's full load below runs no code
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for foreign files
            raise UserError(f"cannot read Inception weights {path}: {e}.") from None
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        try:
            self.model = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
            )
        except RuntimeError as e:
            raise UserError(f"{path} is not an FID Inception-v3 state dict ({str(e).splitlines()[0]}).") from None
        del state
        self.model.to(device).eval()
        self.device = device
        self.resolution = 299

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images uint8 (B, 3, H, W) -> (features (B, 2048), logits (B, 1008)), fp32."""
        with _strict_fp32():
            feats, logits = self.model(images.to(self.device))
        return feats.float(), logits.float()


class VGG16Features:
    name, dim = "vgg16", 512
    has_logits = False

    def __init__(self, device: torch.device, resolution: int, lpips_weights: str | None = None):
        self.lpips = load_lpips("vgg", lpips_weights).to(device)
        self.device = device
        # VGG's native 224 at most; smaller images at their size (>= 32, where relu5_3 is still 2x2)
        self.resolution = min(224, max(32, resolution))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        x = images.to(self.device).float() / 127.5 - 1.0
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(
                x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False, antialias=True
            )
        with _strict_fp32():
            feats = self.lpips.net((x - self.lpips.shift) / self.lpips.scale)[-1]  # relu5_3
        return feats.mean(dim=(2, 3)).float(), None


def make_backend(
    name: str,
    device: torch.device,
    resolution: int,
    inception_weights: str | None = None,
    lpips_weights: str | None = None,
):
    if name == "inception":
        return InceptionFeatures(device, inception_weights)
    if name == "vgg16":
        return VGG16Features(device, resolution, lpips_weights)
    raise UserError(f"unknown feature backend {name!r}: allowed backends are {', '.join(BACKENDS)}.")
