#!/usr/bin/env python3
"""What logging system metrics costs a training step: stage-1 training runs with them off, on at
the default interval and on at 1 s (ten times as often), interleaved, one at a time; the medians of
the per-pair ratios of seconds per step (the run's `time/stage1_step_seconds`, validation excluded), with
CPU time beside wall time and the torch thread count; and what one sample costs on its own (the
monitors' reading plus the MLflow write), which bounds the cost where the ratios are only noise.

    python tools/bench-system-metrics.py --pairs 7 --steps 60 --out reports/smoke/system-metrics-cost.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from mqvq.experiments import load_experiment  # noqa: E402
from mqvq.stages.train_stage1 import train_stage1  # noqa: E402
from mqvq.tracking import Tracker  # noqa: E402

CONDITIONS = {
    "off": ["tracking.system_metrics=false"],
    "on (10 s)": [],
    "on (1 s)": ["tracking.system_metrics_interval=1"],
}


def one(tracker: Tracker, experiment: str, steps: int, extra: list[str], seed: int) -> dict:
    cfg = load_experiment(
        experiment,
        "smoke",
        [
            f"stage1.train.steps={steps}",
            "stage1.train.val_every=0",
            f"stage1.train.log_every={max(1, steps // 4)}",
            *extra,
        ],
        seed,
    )
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    run_id = train_stage1(cfg, tracker, progress=False)["run_id"]
    cpu1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - wall0
    return {
        "step_seconds": tracker.get_run(run_id).data.metrics["time/stage1_step_seconds"],
        "wall_s": wall,
        "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "system_samples": len(tracker.metric_history(run_id, "system/cpu_utilization_percentage", every=True)),
    }


def sample_cost(tracker: Tracker, n: int = 30) -> dict:
    """Median wall and CPU milliseconds of one sample (read the monitors, log to the run)."""
    from mqvq.tracking.system import SystemMetrics

    sampler = SystemMetrics(tracker, tracker.start_run("system-metrics-cost", "one sample", {}), interval=3600)
    wall, cpu = [], []
    with sampler:
        for _ in range(n):
            c, t = time.process_time(), time.perf_counter()
            sampler.sample()
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    return {"wall_ms": 1e3 * statistics.median(wall), "cpu_ms": 1e3 * statistics.median(cpu), "samples": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="mqvae-f16-adaptive-50")
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as home:
        tracker = Tracker(None, home)
        one(tracker, args.experiment, 4, CONDITIONS["off"], 999)  # warm-up: imports, allocator, first kernels
        for i in range(args.pairs):
            order = list(CONDITIONS) if i % 2 == 0 else list(reversed(CONDITIONS))  # neither always goes first
            for name in order:
                rows.append(
                    {"pair": i, "condition": name, **one(tracker, args.experiment, args.steps, CONDITIONS[name], i)}
                )
                print(json.dumps(rows[-1]), flush=True)
        one_sample = sample_cost(tracker)
    by = {(r["pair"], r["condition"]): r for r in rows}
    summary = {}
    for name in CONDITIONS:
        if name == "off":
            continue
        ratios = [by[(i, name)]["step_seconds"] / by[(i, "off")]["step_seconds"] for i in range(args.pairs)]
        summary[name] = {
            "median_ratio_step_seconds": statistics.median(ratios),
            "ratios": ratios,
            "median_step_seconds": statistics.median(by[(i, name)]["step_seconds"] for i in range(args.pairs)),
        }
    summary["off"] = {
        "median_step_seconds": statistics.median(by[(i, "off")]["step_seconds"] for i in range(args.pairs))
    }
    out = {
        "experiment": args.experiment,
        "profile": "smoke",
        "steps": args.steps,
        "pairs": args.pairs,
        "torch_threads": torch.get_num_threads(),
        "summary": summary,
        "one_sample": one_sample,
        "sampling_share_of_one_core": {f"every {i} s": one_sample["cpu_ms"] / 1e3 / i for i in (10, 1)},
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({**summary, "one_sample": one_sample}, indent=2))


if __name__ == "__main__":
    main()
