"""One table cell as text (mean ± spread, bold for the best, † where the rank differs from the
paper's), the header/row grid every format starts from, and the caption."""
from __future__ import annotations

import math

from mqvq.reports.tables import DESCRIPTOR_LABELS, Column, Row, Table


# --------------------------------------------------------------------------- cells
def best_in_column(table: Table, col: Column) -> float | None:
    vals = [cell_value(r, col) for r in table.rows]
    vals = [v for v in vals if v is not None]
    if not vals or col.lower is None:
        return None
    return min(vals) if col.lower else max(vals)


def cell_value(row: Row, col: Column) -> float | None:
    if col.is_paper:
        return row.paper.get(col.paper_key)
    v = row.values.get(col.key)
    return v[0] if v else None


def rank_disagrees(table: Table, row: Row, col: Column) -> bool:
    """Does this row's rank among rows with both numbers differ from its rank in the paper's column?"""
    pcol = next((c for c in table.columns if c.is_paper and c.family == col.family), None)
    if pcol is None:
        return False
    both = [r for r in table.rows if cell_value(r, col) is not None and cell_value(r, pcol) is not None]
    if row not in both or len(both) < 2:
        return False
    sign = 1 if col.lower else -1
    ours = sorted(both, key=lambda r: sign * cell_value(r, col))
    theirs = sorted(both, key=lambda r: sign * cell_value(r, pcol))
    return ours.index(row) != theirs.index(row)


def column_decimals(table: Table, col: Column, compact: bool) -> int:
    """The column's decimals; `compact`: one count per column, at most four significant digits for its
    largest value (255.3, 12.34, 0.523), so that the decimal points line up."""
    vals = [abs(v) for r in table.rows if (v := cell_value(r, col)) is not None and math.isfinite(v)]
    if not compact or not vals:
        return col.decimals
    return min(col.decimals, max(0, 4 - len(str(int(max(vals))))))


def format_cell(table: Table, row: Row, col: Column, bold, dagger, escape, spread=None, compact: bool = False) -> str:
    if col.is_paper:
        v = row.paper.get(col.paper_key)
        if v is None:
            return "-"
        text = escape(f"{v:.{col.decimals}f}")
        return bold(text) if v == best_in_column(table, col) else text
    if row.status != "finished":
        return escape(row.status)
    v = row.values.get(col.key)
    if v is None:
        return "n/a"
    mean, std, n = v
    spread = spread or (lambda m, s: escape(f"{m} ± {s}"))
    d = column_decimals(table, col, compact)
    text = spread(f"{mean:.{d}f}", f"{std:.{d}f}") if n > 1 else escape(f"{mean:.{d}f}")
    if mean == best_in_column(table, col):
        text = bold(text)
    return text + (dagger if rank_disagrees(table, row, col) else "")


def paper_column_of(table: Table, col: Column) -> Column | None:
    """The paper column under a metric column in the "line" layout: the first of its family, Inception first."""
    if col.is_paper:
        return None
    mine = [c for c in table.columns if c.family == col.family and not c.is_paper]
    if sorted(mine, key=lambda c: c.backend != "inception")[0] is not col:
        return None
    return next((c for c in table.columns if c.is_paper and c.family == col.family), None)


def frame(table: Table, bold, dagger, header, escape, paper: str = "columns", spread=None, paper_cell=None,
           paper_label: str = "", compact: bool = False):
    """Header and rows of strings. `paper`: "columns" (the paper's numbers in their own columns),
    "line" (on a line under each row, in the metric's own column, as `paper_cell` renders them) or "none"."""
    cols = [c for c in table.columns if paper == "columns" or not c.is_paper]
    head = [header(DESCRIPTOR_LABELS[k], None) for k in table.descriptor_keys] + [header(c.label, c) for c in cols] \
        + [header("seeds", None)]
    rows = []
    for row in table.rows:
        rows.append([escape(row.descriptors.get(k, "")) for k in table.descriptor_keys]
                    + [format_cell(table, row, c, bold, dagger, escape, spread, compact) for c in cols]
                    + [str(row.seeds) if row.status == "finished" else "0"])
        if paper == "line":
            line = [format_cell(table, row, pc, bold, dagger, escape) if (pc := paper_column_of(table, c)) else "" for c in cols]
            line = [paper_cell(x) if x and x != "-" else "" for x in line]
            if any(line):
                rows.append([paper_label] + [""] * (len(table.descriptor_keys) - 1) + line + [""])
    return head, rows


def data_phrase(table: Table) -> str | None:
    """'procedural 32x32 images (synthetic)' from the runs' data records, when they agree."""
    found = {(d.name, d.resolution) for d in table.data}
    if len(found) != 1:
        return None
    name, r = found.pop()
    pretty = {"procedural": "procedural {r}x{r} images (synthetic)", "fashion-mnist": "Fashion-MNIST {r}x{r}"}
    return pretty.get(name, name + " {r}x{r}").format(r=r)


def table_caption(table: Table, paper: str = "paper columns report", latex: bool = False) -> str:
    from mqvq.paper import paper_dataset

    metrics = [c for c in table.columns if not c.is_paper and c.backend]
    kinds = sorted({"FID (Inception-v3 features)" if c.backend == "inception" else "FD-VGG16 (VGG16 features, not FID)" for c in metrics})
    what = f"{table.title}: " if table.title and not latex else ""
    data = data_phrase(table)
    profile = {"smoke": f"smoke profile: tiny models on {data or 'procedural 32x32 images (synthetic)'}",
               "cpu": f"cpu profile: {data or 'Fashion-MNIST 32x32'} on a 2-core CPU",
               "mini": f"mini profile: {data or 'Fashion-MNIST 64x64'}",
               "paper": f"paper profile: {data or 'FFHQ 256x256'}"}.get(table.profile, table.profile)
    theirs = f"; {paper} FID on {paper_dataset(table.title)}" if any(c.is_paper for c in table.columns) else ""
    study = f"{table.study} (the paper's {table.title})" if latex and table.title.startswith(("Table", "Fig")) else table.study
    return f"{what}{study}, {profile}. Fréchet columns: {', '.join(kinds) or 'none measured'}{theirs}."
