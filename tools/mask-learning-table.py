"""The selector table of reports/cpu/README.md, from the mask-learning report's JSON (no store needed):

    python tools/mask-learning-table.py reports/cpu/mask-learning.json

Rows are named `<data>-<selector>`. Per data set, each selector against the blind (random) mask of the
same data and against the paper's MLP (Welch over seeds): the foreground share of kept tokens, its
excess over blind (share minus the foreground token fraction), the per-image AUROC of the score
against the foreground (0.5 = blind; the random mask has no score), rFD-VGG16, the training seconds
per step as the runs measured them (two workers on two cores: compare within this table only) and
how far each selector's excess falls short of the oracle's.
"""

import json
import statistics as st
import sys

from seed_stats import mean_sd, seeds
from seed_stats import welch as _welch


def welch(a: list[float], b: list[float]) -> str:
    return _welch(a, b, tie_digits=2)


FG, AUC, RFD = "mask_fg_precision", "mask_auroc", "rfd_vgg16"
COST, LEGACY_COST = "time/stage1_step_seconds", "time/step_seconds"  # reports of runs trained before the per-stage name


def main(path: str) -> None:
    rows = json.load(open(path))["rows"]
    by_data: dict[str, dict[str, dict]] = {}
    for r in rows:
        data, _, selector = r["row"].partition("-")
        by_data.setdefault(data, {})[selector] = r
    print(
        "| data | selector | seeds | foreground share | excess over blind | vs blind p | vs mlp p | AUROC | rFD-VGG16 "
        "| rFD vs mlp p | s / step | short of the oracle's excess |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for data, sel in by_data.items():
        blind, mlp, oracle = sel.get("random"), sel.get("mlp"), sel.get("oracle")
        frac = (blind or mlp or {}).get("fg_token_fraction")
        oracle_excess = st.mean(seeds(oracle, FG)) - frac if oracle and seeds(oracle, FG) and frac is not None else None
        for name, r in sel.items():
            fg = seeds(r, FG)
            if not fg:
                print(f"| {data} | {r['label'].split(': ', 1)[-1]} | 0 | not run |" + " |" * 8)
                continue
            excess = st.mean(fg) - frac if frac is not None else None
            cells = [
                data,
                r["label"].split(": ", 1)[-1],
                str(len(fg)),
                mean_sd(fg, 3),
                "–" if excess is None else f"{excess:+.3f}",
                "–" if name == "random" or not blind else welch(fg, seeds(blind, FG)),
                "–" if name in ("mlp", "random") or not mlp else welch(fg, seeds(mlp, FG)),
                "0.5 (no score)" if name == "random" else mean_sd(seeds(r, AUC), 3),
                mean_sd(seeds(r, RFD), 1),
                "–" if name == "mlp" or not mlp else welch(seeds(r, RFD), seeds(mlp, RFD)),
                mean_sd(seeds(r, COST) or seeds(r, LEGACY_COST), 2),
                "–" if oracle_excess is None or excess is None or name == "oracle" else f"{oracle_excess - excess:.3f}",
            ]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "reports/cpu/mask-learning.json")
