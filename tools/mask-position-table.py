"""The selector table of reports/cpu/README.md's "Importance or position?", from the mask-position
report's JSON (no store needed):

    python tools/mask-position-table.py reports/cpu/mask-position.json

Rows are named `<bed>-<selector>`. Per data set, each selector's foreground share of kept tokens and
its excess over blind (share minus the foreground token fraction), Welch over seeds against the centre
prior's share; the per-image AUROC and the shuffled AUROC of its score (the centre prior scores exactly
0.5 in the latter; p of a one-sample t-test against 0.5); the damage its own decoder measures when a
foreground / a background token is dropped; rFD-VGG16; how often it keeps the grid's outer ring; and
the training seconds per step as the runs measured them (two workers on two cores: rough). Then,
where both ran, each selector on the torus bed and on the crossed bed side by side (object or detail?).
"""

import json
import statistics as st
import sys

from scipy import stats

from seed_stats import mean_sd, seeds, welch

FG, AUC, SAUC, RFD = "mask_fg_precision", "mask_auroc", "mask_sauc", "rfd_vgg16"
DFG, DBG, BORDER = "mask_damage_fg", "mask_damage_bg", "mask_keep_border"
COST, LEGACY_COST = "time/stage1_step_seconds", "time/step_seconds"  # reports of runs trained before the per-stage name


def above_half(a: list[float]) -> str:
    if len(a) < 2:
        return "–"
    if st.pstdev(a) == 0:
        return "0.000" if st.mean(a) != 0.5 else "1.000"
    return f"{stats.ttest_1samp(a, 0.5).pvalue:.3f}"


def main(path: str) -> None:
    rows = json.load(open(path))["rows"]
    by_bed: dict[str, dict[str, dict]] = {}
    for r in rows:
        bed, _, selector = r["row"].partition("-")
        by_bed.setdefault(bed, {})[selector] = r
    print(
        "| data | selector | seeds | foreground share | excess over blind | vs centre p | AUROC | shuffled AUROC | vs 0.5 p "
        "| damage: drop fg | drop bg | rFD-VGG16 | kept at border | s / step |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for bed, sel in by_bed.items():
        centre = sel.get("centre")
        frac = next((r.get("fg_token_fraction") for r in sel.values() if r.get("fg_token_fraction") is not None), None)
        for name, r in sel.items():
            fg = seeds(r, FG)
            label = r["label"].split(": ", 1)[-1]
            if not fg:
                print(f"| {bed} | {label} | 0 | not run |" + " |" * 10)
                continue
            excess = f"{st.mean(fg) - frac:+.3f}" if frac is not None else "–"
            sauc = seeds(r, SAUC)
            cells = [
                bed,
                label,
                str(len(fg)),
                mean_sd(fg, 3),
                excess,
                welch(fg, seeds(centre, FG)) if centre and name != "centre" else "–",
                mean_sd(seeds(r, AUC), 3) if seeds(r, AUC) else "no score",
                mean_sd(sauc, 3) if sauc else "no score",
                above_half(sauc) if sauc and name != "centre" else "–",
                mean_sd(seeds(r, DFG), 4),
                mean_sd(seeds(r, DBG), 4),
                mean_sd(seeds(r, RFD), 1),
                mean_sd(seeds(r, BORDER), 3),
                mean_sd(seeds(r, COST) or seeds(r, LEGACY_COST), 2),
            ]
            print("| " + " | ".join(cells) + " |")
    crossed(by_bed)


def crossed(by_bed: dict[str, dict[str, dict]]) -> None:
    """Object or detail? The same selectors on the torus bed, where the detail is on the background
    (flat objects on stripes and checks), and on the crossed bed, where it is on the object (textured
    objects on plain backgrounds): one that follows restorability keeps less foreground than blind on
    the first and more on the second; one that follows the object keeps more on both."""
    wrap, objects = by_bed.get("wrap", {}), by_bed.get("objects", {})
    if not wrap or not objects:
        return
    print(
        "\n| selector | torus bed (detail on the background): share − blind, p | crossed bed (detail on the object): share − blind, p | reading |"
    )
    print("|---|---|---|---|")
    for name in [n for n in wrap if n in objects and n != "random"]:
        cells, signs = [], []
        for bed in (wrap, objects):
            fg, blind = seeds(bed[name], FG), seeds(bed.get("random", {}), FG)
            if not fg or not blind:
                cells.append("not run")
                signs.append(None)
                continue
            p = welch(fg, blind)
            diff = st.mean(fg) - st.mean(blind)
            cells.append(f"{diff:+.3f}, p = {p}")
            signs.append(0 if p == "–" or float(p) >= 0.05 else (1 if diff > 0 else -1))
        reading = {
            (1, 1): "keeps the object on both",
            (-1, 1): "keeps the detail (restorability)",
            (1, -1): "keeps the flat part",
            (-1, -1): "avoids the object on both",
        }.get(tuple(signs))
        if reading is None:
            reading = (
                "not run"
                if None in signs
                else (
                    "no difference from blind on either"
                    if signs == [0, 0]
                    else "keeps more object only where the object has the detail"
                    if signs == [0, 1]
                    else "one bed only"
                )
            )
        label = wrap[name]["label"].split(": ", 1)[-1]
        print(f"| {label} | {cells[0]} | {cells[1]} | {reading} |")


if __name__ == "__main__":
    main(sys.argv[1])
