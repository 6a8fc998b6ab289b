#!/usr/bin/env python3
"""Merge an eager and a compiled `mqvq bench all` result: each section keeps the compiled figures
only where they measure faster, and says which it kept.

    python tools/bench-merge.py bench-eager.json bench-compiled.json --out bench.json

A missing or incomplete compiled file (compilation failed) keeps the eager figures throughout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mqvq.bench import HEADLINE

# each section's figure of merit: (key, True when higher is better)
MERIT = {
    "train_stage1": ("stage1_train_images_per_s", True),
    "train_stage2": ("stage2_train_tokens_per_s", True),
    "sample": ("sample_images_per_s", True),
    "fid": ("fid50k_seconds", False),
}


def faster(eager: dict, compiled: dict | None, key: str, higher: bool) -> bool:
    if not compiled or key not in compiled or key not in eager:
        return False
    return compiled[key] > eager[key] if higher else compiled[key] < eager[key]


def merge(eager: dict, compiled: dict | None) -> dict:
    out = {k: v for k, v in eager.items() if k not in MERIT and k not in HEADLINE}
    out["compiled"] = {}
    for section, (key, higher) in MERIT.items():
        if section not in eager:
            continue
        use = faster(eager[section], (compiled or {}).get(section), key, higher)
        chosen = compiled[section] if use else eager[section]
        out[section] = chosen
        out["compiled"][section] = {
            "kept": use,
            "eager": eager[section].get(key),
            "compiled": (compiled or {}).get(section, {}).get(key),
        }
        out |= {k: chosen[k] for k in HEADLINE if k in chosen}
    out["complete"] = all(s in out for s in MERIT)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eager", type=Path)
    ap.add_argument("compiled", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if not args.eager.is_file():
        sys.exit(f"bench-merge: {args.eager} does not exist: the eager benchmark did not finish.")
    eager = json.loads(args.eager.read_text())
    compiled = json.loads(args.compiled.read_text()) if args.compiled.is_file() else None
    args.out.write_text(json.dumps(merge(eager, compiled), indent=2) + "\n")


if __name__ == "__main__":
    main()
