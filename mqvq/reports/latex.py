"""The table as LaTeX (booktabs) that fits one column of a two-column paper: short headers, the
paper's numbers on a line under each row, aligned decimals, and the widths that decide what fits."""
from __future__ import annotations

from dataclasses import replace

from mqvq.metrics.registry import REGISTRY
from mqvq.reports.cells import frame, table_caption
from mqvq.reports.tables import DESCRIPTOR_LABELS, SHORT_DESCRIPTORS, Column, Table


_LATEX_ESCAPE = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                 "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPE.get(ch, ch) for ch in text).replace("±", r"$\pm$").replace("†", r"$^\dagger$")


COLUMN_PT = 229.0  # \columnwidth of a two-column article (229.5 pt); CVPR, ICML, ACM and IEEE columns are wider
LABEL_PT = 80.0    # a row label wider than this wraps in a one-column table
FIT_MARGIN_PT = 12.0  # the width estimate can fall up to ~12 pt short (cmr8 digits, arrows, column separations)


def _short(col: Column) -> str:
    s = REGISTRY[col.family].short if col.family in REGISTRY else latex_escape(col.label)
    return s.get(col.backend, latex_escape(col.label)) if isinstance(s, dict) else s


def _latex_grid(table: Table, paper: str, plain: bool = False):
    """The LaTeX header and rows; `plain`: the same cells as plain text for measuring them, paper
    lines marked with a leading \\x01 (they are set small)."""
    short_desc = {v: SHORT_DESCRIPTORS[k] for k, v in DESCRIPTOR_LABELS.items()} | {"seeds": "$n$"}
    esc = (lambda s: s) if plain else latex_escape

    def header(label, col):
        if col is None:
            return short_desc.get(label, esc(label))
        name, _, unit = _short(col).partition(" (")
        if col.is_paper:
            return f"{name} (paper" + (f", {unit}" if unit else ")")
        arrow = "" if col.lower is None else ("v" if plain else r"$\downarrow$") if col.lower else ("^" if plain else r"$\uparrow$")
        return name + arrow + (f" ({unit}" if unit else "")

    if plain:
        head, rows = frame(table, str, "", header, esc, paper, spread=lambda m, s: f"{m}±{s}",
                            paper_cell=lambda x: "\x01" + x, compact=True)
    else:
        head, rows = frame(table, lambda t: r"\textbf{" + t + "}", r"\rlap{$^\dagger$}", header, esc, paper,
                            spread=lambda m, s: m + r"{\scriptsize$\pm$" + s + "}",
                            paper_cell=lambda x: r"{\scriptsize(" + x + ")}", compact=True)
    if len({r.seeds for r in table.rows if r.status == "finished"}) == 1:  # said once in the caption, not in a column
        head, rows = head[:-1], [r[:-1] for r in rows]
    return head, rows


def latex_widths(table: Table, paper: str = "line") -> list[float]:
    """Estimated width in pt of each column of the LaTeX tabular (\\footnotesize, cmr8 / cmr7 glyphs,
    3 pt column separation): how `fit_one_column` decides what fits."""
    head, rows = _latex_grid(table, paper, plain=True)

    def pt(text: str) -> float:
        small = text.startswith("\x01")
        text = text.lstrip("\x01").replace("$", "").replace("\\", "")
        main, pm, spread = text.partition("±")
        return len(main) * (4.0 if small else 4.4) + (8.0 + len(spread) * 4.0 if pm else 0.0) + (4.0 if small else 0.0)

    return [max(pt(r[i]) for r in [head, *rows]) + 6.0 for i in range(len(head))]


def table_width(table: Table, paper: str = "line") -> float:
    """Estimated width of the tabular in pt; a row label counts at most LABEL_PT (it wraps, see to_latex)."""
    w = latex_widths(table, paper)
    return sum(w) - 6.0 - (max(0.0, w[0] - LABEL_PT - 3.0) if table.descriptor_keys[:1] == ["label"] else 0.0)


