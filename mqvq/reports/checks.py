"""`mqvq report --check`: does this study reproduce the paper's qualitative findings?

Every claim is a set of comparisons between rows ("a is better than b in this metric"). Each
comparison is judged over seeds with Welch's t-test (two-sided, p < 0.05), and the claim gets one
verdict, never a ✓ on means alone:

    holds            every comparison goes the paper's way and is significant
    fails            at least one comparison goes the other way, significantly
    not significant  the seed spread cannot tell (some comparison has p >= 0.05)
    not assessable   a row, a metric or the second seed is missing

Claims name the metric actually computed (FD-VGG16 is not rFID/FID; usage is named as defined).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mqvq.config.schema import SELECTOR_NAMES
from mqvq.reports.tables import Row, Table

ALPHA = 0.05
STATUSES = ("holds", "fails", "not significant", "not assessable")


@dataclass
class Verdict:
    claim: str
    status: str                  # one of STATUSES
    evidence: list[str] = field(default_factory=list)
    significance: str = ""


@dataclass
class Comparison:
    what: str
    better: Row        # the row the paper says is better
    worse: Row
    key: str
    lower: bool        # lower values are better


def welch_p(a: Row, b: Row, key: str) -> float | None:
    """Two-sided Welch p-value from the rows' mean, std and n (None with fewer than 2 seeds)."""
    ma, sa, na = a.values[key]
    mb, sb, nb = b.values[key]
    if na < 2 or nb < 2:
        return None
    from scipy import stats

    if sa == 0 and sb == 0:
        return 0.0 if ma != mb else 1.0
    return float(stats.ttest_ind_from_stats(ma, sa, na, mb, sb, nb, equal_var=False).pvalue)


def _fmt(row: Row, key: str) -> str:
    mean, std, n = row.values[key]
    return f"{row.descriptors.get('label', row.name)} {mean:.4g}" + (f" ± {std:.2g}" if n > 1 else "") + f" (n={n})"


def judge(claim: str, comparisons: list[Comparison]) -> Verdict:
    """One verdict from the comparisons (see the module docstring); `significance` says why, in a phrase."""
    if not comparisons:
        return Verdict(claim, "not assessable", ["no pair of finished rows with this metric"], "no pair of finished rows")
    v = Verdict(claim, "holds")
    results = []  # (comparison, goes the paper's way, p or None)
    for c in comparisons:
        mb, mw = c.better.values[c.key][0], c.worse.values[c.key][0]
        ok = mb < mw if c.lower else mb > mw
        p = welch_p(c.better, c.worse, c.key)
        results.append((c, ok, p))
        v.evidence.append(f"{c.what}: {_fmt(c.better, c.key)} vs {_fmt(c.worse, c.key)}: "
                          f"{'as the paper' if ok else 'the other way'} ({'p n/a' if p is None else f'p = {p:.2g}'})")
    reversed_ = [(c, p) for c, ok, p in results if not ok and p is not None and p < ALPHA]
    untested = [c for c, _, p in results if p is None]
    weak = [(c, ok, p) for c, ok, p in results if p is not None and not (ok and p < ALPHA)]
    if reversed_:
        c, p = min(reversed_, key=lambda x: x[1])
        v.status, v.significance = "fails", f"{c.what} goes the other way (p = {p:.2g})"
    elif untested:
        v.status, v.significance = "not assessable", "fewer than two seeds in some row (run the study with --seeds 0 --seeds 1 --seeds 2)"
    elif weak:
        c, ok, p = max(weak, key=lambda x: x[2])
        v.status, v.significance = "not significant", f"{c.what}: {'as the paper' if ok else 'the other way'} but p = {p:.2g}"
    else:
        pvals = [p for _, _, p in results]
        v.significance = f"p <= {max(pvals):.2g} in {len(results)} comparison{'s' * (len(results) > 1)}"
    return v


def _missing(claim: str, why: str) -> Verdict:
    return Verdict(claim, "not assessable", [why], why)


