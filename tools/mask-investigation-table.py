"""The investigation table of reports/cpu/README.md, from the report's JSON (no store needed):

    python tools/mask-investigation-table.py reports/cpu/mask-investigation.json

Each row against a mask blind to content (its foreground token fraction: what the random rows keep),
against the MLP row (Welch over seeds), and paired by seed with its own scorer's base row: rows
that share a scorer start from the same weights and see the same batches for the same seed, so the
paired difference isolates the setting from the seed. Excess over blind = foreground share minus the
foreground token fraction.
"""

import json
import statistics as st
import sys

from scipy import stats

FG, RFD = "mask_fg_precision", "rfd_vgg16"


def seeds(row: dict, key: str) -> dict[str, float]:
    if f"{key}_per_seed" in row:
        return row[f"{key}_per_seed"]
    return {"0": row[key]} if row.get(key) is not None else {}


def mean_sd(v: list[float], d: int) -> str:
    return f"{st.mean(v):.{d}f} ± {st.stdev(v):.{d}f}" if len(v) > 1 else f"{v[0]:.{d}f}"


def welch(a: list[float], b: list[float]) -> str:
    return f"{stats.ttest_ind(a, b, equal_var=False).pvalue:.2f}" if len(a) > 1 and len(b) > 1 else "–"


def blind(a: list[float], fraction: float) -> str:  # one-sample: the random mask's spread is ~0.002
    return f"{stats.ttest_1samp(a, fraction).pvalue:.2f}" if len(a) > 1 else "–"


def paired(row: dict, base: dict) -> str:
    a, b = seeds(row, FG), seeds(base, FG)
    common = sorted(set(a) & set(b))
    if row is base or len(common) < 2:
        return "–"
    # the excess over a blind mask: resizing 28 -> 32 changes the foreground fraction itself
    fa, fb = row.get("fg_token_fraction") or 0.0, base.get("fg_token_fraction") or 0.0
    x, y = [a[s] - fa for s in common], [b[s] - fb for s in common]
    return f"{st.mean(x) - st.mean(y):+.3f} ({stats.ttest_rel(x, y).pvalue:.2f})"


def main(path: str) -> None:
    rows = {r["row"]: r for r in json.load(open(path))["rows"]}
    print(
        "| row | setting | seeds | foreground share of kept tokens | per seed | fg fraction (blind mask) | vs blind p | vs mlp p "
        "| paired with its scorer's base row: Δ excess over blind (p) | border kept | rFD-VGG16 | rFD vs mlp p |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        fg = list(seeds(r, FG).values())
        if not fg:
            print(f"| {name} | {r['label']} | 0 | not run |" + " |" * 8)
            continue
        rfd, frac = list(seeds(r, RFD).values()), r.get("fg_token_fraction")
        is_random = name.startswith("random")
        base = rows["conv" if name.startswith("conv") else "mlp"]
        cells = [
            name,
            r["label"],
            str(len(fg)),
            mean_sd(fg, 3),
            " ".join(f"{x:.2f}" for x in fg),
            f"{frac:.3f}" if frac is not None else "–",
            "–" if is_random or frac is None else blind(fg, frac),
            "–" if name == "mlp" or is_random else welch(fg, list(seeds(rows["mlp"], FG).values())),
            "–" if is_random else paired(r, base),
            mean_sd(list(seeds(r, "mask_keep_border").values()), 2) if r.get("mask_keep_border") is not None else "–",
            mean_sd(rfd, 1) if rfd else "–",
            "–" if name == "mlp" or not rfd else welch(rfd, list(seeds(rows["mlp"], RFD).values())),
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "reports/cpu/mask-investigation.json")
