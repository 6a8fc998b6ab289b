"""The table as Markdown, CSV, JSON and the glance the MLflow summary shows; `RENDERERS` by format."""
from __future__ import annotations

import io
import json
import math

from mqvq.reports.cells import format_cell, frame, paper_column_of, table_caption
from mqvq.reports.latex import to_latex
from mqvq.reports.tables import Table


def to_markdown(table: Table, paper: str = "columns") -> str:
    def header(label, col):
        if col is None or col.is_paper:
            return label
        return col.header("" if col.lower is None else "↓" if col.lower else "↑")

    head, rows = frame(table, lambda t: f"**{t}**", "†", header, lambda s: s, paper, paper_cell=lambda x: f"({x})",
                        paper_label="*paper*")
    out = io.StringIO()
    out.write(f"**{table_caption(table)}**\n\n")
    out.write(_markdown_grid(head, rows))
    out.write("\n\n")
    p = table.provenance
    notes = ["Mean over seeds (± sample std when there are several; `seeds` = finished seeds). Bold: best per column. "
             "†: the row ranks differently from the paper in that column. `missing` / `failed`: the row has no finished run."]
    notes.append(f"Provenance: study `{p['study']}` ({p['table']}), profile `{p['profile']}`, results as of {p['date']}; "
                 f"data {', '.join(p['data']) or 'unknown'}; git {', '.join(p['git_commit']) or 'unknown'}; "
                 f"device {', '.join(p['device']) or 'unknown'} (torch {', '.join(p['torch']) or '?'}"
                 + (f", {'/'.join(p['threads'])} torch thread{'s' * (p['threads'] != ['1'])}" if p.get("threads") else "") + ").")
    if p["metrics"]:
        notes.append("Metrics: " + "; ".join(f"{k}: " + ", ".join(f"{kk} {'/'.join(vv)}" for kk, vv in v.items())
                                            for k, v in p["metrics"].items()) + ".")
    notes.append("Runs: " + ", ".join(f"{k} `{v}`" for k, v in p["runs"].items()) + "." if p["runs"] else "Runs: none.")
    out.write("\n".join(f"<sub>{n}</sub>  " for n in notes) + "\n")
    return out.getvalue()

def glance(table: Table) -> tuple[list[str], list[list[str]]]:
    """The table at a glance: a row's label, each declared metric with the paper's number in
    parentheses, and the seed count."""
    cols = [c for c in table.columns if not c.is_paper and not c.extra]
    head = ["row", *[c.label for c in cols], "seeds"]
    rows = []
    for row in table.rows:
        cells = [row.descriptors.get("label", row.name)]
        for c in cols:
            text = format_cell(table, row, c, str, "†", str, compact=True)
            pc = paper_column_of(table, c)
            if pc is not None and row.paper.get(pc.paper_key) is not None:
                text += f" ({row.paper[pc.paper_key]:.{pc.decimals}f})"
            cells.append(text)
        rows.append([*cells, str(row.seeds)])
    return head, rows


def to_glance(table: Table) -> str:
    """`glance` in Markdown, under its caption."""
    head, rows = glance(table)
    return (f"**{table_caption(table, 'the paper’s numbers (in parentheses) are')}**\n\n{_markdown_grid(head, rows)}\n\n"
            "†: the row ranks differently from the paper in that column.")


def _markdown_grid(head: list[str], rows: list[list[str]]) -> str:
    import pandas as pd

    return pd.DataFrame(rows, columns=head).to_markdown(index=False, tablefmt="github", disable_numparse=True)


def to_records(table: Table) -> list[dict]:
    out = []
    for row in table.rows:
        rec = {"row": row.name, **{k: row.descriptors.get(k, "") for k in ["label", *table.descriptor_keys] if k},
               "status": row.status, "seeds": row.seeds}
        for col in table.columns:
            if col.is_paper:
                rec[f"paper_{col.paper_key}"] = row.paper.get(col.paper_key)
            else:
                v = row.values.get(col.key)
                rec[col.key] = v[0] if v else None
                rec[f"{col.key}_std"] = v[1] if v and v[2] > 1 else None  # one seed has no spread, not a spread of 0
                if v and len(row.per_seed.get(col.key, {})) > 1:  # JSON keys are strings: the seed
                    rec[f"{col.key}_per_seed"] = {str(k): x for k, x in sorted(row.per_seed[col.key].items())}
        out.append(rec)
    return out


def to_csv(table: Table) -> str:
    import pandas as pd

    flat = [{k: v for k, v in r.items() if not k.endswith("_per_seed")} for r in to_records(table)]  # one cell, one number
    return pd.DataFrame(flat).to_csv(index=False)


def to_json(table: Table) -> str:
    clean = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
    rows = [{k: clean(v) for k, v in r.items()} for r in to_records(table)]
    return json.dumps({"study": table.study, "profile": table.profile, "caption": table_caption(table), "rows": rows,
                       "provenance": table.provenance}, indent=2) + "\n"


RENDERERS = {"md": to_markdown, "latex": to_latex, "csv": to_csv, "json": to_json}