def _metric_columns(table: Table, family: str):
    """Our columns of a metric family that some row has measured."""
    return [c for c in table.columns if c.family == family and not c.is_paper
            and any(c.key in r.values for r in table.rows)]


def _names(cols) -> str:
    return " and ".join(c.label for c in cols)


def check_claims(table: Table, meta: dict[str, dict]) -> list[Verdict]:
    """`meta[row]`: mask_type, ratio, f, demask, selector, scorer and data of the row's experiment."""
    rows = [r for r in table.rows if r.status == "finished"]
    out = []
    groups = _selector_groups(table, meta)
    for selector, suffix in groups.items():  # Table 6's claims, once per selector that has them (the paper's own first)
        g = {r.name: m for r, m in ((r, meta[r.name]) for r in table.rows)
             if m["mask_type"] != "adaptive" or m.get("selector", "gain") == selector}
        t, done = _only(table, g), [r for r in rows if r.name in g]
        out += [_suffixed(claim(t, done, g), suffix) for claim in (
            _adaptive_beats_random, _mask_keeps_foreground, _mask_keeps_detail, _usage_rises, _small_mask_improves_fid, _speed_rises)]
    out += [_demask_components(table, rows, meta), _full_model_beats_vqgan(table, rows, meta),
            _samples_follow_captions(table, rows), _guidance_helps(table, rows), *_learned_selectors(table, rows, meta),
            *_beyond_position(table, rows, meta)]
    return [v for v in out if v is not None]


# how a verdict names the selector whose Table 6 claims it judges, when a table has several
GROUP_NAMES = SELECTOR_NAMES


def _selector_groups(table: Table, meta: dict) -> dict[str, str]:
    """The selectors whose Table 6 claims are judged, each with the suffix its verdicts carry: the
    paper's own (gain), and any other that the table sweeps over at least two mask ratios (a table
    of selectors at one ratio compares them with other claims). No suffix when there is one."""
    ratios: dict[str, set] = {}
    for r in table.rows:
        m = meta[r.name]
        if m["mask_type"] == "adaptive":
            ratios.setdefault(m.get("selector", "gain"), set()).add(m["ratio"])
    chosen = [s for s, rs in ratios.items() if s == "gain" or len(rs) >= 2] or ["gain"]
    chosen.sort(key=lambda s: s != "gain")
    return {s: (f" [{GROUP_NAMES.get(s, s)}]" if len(chosen) > 1 else "") for s in chosen}


def _only(table: Table, names) -> Table:
    """The table restricted to the rows named (claims that look at every declared row)."""
    from dataclasses import replace

    return replace(table, rows=[r for r in table.rows if r.name in names])


def _suffixed(v: Verdict | None, suffix: str) -> Verdict | None:
    if v is not None and suffix:
        v.claim += suffix
    return v


def _random_pairs(rows, meta) -> list[tuple[Row, Row]]:
    pairs = []
    for a in rows:
        ma = meta[a.name]
        if ma["mask_type"] != "adaptive":
            continue
        for b in rows:
            mb = meta[b.name]
            if (mb["mask_type"] == "random" and mb["ratio"] == ma["ratio"] and mb["f"] == ma["f"] and mb["demask"] == ma["demask"]
                    and mb.get("data") == ma.get("data")):
                pairs.append((a, b))
    return pairs


def _adaptive_beats_random(table, rows, meta) -> Verdict | None:
    if not any(meta[r.name]["mask_type"] == "random" for r in table.rows):
        return None
    cols = _metric_columns(table, "rfid") + _metric_columns(table, "fid")
    claim = f"adaptive beats random at every mask ratio ({_names(cols) or 'reconstruction and generation distance'})"
    pairs = _random_pairs(rows, meta)
    if not pairs or not cols:
        return _missing(claim, "needs finished adaptive and random rows with the same mask ratio, and a Fréchet metric")
    comps = [Comparison(f"{c.label} at {meta[a.name]['ratio']:.0%}", a, b, c.key, True)
             for a, b in pairs for c in cols if c.key in a.values and c.key in b.values]
    return judge(claim, comps) if comps else _missing(claim, "the paired rows lack Fréchet values")


