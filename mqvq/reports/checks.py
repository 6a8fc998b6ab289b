"""`mqvq report --check`: does this study reproduce the paper's qualitative findings?

Each claim gets a verdict (holds / fails / not testable), the numbers behind it, and whether the
seed spread makes it significant (Welch's t-test, p < 0.05, needs at least two seeds per row).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mqvq.reports.tables import Row, Table


@dataclass
class Verdict:
    claim: str
    status: str                  # holds | fails | not testable
    evidence: list[str] = field(default_factory=list)
    significance: str = ""


def _welch(a: Row, b: Row, key: str) -> float | None:
    """p-value of a two-sided Welch test from the rows' mean, std and n (None with fewer than 2 seeds)."""
    ma, sa, na = a.values[key]
    mb, sb, nb = b.values[key]
    if na < 2 or nb < 2:
        return None
    from scipy import stats

    if sa == 0 and sb == 0:
        return 0.0 if ma != mb else 1.0
    return float(stats.ttest_ind_from_stats(ma, sa, na, mb, sb, nb, equal_var=False).pvalue)


def _significance(pvalues: list[float | None]) -> str:
    if not pvalues:
        return ""
    if any(p is None for p in pvalues):
        return "not assessable: fewer than two seeds per row"
    worst = max(pvalues)
    return f"significant (Welch p <= {worst:.3g})" if worst < 0.05 else f"not significant (Welch p up to {worst:.3g})"


def _columns(table: Table, family: str) -> list[str]:
    """Our column keys for a metric family: rfid -> rfid / rfd_vgg16, fid -> fid / fd_vgg16."""
    keys = {"rfid": ("rfid", "rfd_vgg16"), "fid": ("fid", "fd_vgg16"), "usage": ("usage",), "speed": ("speed_images_per_s",)}[family]
    return [c.key for c in table.columns if c.key in keys]


def _fmt(row: Row, key: str) -> str:
    mean, std, n = row.values[key]
    return f"{row.descriptors.get('label', row.name)} {mean:.4g}" + (f"±{std:.2g}" if n > 1 else "")


def check_claims(table: Table, meta: dict[str, dict]) -> list[Verdict]:
    """`meta[row]`: mask_type, ratio, f, demask of the row's experiment."""
    rows = [r for r in table.rows if r.status == "finished"]
    out = [_adaptive_beats_random(table, rows, meta), _usage_rises(table, rows, meta), _small_mask_improves_fid(table, rows, meta),
           _demask_components(table, rows, meta), _speed_rises(table, rows, meta)]
    return [v for v in out if v is not None]


def _lower_than(claim: str, comparisons: list[tuple[str, Row, Row, str]]) -> Verdict:
    """Each (prefix, a, b, key): a's value must be lower than b's."""
    v = Verdict(claim, "holds")
    pvals = []
    for prefix, a, b, key in comparisons:
        ok = a.values[key][0] < b.values[key][0]
        v.evidence.append(f"{prefix}: {_fmt(a, key)} vs {_fmt(b, key)} {'ok' if ok else 'FAILS'}")
        pvals.append(_welch(a, b, key))
        if not ok:
            v.status = "fails"
    v.significance = _significance(pvals)
    return v


def _adaptive_beats_random(table, rows, meta) -> Verdict | None:
    claim = "adaptive beats random at every mask ratio (rFID and FID)"
    pairs = []
    for a in rows:
        ma = meta[a.name]
        if ma["mask_type"] != "adaptive":
            continue
        for b in rows:
            mb = meta[b.name]
            if mb["mask_type"] == "random" and mb["ratio"] == ma["ratio"] and mb["f"] == ma["f"]:
                pairs.append((a, b))
    if not any(meta[r.name]["mask_type"] == "random" for r in table.rows):
        return None
    keys = _columns(table, "rfid") + _columns(table, "fid")
    if not pairs or not keys:
        return Verdict(claim, "not testable", ["needs finished adaptive and random rows with the same mask ratio, and rFID/FID"])
    comparisons = [(f"{key} at {meta[a.name]['ratio']:.0%}", a, b, key) for a, b in pairs for key in keys
                   if key in a.values and key in b.values]
    if not comparisons:
        return Verdict(claim, "not testable", ["the paired rows lack rFID/FID values"])
    return _lower_than(claim, comparisons)


