"""Per-seed values and their summaries, shared by the table tools that read a report's JSON."""

import statistics as st

from scipy import stats


def seeds(row: dict, key: str) -> list[float]:
    """A row's per-seed values of `key` (its mean alone when it has one seed)."""
    if f"{key}_per_seed" in row:
        return [v for v in row[f"{key}_per_seed"].values() if v is not None]
    return [row[key]] if row.get(key) is not None else []


def mean_sd(v: list[float], d: int) -> str:
    if not v:
        return "–"
    return f"{st.mean(v):.{d}f} ± {st.stdev(v):.{d}f}" if len(v) > 1 else f"{v[0]:.{d}f}"


def welch(a: list[float], b: list[float], tie_digits: int = 3) -> str:
    """Two-sided Welch p over seeds, 3 decimals ('–' with fewer than two seeds on a side; two rows
    without spread get 0 or 1 with `tie_digits` decimals)."""
    if len(a) < 2 or len(b) < 2:
        return "–"
    if st.pstdev(a) == 0 and st.pstdev(b) == 0:
        return f"{0.0 if st.mean(a) != st.mean(b) else 1.0:.{tie_digits}f}"
    return f"{stats.ttest_ind(a, b, equal_var=False).pvalue:.3f}"