def _mask_beats_random(table, rows, meta, family: str, key: str, claim: str) -> Verdict | None:
    """A mask diagnostic (higher = more important regions kept), adaptive vs random at each ratio."""
    if not _metric_columns(table, family) or not any(meta[r.name]["mask_type"] == "random" for r in table.rows):
        return None
    comps = [Comparison(f"at {meta[a.name]['ratio']:.0%}", a, b, key, False)
             for a, b in _random_pairs(rows, meta) if key in a.values and key in b.values]
    return judge(claim, comps) if comps else _missing(claim, "needs finished adaptive and random rows with the mask diagnostics")


def _mask_keeps_foreground(table, rows, meta) -> Verdict | None:
    """Not in the paper's tables but its Fig. 4 claim: the learned mask keeps the object."""
    return _mask_beats_random(table, rows, meta, "mask", "mask_fg_precision",
                              "the adaptive mask keeps the foreground more often than random (share of kept tokens on the foreground)")


def _mask_keeps_detail(table, rows, meta) -> Verdict | None:
    """Fig. 4's wording: the mask preserves 'the structural and edge regions', i.e. masks the flat ones."""
    return _mask_beats_random(table, rows, meta, "detail", "mask_detail_ratio",
                              "the adaptive mask keeps more detailed regions than random (pixel std of kept tokens / of all tokens)")


def _chain(seq: list[Row], key: str, lower: bool, label: str) -> list[Comparison]:
    """Consecutive rows: each next row must be better than the one before."""
    return [Comparison(f"{label}: {b.descriptors.get('label', b.name)} over {a.descriptors.get('label', a.name)}", b, a, key, lower)
            for a, b in zip(seq, seq[1:])]


def _usage_rises(table, rows, meta) -> Verdict | None:
    cols = _metric_columns(table, "usage_effective") or _metric_columns(table, "usage")
    if not cols:
        return None
    col = cols[0]
    claim = f"codebook usage rises with the adaptive mask ratio, VQGAN lowest ({col.label})"
    adaptive = [r for r in rows if meta[r.name]["mask_type"] == "adaptive" and col.key in r.values]
    if not adaptive:
        return _missing(claim, f"needs finished adaptive rows with {col.label}")
    f, demask = meta[adaptive[0].name]["f"], meta[adaptive[0].name]["demask"]
    base = [r for r in rows if meta[r.name]["mask_type"] == "none" and meta[r.name]["f"] == f and col.key in r.values]
    same = [r for r in adaptive if meta[r.name]["f"] == f and meta[r.name]["demask"] == demask]
    if len({meta[r.name]["ratio"] for r in same}) < len(same):
        return None  # several rows per ratio (e.g. the mask investigation): not Table 6's sequence
    seq = sorted(base[:1] + same, key=lambda r: meta[r.name]["ratio"])
    if len(seq) < 2:
        return _missing(claim, "needs at least two mask ratios")
    return judge(claim, _chain(seq, col.key, False, col.label))


def _small_mask_improves_fid(table, rows, meta) -> Verdict | None:
    cols = _metric_columns(table, "fid")
    small = [r for r in rows if meta[r.name]["mask_type"] == "adaptive" and 0.1 <= meta[r.name]["ratio"] <= 0.25]
    if not cols or not any(meta[r.name]["mask_type"] == "adaptive" and 0.1 <= meta[r.name]["ratio"] <= 0.25 for r in table.rows):
        return None
    col = cols[0]
    claim = f"10-25 % adaptive mask improves generation over 0 % ({col.label})"
    f = meta[small[0].name]["f"] if small else None
    base = next((r for r in rows if meta[r.name]["mask_type"] == "none" and meta[r.name]["f"] == f
                 and meta[r.name]["demask"] == "none" and col.key in r.values), None)
    if base is None or not small:
        return _missing(claim, f"needs finished 10-25 % rows and a 0 % row at the same f with {col.label}")
    return judge(claim, [Comparison(f"{r.descriptors.get('label', r.name)}", r, base, col.key, True) for r in small if col.key in r.values])