def fit_one_column(table: Table, paper: str = "line") -> tuple[Table, list[str]]:
    """Leave out columns until the table fits one column: first the undeclared diagnostics, then,
    from the right, the metrics the paper does not report; at least one metric stays. Returns the
    table and the left-out column keys."""
    dropped = []
    while table_width(table, paper) > COLUMN_PT - FIT_MARGIN_PT:
        ours = [c for c in table.columns if not c.is_paper]
        with_paper = {c.family for c in table.columns if c.is_paper}
        order = [c for c in reversed(ours) if c.extra] + [c for c in reversed(ours) if not c.extra and c.family not in with_paper]
        if len(ours) <= 1 or not order:
            break
        dropped.append(order[0].key)
        table = replace(table, columns=[c for c in table.columns if c is not order[0]
                                        and not (c.is_paper and c.family == order[0].family
                                                 and sum(o.family == c.family for o in ours) == 1)])
    return table, dropped


def to_latex(table: Table, paper: str = "line", wide: bool = False, left_out: list[str] | None = None) -> str:
    """booktabs, compact: short headers (spelled out in the caption), the paper's numbers small under
    each row, \\footnotesize. `fit_one_column` chooses columns that fit one column of a two-column
    paper; a long row label wraps. `wide`: a table* across both columns."""
    head, rows = _latex_grid(table, paper)
    n_desc = len(table.descriptor_keys)
    spec = ["l"] * n_desc + ["r"] * (len(head) - n_desc)
    widths = latex_widths(table, paper)
    budget = (2 * COLUMN_PT + 10) if wide else COLUMN_PT
    if table.descriptor_keys[:1] == ["label"] and sum(widths) - 6.0 > budget:  # wrap the labels, not the numbers
        room = max(LABEL_PT, budget - sum(widths[1:]) - FIT_MARGIN_PT)  # its right separation and the others' make up the rest
        spec[0] = f"p{{{room:.0f}pt}}"
        rows = [[r"\raggedright " + r[0], *r[1:]] if r[0] else r for r in rows]
    seeds = {r.seeds for r in table.rows if r.status == "finished"}
    legend = [f"{_short(c).partition(' (')[0]}: {latex_escape(c.label)}"
              for c in table.columns if not c.is_paper and _short(c) != latex_escape(c.label)]
    caption = latex_escape(table_caption(table, "the paper's numbers are", latex=True)) + (" " + "; ".join(legend) + "." if legend else "") \
        + (" Small numbers under each row: the paper's." if paper == "line" and any(r.paper for r in table.rows)
           and any(c.is_paper for c in table.columns) else "") \
        + (" One seed." if seeds == {1} else f" Mean $\\pm$ std over {min(seeds)} seeds." if len(seeds) == 1
           else " $n$: seeds (mean $\\pm$ std when $n > 1$).") \
        + r" Bold: best per column; $^\dagger$: ranks differently from the paper."
    env = "table*" if wide else "table"
    p = table.provenance
    out = [f"% generated by mqvq report {p['study']} --profile {p['profile']}; results as of {p['date']}",
           f"% data {', '.join(p['data']) or 'unknown'}; git {', '.join(p['git_commit']) or 'unknown'}; "
           f"device {', '.join(p['device']) or 'unknown'}; torch {', '.join(p['torch']) or '?'}"
           + (f"; torch threads {'/'.join(p['threads'])}" if p.get("threads") else ""),
           "% runs: " + ", ".join(f"{k}={v}" for k, v in p["runs"].items()),
           "% needs \\usepackage{booktabs}"]
    if left_out:
        out.append(f"% left out to fit one column: {', '.join(left_out)} (--wide or --columns to include them)")
    out += [f"\\begin{{{env}}}[t]", r"\centering", f"\\caption{{{caption}}}", f"\\label{{tab:{table.study}}}",
            r"\footnotesize", r"\setlength{\tabcolsep}{3pt}",
            f"\\begin{{tabular}}{{@{{}}{''.join(spec)}@{{}}}}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    out += [" & ".join(r) + r" \\" for r in rows]
    out += [r"\bottomrule", r"\end{tabular}", f"\\end{{{env}}}"]
    return "\n".join(out) + "\n"
