"""Standard pretrained weights: where they live, and fetching them on first use, verified.

The weights folder is `$MQVQ_WEIGHTS_DIR` (default `~/.cache/mqvq/weights`). A file that is not
there is downloaded from the URLs the standard tools use (pytorch-fid / torch-fidelity for the FID
Inception-v3, torchvision for VGG16), its SHA-256 checked against the published digest while it
streams, and only then renamed into place: an interrupted, truncated or wrong download leaves
nothing behind under the file's name. `MQVQ_OFFLINE=1` turns downloading off (for air-gapped
machines: `mqvq weights fetch` on a connected one, then copy the folder). `MQVQ_WEIGHTS_MIRROR=URL`
fetches `URL/<file name>` instead of the public hosts (an internal mirror).
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Callable

from mqvq.errors import UserError
from mqvq.files import atomic_write, file_lock, sha256_of

OFFLINE_ENV = "MQVQ_OFFLINE"
MIRROR_ENV = "MQVQ_WEIGHTS_MIRROR"
TIMEOUT_S = 30.0  # per network operation: an unreachable host is named in seconds, not minutes


@dataclass(frozen=True)
class Weights:
    """One standard weights file: its name in the weights folder, where the public copies are (in
    order of preference), their SHA-256 and size, and what uses it."""

    key: str
    file: str
    urls: tuple[str, ...]
    sha256: str
    size: int
    what: str


CATALOG = {
    "inception": Weights(
        "inception",
        "pt_inception-2015-12-05-6726825d.pth",
        (
            "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
            "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
        ),
        "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
        95_628_359,
        "the FID Inception-v3 of pytorch-fid and torch-fidelity",
    ),
    "vgg16": Weights(
        "vgg16",
        "vgg16-397923af.pth",
        ("https://download.pytorch.org/models/vgg16-397923af.pth",),
        "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
        553_433_881,
        "torchvision's ImageNet VGG16, the trunk of LPIPS-VGG16 and FD-VGG16",
    ),
}


def weights_dir() -> Path:
    return Path(os.environ.get("MQVQ_WEIGHTS_DIR") or Path.home() / ".cache" / "mqvq" / "weights")


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def sources(w: Weights) -> list[str]:
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    return [f"{mirror.rstrip('/')}/{w.file}"] if mirror else list(w.urls)


def say(message: str) -> None:
    """What was fetched, once, on stderr (stdout may be JSON)."""
    print(message, file=sys.stderr, flush=True)


class _Refused(Exception):
    """A download that must not be kept (not an OSError: `atomic_write` would call it a write error)."""


VERIFIED_FILE = ".verified.json"  # in the weights folder: path -> [size, mtime_ns, sha256] of files found to be right


def verified(key: str, path: Path) -> Path:
    """`path` if it is `CATALOG[key]`'s exact file: its size, then its SHA-256, checked once per
    (path, size, mtime) and remembered in the weights folder, so a truncated or wrong file put in
    place by hand (or named by an environment variable) is refused in one sentence instead of failing
    somewhere inside a model, and a right one costs one hash per machine, not one per process."""
    w = CATALOG[key]
    st, stamp = path.stat(), _stamp(w, path)
    if _memo().get(str(path.resolve())) == stamp:
        return path
    fix = f"delete it (mqvq fetches it again) or replace it with {w.urls[0]}"
    if st.st_size != w.size:
        raise UserError(
            f"{path} is {st.st_size:,} bytes, not the {w.size:,} of {w.file} ({w.what}, SHA-256 {w.sha256}): "
            f"it is truncated or another file; {fix}."
        )
    digest = sha256_of(path)
    if digest != w.sha256:
        raise UserError(
            f"{path} has SHA-256 {digest}, not {w.sha256} of {w.file} ({w.what}): it is damaged or another file; {fix}."
        )
    _remember(str(path.resolve()), stamp)
    return path


def _stamp(w: Weights, path: Path) -> list:
    """What the record of a right file holds: its size and mtime, and the digest it was found to have."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, w.sha256]


def _memo() -> dict:
    import json

    try:
        data = json.loads((weights_dir() / VERIFIED_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _remember(path: str, stamp: list) -> None:
    """Best effort: a read-only weights folder (a shared copy) just means hashing again next time."""
    import json

    memo_file = weights_dir() / VERIFIED_FILE
    try:
        with file_lock(memo_file.parent / f".{VERIFIED_FILE}.lock"):
            memo = _memo() | {path: stamp}
            atomic_write(memo_file, lambda f: f.write(json.dumps(memo, indent=1).encode()))
    except (OSError, UserError):
        pass


def ensure(key: str, tell: Callable[[str], None] = say, download: bool = True) -> Path:
    """The path of `CATALOG[key]` in the weights folder, downloaded and verified if it is not there,
    verified once if it is (`download=False`: only where it is, for a status that must not start a
    download)."""
    w = CATALOG[key]
    target = weights_dir() / w.file
    if target.is_file():
        return verified(key, target)
    if not download:
        raise UserError(
            f"{w.file}, {w.what}, is not in {target.parent}: it is fetched on first use, or now with "
            f"`mqvq weights fetch {key}`."
        )
    if offline():
        raise UserError(
            f"{w.file}, {w.what}, is not in {target.parent} and downloading is off ({OFFLINE_ENV}=1): "
            f"download {w.urls[0]} and put it there."
        )
    with file_lock(target.parent / f".{w.file}.lock"):  # study workers needing it at once: one downloads
        if target.is_file():
            return verified(key, target)
        for stale in target.parent.glob(f".{w.file}.*.tmp"):  # left by a download killed outright (we hold the lock)
            stale.unlink(missing_ok=True)
        problems = []
        for url in sources(w):
            try:
                atomic_write(
                    target,
                    lambda f: _download(url, w, f),
                    hint=f"; download {w.urls[0]} elsewhere and put it in {target.parent}",
                )
            except _Refused as e:
                problems.append(f"{url}: {e}")
                continue
            tell(f"fetched {w.file}, {w.what} ({w.size / 1e6:.1f} MB), from {url} to {target} (SHA-256 verified)")
            _remember(str(target.resolve()), _stamp(w, target))  # verified while it streamed
            return target
    raise UserError(
        f"cannot download {w.file}, {w.what}: {'; '.join(problems)}. Download {w.urls[0]} and put it in "
        f"{target.parent} (or set {OFFLINE_ENV}=1 to stop trying)."
    )


def _download(url: str, w: Weights, out) -> None:
    """Stream `url` into `out`, hashing as it goes; raise _Refused for anything short of the exact file."""
    digest, got = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            expected = response.headers.get("Content-Length")
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
                got += len(chunk)
    except urllib.error.HTTPError as e:
        raise _Refused(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise _Refused(f"unreachable ({e.reason})") from None
    except (OSError, ValueError, HTTPException) as e:  # a reset or timed-out connection, a broken response
        raise _Refused(f"transfer failed ({type(e).__name__}: {e})") from None
    if expected is not None and got != int(expected):
        raise _Refused(f"transfer cut short ({got:,} of {int(expected):,} bytes)")
    if digest.hexdigest() != w.sha256:
        raise _Refused(
            f"SHA-256 {digest.hexdigest()[:16]}... is not the published {w.sha256[:16]}... ({got:,} bytes): not kept"
        )