def _demask_components(table, rows, meta) -> Verdict | None:
    order = ["none", "sa", "dcsa", "dcsa-update"]
    masked = [r for r in table.rows if meta[r.name]["mask_type"] == "adaptive"]
    variants = {meta[r.name]["demask"] for r in masked}
    if len(variants) < 2 or len(variants) < len(masked):
        return None  # Table 7's shape: one adaptive row per de-mask variant
    cols = _metric_columns(table, "rfid") + _metric_columns(table, "fid")
    claim = f"each de-mask component improves reconstruction and generation (none -> SA -> DC-SA -> DC-SA + update; {_names(cols)})"
    comps = []
    for c in cols:
        seq = sorted([r for r in rows if meta[r.name]["mask_type"] == "adaptive" and c.key in r.values],
                     key=lambda r: order.index(meta[r.name]["demask"]))
        comps += _chain(seq, c.key, True, c.label)
    return judge(claim, comps) if comps else _missing(claim, "needs finished MQ-VAE rows with at least two de-mask variants")


def _full_model_beats_vqgan(table, rows, meta) -> Verdict | None:
    """Table 7: MQ-VAE outperforms VQGAN and the stronger VQGAN* in generation."""
    baselines = [r for r in table.rows if meta[r.name]["mask_type"] == "none"]
    if not any(meta[r.name]["demask"] == "sa" for r in baselines) or not _metric_columns(table, "fid"):
        return None
    col = _metric_columns(table, "fid")[0]
    claim = f"the full MQ-VAE beats VQGAN and VQGAN* in generation ({col.label})"
    full = next((r for r in rows if meta[r.name]["mask_type"] == "adaptive" and meta[r.name]["demask"] == "dcsa-update"
                 and col.key in r.values), None)
    base = [r for r in rows if meta[r.name]["mask_type"] == "none" and col.key in r.values]
    if full is None or not base:
        return _missing(claim, f"needs the finished full model and baselines with {col.label}")
    return judge(claim, [Comparison(b.descriptors.get("label", b.name), full, b, col.key, True) for b in base])


def _speed_rises(table, rows, meta) -> Verdict | None:
    """Fig. 6b: the higher the ratio, the faster the sampler (against the VQGAN of the masks' f)."""
    if "speed_images_per_s" not in [c.key for c in table.columns]:
        return None
    claim = "sampling speed rises with the mask ratio (img/s)"
    masked = [r for r in rows if meta[r.name]["mask_type"] == "adaptive" and "speed_images_per_s" in r.values]
    f = meta[masked[0].name]["f"] if masked else None
    base = [r for r in rows if meta[r.name]["mask_type"] == "none" and meta[r.name]["f"] == f and "speed_images_per_s" in r.values]
    seq = sorted(base[:1] + masked, key=lambda r: meta[r.name]["ratio"]) if masked else \
        sorted([r for r in rows if "speed_images_per_s" in r.values], key=lambda r: meta[r.name]["ratio"])
    if len(seq) < 2:
        return _missing(claim, "needs speed for at least two mask ratios")
    return judge(claim, _chain(seq, "speed_images_per_s", False, "img/s"))


LEARNED = ("damage", "straight-through")  # selectors with a learning signal beyond the paper's gain