def _monotone(claim: str, seq: list[Row], key: str, increasing: bool, what: str) -> Verdict:
    v = Verdict(claim, "holds", [f"{key}: " + " -> ".join(_fmt(r, key) for r in seq)])
    pvals = []
    for a, b in zip(seq, seq[1:]):
        ok = b.values[key][0] > a.values[key][0] if increasing else b.values[key][0] < a.values[key][0]
        if not ok:
            v.status = "fails"
            v.evidence.append(f"not {what} from {a.descriptors.get('label', a.name)} to {b.descriptors.get('label', b.name)}")
        pvals.append(_welch(a, b, key))
    v.significance = _significance(pvals)
    return v


def _usage_rises(table, rows, meta) -> Verdict | None:
    claim = "codebook usage rises with the adaptive mask ratio"
    if "usage" not in [c.key for c in table.columns]:
        return None
    adaptive = [r for r in rows if meta[r.name]["mask_type"] == "adaptive" and "usage" in r.values]
    if not adaptive:
        return Verdict(claim, "not testable", ["needs finished adaptive rows with usage"])
    f = meta[adaptive[0].name]["f"]
    base = [r for r in rows if meta[r.name]["mask_type"] == "none" and meta[r.name]["f"] == f and "usage" in r.values]
    seq = sorted(base[:1] + [r for r in adaptive if meta[r.name]["f"] == f and meta[r.name]["demask"] == meta[adaptive[0].name]["demask"]],
                 key=lambda r: meta[r.name]["ratio"])
    if len(seq) < 2:
        return Verdict(claim, "not testable", ["needs at least two mask ratios"])
    return _monotone(claim, seq, "usage", True, "rising")


def _small_mask_improves_fid(table, rows, meta) -> Verdict | None:
    claim = "10-25 % adaptive mask improves FID over 0 %"
    keys = _columns(table, "fid")
    small = [r for r in rows if meta[r.name]["mask_type"] == "adaptive" and 0.1 <= meta[r.name]["ratio"] <= 0.25]
    if not small or not keys:
        return None
    key = keys[0]
    f = meta[small[0].name]["f"]
    base = next((r for r in rows if meta[r.name]["mask_type"] == "none" and meta[r.name]["f"] == f
                 and meta[r.name]["demask"] == "none" and key in r.values), None)
    if base is None:
        return Verdict(claim, "not testable", [f"needs a finished 0 % row at f = {f} with {key}"])
    return _lower_than(claim, [(key, r, base, key) for r in small if key in r.values])


def _demask_components(table, rows, meta) -> Verdict | None:
    claim = "each de-mask component improves rFID (Table 7's order: none -> SA -> DC-SA -> DC-SA + update)"
    order = ["none", "sa", "dcsa", "dcsa-update"]
    masked = [r for r in table.rows if meta[r.name]["mask_type"] == "adaptive"]
    variants = {meta[r.name]["demask"] for r in masked}
    if len(variants) < 2:
        return None
    keys = _columns(table, "rfid")
    seq = sorted([r for r in rows if meta[r.name]["mask_type"] == "adaptive" and keys and keys[0] in r.values],
                 key=lambda r: order.index(meta[r.name]["demask"]))
    if not keys or len(seq) < 2:
        return Verdict(claim, "not testable", ["needs finished MQ-VAE rows with at least two de-mask variants and rFID"])
    return _monotone(claim, seq, keys[0], False, "falling")


def _speed_rises(table, rows, meta) -> Verdict | None:
    claim = "sampling speed rises with the mask ratio"
    if "speed_images_per_s" not in [c.key for c in table.columns]:
        return None
    seq = sorted([r for r in rows if "speed_images_per_s" in r.values], key=lambda r: meta[r.name]["ratio"])
    if len(seq) < 2:
        return Verdict(claim, "not testable", ["needs speed for at least two mask ratios"])
    return _monotone(claim, seq, "speed_images_per_s", True, "rising")
