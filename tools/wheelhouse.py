#!/usr/bin/env python3
"""Collect the wheels the offline GPU machine lacks (CPython 3.12, x86_64 Linux) into one folder.

    python3 tools/wheelhouse.py .gpu/whl mlflow-skinny sqlalchemy optuna lpips torch-fidelity

Each requirement and, recursively, what it requires on that machine is downloaded as a wheel,
except distributions its image already has (tools/gpu-present.txt, or --present FILE) and the
torch / CUDA stack, which it always has. Needs pip and a package index; run it here, not there.
"""

from __future__ import annotations

import argparse
import email.parser
import re
import subprocess
import sys
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pip always vendors it
    from pip._vendor.packaging.requirements import Requirement

HERE = Path(__file__).resolve().parent
# the GPU image: what `pip download` must pick wheels for, and what markers evaluate against
TARGET = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
ALWAYS_THERE = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_present(path: Path) -> set[str]:
    """Distribution names in a list file: one per line, `#` comments."""
    return {
        canonical(line.split("==")[0].strip())
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }


def wheel_requires(wheel: Path) -> list[Requirement]:
    """What a wheel requires on the target machine (markers evaluated for it; extras not requested)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = email.parser.Parser().parsestr(z.read(meta).decode("utf-8"))
    reqs = [Requirement(r) for r in msg.get_all("Requires-Dist") or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(TARGET)]


def wheel_name(wheel: Path) -> str:
    return canonical(wheel.name.split("-")[0])


def download(req: Requirement, dest: Path) -> Path:
    """One wheel for the target, without its dependencies (they are walked here, to skip what is present)."""
    have = {wheel_name(w): w for w in dest.glob("*.whl")}
    if canonical(req.name) in have:
        return have[canonical(req.name)]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        TARGET["python_version"],
        "--implementation",
        "cp",
        "--abi",
        "cp312",
        "--dest",
        str(dest),
    ]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    spec = f"{req.name}{req.specifier}"
    done = subprocess.run(cmd + [spec], capture_output=True, text=True)
    if done.returncode:
        sys.exit(
            f"wheelhouse: no wheel of {spec} for CPython 3.12 on x86_64 Linux: {done.stderr.strip().splitlines()[-1:]}"
        )
    return next(w for w in dest.glob("*.whl") if wheel_name(w) == canonical(req.name))


def collect(requirements: list[str], dest: Path, present: set[str], fetch=download) -> list[Path]:
    """Walk the requirements breadth-first; the first specifier met for a name is the one used."""
    dest.mkdir(parents=True, exist_ok=True)
    queue, seen, wheels = [Requirement(r) for r in requirements], set(), []
    while queue:
        req = queue.pop(0)
        name = canonical(req.name)
        if name in seen or name in present or ALWAYS_THERE.match(name):
            continue
        seen.add(name)
        wheel = fetch(req, dest)
        wheels.append(wheel)
        queue += wheel_requires(wheel)
    return wheels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", type=Path)
    ap.add_argument("requirements", nargs="+")
    ap.add_argument(
        "--present",
        type=Path,
        default=HERE / "gpu-present.txt",
        help="distributions the GPU image already has (default: tools/gpu-present.txt)",
    )
    args = ap.parse_args()
    wheels = collect(args.requirements, args.dest, read_present(args.present))
    total = sum(w.stat().st_size for w in wheels)
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {args.dest}")


if __name__ == "__main__":
    main()