def _learned_selectors(table, rows, meta) -> list[Verdict]:
    """Beyond the paper (issue 25): a selector with a learning signal keeps the object more often than
    a blind mask *and* than the paper's MLP scorer on the same data (foreground share of kept tokens)."""
    if not _metric_columns(table, "mask"):
        return []
    out = []
    for row in table.rows:
        m = meta[row.name]
        if m.get("selector") not in LEARNED:
            continue
        same = [r for r in rows if meta[r.name].get("data") == m["data"] and meta[r.name]["ratio"] == m["ratio"]]
        blind = next((r for r in same if meta[r.name]["mask_type"] == "random"), None)
        paper = next((r for r in same if meta[r.name].get("selector") == "gain" and meta[r.name]["scorer"] == "mlp"
                      and meta[r.name]["mask_type"] == "adaptive"), None)
        label = row.descriptors.get("label", row.name)
        claim = f"{label} keeps the foreground more often than a blind mask and than the paper's MLP (share of kept tokens on the foreground)"
        key = "mask_fg_precision"
        done = next((r for r in rows if r.name == row.name), None)
        if done is None or blind is None or paper is None or key not in done.values:
            out.append(_missing(claim, "needs finished rows of this selector, a random mask and the paper's MLP on the same data"))
            continue
        out.append(judge(claim, [Comparison("vs blind", done, blind, key, False), Comparison("vs the paper's MLP", done, paper, key, False)]))
    return out


def _beyond_position(table, rows, meta) -> list[Verdict]:
    """Beyond the paper (issue 33): a selector that learned the object, not where objects usually are,
    has a shuffled AUROC above the position prior's (the `centre` row: exactly 0.5, `shuffled_auroc`)
    and keeps more foreground than the centre row on the same data. Judged for every selector with
    something to learn (gain, damage, straight-through) on data that has a centre row."""
    if not _metric_columns(table, "sauc"):
        return []
    out = []
    for row in table.rows:
        m = meta[row.name]
        if m["mask_type"] != "adaptive" or m.get("selector") not in ("gain", *LEARNED):
            continue
        centre = next((r for r in rows if meta[r.name].get("selector") == "centre" and meta[r.name].get("data") == m["data"]
                       and meta[r.name]["ratio"] == m["ratio"]), None)
        if centre is None and not any(meta[r.name].get("selector") == "centre" and meta[r.name].get("data") == m["data"] for r in table.rows):
            continue
        label = row.descriptors.get("label", row.name)
        claim = f"{label}: the object, not its usual place (shuffled AUROC above the centre prior's 0.5, foreground share above its)"
        done = next((r for r in rows if r.name == row.name), None)
        keys = ("mask_sauc", "mask_fg_precision")
        if done is None or centre is None or any(k not in done.values or k not in centre.values for k in keys):
            out.append(_missing(claim, "needs finished rows of this selector and of the centre prior on the same data"))
            continue
        out.append(judge(claim, [Comparison("shuffled AUROC vs the centre prior", done, centre, "mask_sauc", False),
                                 Comparison("foreground share vs the centre prior", done, centre, "mask_fg_precision", False)]))
    return out


def _as(row: Row, key: str, label: str) -> Row:
    """`row`'s `key` under the common key "value", so two metrics of one row can be compared."""
    return Row(row.name, {"label": f"{row.descriptors.get('label', row.name)} {label}"}, row.status, row.seeds,
               {"value": row.values[key]})


def _within(table, rows, better: str, worse: str, claim: str, labels: tuple[str, str]) -> Verdict | None:
    """In every row, metric `better` exceeds metric `worse` (both higher-is-better percentages)."""
    if not any(c.key == better for c in table.columns):
        return None
    comps = [Comparison(r.descriptors.get("label", r.name), _as(r, better, labels[0]), _as(r, worse, labels[1]), "value", False)
             for r in rows if better in r.values and worse in r.values]
    return judge(claim, comps) if comps else _missing(claim, f"needs finished rows with {better} and {worse}")


def _samples_follow_captions(table, rows) -> Verdict | None:
    """Table 5 reports FID only; a text-conditional model should also show what its caption asks for."""
    return _within(table, rows, "attr_acc", "attr_acc_chance",
                   "samples show their caption's attributes more often than the shuffled captions' (caption match, %)",
                   ("own captions", "shuffled captions"))


def _guidance_helps(table, rows) -> Verdict | None:
    """Beyond the paper: classifier-free guidance makes samples follow their caption more often."""
    return _within(table, rows, "attr_acc_cfg", "attr_acc",
                   "classifier-free guidance raises the caption match (beyond the paper; caption match, %)",
                   ("guided", "unguided"))
