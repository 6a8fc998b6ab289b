"""A study's runs -> the paper's table layout, as Markdown, LaTeX (booktabs), CSV or JSON.

Rows are the study's rows in declaration order; missing or failed rows are shown as such, never
dropped. Each metric cell is the mean over seeds (± std when there are several; the seed count
has its own column). Every Fréchet column is named after its feature backend (FID only for
Inception, FD-VGG16 otherwise), so backends are never mixed in one column; the paper's number sits
in the adjacent column. The best value per column is bold, and † marks a row whose rank in that
column differs from its rank in the paper's column. Provenance (study, profile, run ids, git
commit, data, device, date of the newest result) goes into a Markdown footnote / LaTeX comment.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field

import numpy as np

# metric in a study -> (metric names per backend in the runs, label per backend, lower is better, decimals, paper key)
METRICS: dict[str, tuple[dict[str, str], dict[str, str], bool, int, str | None]] = {
    "rfid": ({"inception": "rfid", "vgg16": "rfd_vgg16"}, {"inception": "rFID", "vgg16": "rFD-VGG16"}, True, 2, "rfid"),
    "fid": ({"inception": "fid", "vgg16": "fd_vgg16"}, {"inception": "FID", "vgg16": "FD-VGG16"}, True, 2, "fid"),
    "fid_best": ({"inception": "fid_best", "vgg16": "fd_vgg16_best"}, {"inception": "FID (best sampling)", "vgg16": "FD-VGG16 (best sampling)"}, True, 2, "fid"),
    "usage": ({"": "usage"}, {"": "usage (%)"}, False, 2, "usage"),
    "usage_effective": ({"": "usage_effective"}, {"": "effective usage (%)"}, False, 2, None),
    "mask": ({"": "mask_fg_precision"}, {"": "kept on foreground"}, False, 3, None),
    "detail": ({"": "mask_detail_ratio"}, {"": "detail kept / mean"}, False, 3, None),
    "fg_fraction": ({"": "fg_token_fraction"}, {"": "foreground tokens"}, None, 3, None),
    "keep_border": ({"": "mask_keep_border"}, {"": "kept at border"}, None, 3, None),
    "keep_centre": ({"": "mask_keep_centre"}, {"": "kept in centre"}, None, 3, None),
    "score_brightness": ({"": "mask_score_corr_brightness"}, {"": "r(score, brightness)"}, None, 2, None),
    "psnr": ({"": "psnr"}, {"": "PSNR"}, False, 2, None),
    "lpips": ({"": "lpips"}, {"": "LPIPS"}, True, 3, None),
    "is": ({"inception": "is"}, {"inception": "IS"}, False, 2, None),
    "speed": ({"": "speed_images_per_s"}, {"": "img/s"}, False, 1, None),
    "speedup": ({"": "speedup"}, {"": "speed-up vs 0 %"}, False, 2, "speedup"),
}
DESCRIPTOR_LABELS = {"label": "model setting", "mask_ratio": "mask ratio", "f": "f", "mask_type": "mask type", "demask": "de-mask"}


@dataclass
class Column:
    key: str              # metric name in the runs (e.g. fd_vgg16), or "paper:<key>"
    label: str            # header without arrow
    lower: bool | None    # None: a diagnostic with no better direction (no arrow, no bold)
    decimals: int
    backend: str = ""
    family: str = ""      # the study metric it shows (rfid, fid, usage, ...): a paper column compares with its family

    def header(self, arrow: str) -> str:
        """`usage (%)` -> `usage↑ (%)`: the arrow follows the metric's name, before any unit."""
        name, _, unit = self.label.partition(" (")
        return name + arrow + (f" ({unit}" if unit else "")


@dataclass
class Row:
    name: str
    descriptors: dict[str, str]
    status: str                                   # finished | missing | failed | running
    seeds: int = 0
    values: dict[str, tuple[float, float, int]] = field(default_factory=dict)   # key -> (mean, std, n)
    paper: dict[str, float] = field(default_factory=dict)
    run_ids: list[str] = field(default_factory=list)
    per_seed: dict[str, dict[int, float]] = field(default_factory=dict)  # key -> seed -> value (for paired tests)


@dataclass
class Table:
    study: str
    profile: str
    title: str
    columns: list[Column]
    descriptor_keys: list[str]
    rows: list[Row]
    provenance: dict
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- building
def describe(cfg) -> dict[str, str]:
    """Row descriptors from an experiment resolved at the paper profile (the paper's f, not the profile's)."""
    m = cfg.stage1.model
    return {"mask_ratio": f"{m.mask.ratio:.0%}".replace("%", " %"), "f": str(m.downsample),
            "mask_type": "-" if m.mask.type == "none" else m.mask.type,
            "demask": {"none": "-", "sa": "SA", "dcsa": "DC-SA", "dcsa-update": "DC-SA + update"}[m.demask.type]}


def build_table(study, profile: str, records: list[dict], descriptors: dict[str, dict], paper: dict[str, dict]) -> Table:
    """`records`: one dict per row run (row, seed, status, metrics, tags, run_id, end_time, ...)."""
    by_row: dict[str, list[dict]] = {}
    for r in records:
        by_row.setdefault(r["row"], []).append(r)
    metric_keys = list(study.metrics) + (["fid_best"] if getattr(study, "search", None) and study.search.trials else [])
    present = {k for r in records for k in r["metrics"]}
    if "speed" in metric_keys:
        metric_keys.append("speedup")
    if "mask_detail" in metric_keys:  # the diagnostics behind "kept on foreground"
        i = metric_keys.index("mask_detail")
        detail = ["fg_fraction", "keep_border", "keep_centre", "score_brightness"]
        metric_keys[i: i + 1] = detail if "mask" in metric_keys else ["mask", *detail]
    if "mask" in metric_keys and "mask_detail_ratio" in present:  # older runs lack it: no empty column
        metric_keys.insert(metric_keys.index("mask") + 1, "detail")
    if "usage" in metric_keys and "usage_effective" in present:  # used-at-least-once saturates under dead-code restart; 100 exp(H) / K does not
        metric_keys.insert(metric_keys.index("usage") + 1, "usage_effective")
    rows = []
    for srow in study.rows:
        recs = by_row.get(srow.name, [])
        done = [r for r in recs if r["status"] == "finished"]
        status = "finished" if done else (recs[0]["status"] if recs else "missing")
        row = Row(srow.name, {**descriptors.get(srow.name, {}), "label": srow.label or srow.name}, status, len(done),
                  paper=paper.get(srow.name, {}), run_ids=[r["run_id"] for r in recs])
        for key in present:
            vals = [r["metrics"][key] for r in done if key in r["metrics"]]
            if vals:
                row.values[key] = (float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals))
                row.per_seed[key] = {r["seed"]: r["metrics"][key] for r in done if key in r["metrics"]}
        rows.append(row)
    _speedups(rows)
    columns: list[Column] = []
    for m in metric_keys:
        names, labels, lower, decimals, paper_key = METRICS[m]
        backends = [b for b, name in names.items() if name in present or (m == "speedup" and any("speedup" in r.values for r in rows))]
        if not backends:  # nothing measured yet: still show the column, under the profile's default backend
            backends = [b for b in names if b in ("", _default_backend(records, profile))][:1] or [next(iter(names))]
        for b in backends:
            columns.append(Column(names[b], labels[b], lower, decimals, b, family=m))
        if paper_key and any(paper_key in r.paper for r in rows):
            columns.append(Column(f"paper:{paper_key}", f"paper {labels.get('inception', labels.get('', ''))}".strip(), lower,
                                  decimals, "inception" if m in ("rfid", "fid", "fid_best") else "", family=m))
    return Table(study.name, profile, getattr(study, "table", ""), columns, list(study.columns), rows,
                 _provenance(study, profile, records))


def _default_backend(records, profile) -> str:
    return "inception" if profile == "paper" else "vgg16"


def _speedups(rows: list[Row]) -> None:
    """speed relative to the 0 % row (Fig. 6b's speed improvement)."""
    base = next((r for r in rows if r.descriptors.get("mask_ratio", "").startswith("0 ") and "speed_images_per_s" in r.values), None)
    if base is None:
        return
    b = base.values["speed_images_per_s"][0]
    for r in rows:
        if "speed_images_per_s" in r.values:
            mean, std, n = r.values["speed_images_per_s"]
            r.values["speedup"] = (mean / b, std / b, n)


def _provenance(study, profile: str, records: list[dict]) -> dict:
    def tag_set(key):
        return sorted({r["tags"].get(key) for r in records if r["tags"].get(key)})

    ends = [r["end_time"] for r in records if r.get("end_time")]
    import datetime as dt

    date = dt.datetime.fromtimestamp(max(ends) / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if ends else "no results"
    backends = {}
    for r in records:
        for k, v in r["tags"].items():
            if k.startswith("mqvq.eval.") and k.endswith((".backend", ".num", ".sampling_choice")):
                backends.setdefault(k[len("mqvq.eval."):].rsplit(".", 1)[0], {}).setdefault(k.rsplit(".", 1)[1], set()).add(v)
    return {"study": study.name, "table": getattr(study, "table", ""), "profile": profile,
            "runs": {r["row"] + (f"/s{r['seed']}" if len(study.seeds) > 1 else ""): r["run_id"] for r in records},
            "git_commit": tag_set("mqvq.git_commit"), "data": tag_set("mqvq.data"), "device": tag_set("mqvq.eval.device"),
            "torch": tag_set("mqvq.eval.torch"), "threads": sorted({str(v) for k in ("mqvq.torch_threads", "mqvq.eval.threads") for v in tag_set(k)}),
            "metrics": {k: {kk: sorted(vv) for kk, vv in v.items()} for k, v in sorted(backends.items())},
            "date": date}


# --------------------------------------------------------------------------- cells
def _best(table: Table, col: Column) -> float | None:
    vals = [_value(r, col) for r in table.rows]
    vals = [v for v in vals if v is not None]
    if not vals or col.lower is None:
        return None
    return min(vals) if col.lower else max(vals)


def _value(row: Row, col: Column) -> float | None:
    if col.key.startswith("paper:"):
        return row.paper.get(col.key[6:])
    v = row.values.get(col.key)
    return v[0] if v else None


def _rank_disagrees(table: Table, row: Row, col: Column) -> bool:
    """Does this row's rank among rows with both numbers differ from its rank in the paper's column?"""
    pcol = next((c for c in table.columns if c.key.startswith("paper:") and c.family == col.family), None)
    if pcol is None:
        return False
    both = [r for r in table.rows if _value(r, col) is not None and _value(r, pcol) is not None]
    if row not in both or len(both) < 2:
        return False
    sign = 1 if col.lower else -1
    ours = sorted(both, key=lambda r: sign * _value(r, col))
    theirs = sorted(both, key=lambda r: sign * _value(r, pcol))
    return ours.index(row) != theirs.index(row)


def _cell(table: Table, row: Row, col: Column, bold, dagger, escape) -> str:
    if col.key.startswith("paper:"):
        v = row.paper.get(col.key[6:])
        if v is None:
            return "-"
        text = escape(f"{v:.{col.decimals}f}")
        return bold(text) if v == _best(table, col) else text
    if row.status != "finished":
        return escape(row.status)
    v = row.values.get(col.key)
    if v is None:
        return "n/a"
    mean, std, n = v
    text = escape(f"{mean:.{col.decimals}f}" + (f" ± {std:.{col.decimals}f}" if n > 1 else ""))
    if mean == _best(table, col):
        text = bold(text)
    return text + (dagger if _rank_disagrees(table, row, col) else "")


def _frame(table: Table, bold, dagger, header, escape):
    import pandas as pd

    data = []
    for row in table.rows:
        rec = {header(DESCRIPTOR_LABELS[k], None): escape(row.descriptors.get(k, "")) for k in table.descriptor_keys}
        for col in table.columns:
            rec[header(col.label, col)] = _cell(table, row, col, bold, dagger, escape)
        rec[header("seeds", None)] = str(row.seeds) if row.status == "finished" else "0"
        data.append(rec)
    return pd.DataFrame(data)


def _caption(table: Table) -> str:
    metrics = [c for c in table.columns if not c.key.startswith("paper:") and c.backend]
    kinds = sorted({"FID (Inception-v3 features)" if c.backend == "inception" else "FD-VGG16 (VGG16 features, not FID)" for c in metrics})
    what = f"{table.title}: " if table.title else ""
    profile = {"smoke": "smoke profile: tiny models on procedural 32x32 images (synthetic)",
               "cpu": "cpu profile: Fashion-MNIST 32x32 on a 2-core CPU",
               "mini": "mini profile: Fashion-MNIST 64x64", "paper": "paper profile: FFHQ 256x256"}.get(table.profile, table.profile)
    return f"{what}{table.study}, {profile}. Fréchet columns: {', '.join(kinds) or 'none measured'}; paper columns report FID on FFHQ."


# --------------------------------------------------------------------------- renderers
def to_markdown(table: Table) -> str:
    def header(label, col):
        if col is None or col.key.startswith("paper:"):
            return label
        return col.header("" if col.lower is None else "↓" if col.lower else "↑")

    df = _frame(table, lambda t: f"**{t}**", "†", header, lambda s: s)
    out = io.StringIO()
    out.write(f"**{_caption(table)}**\n\n")
    out.write(df.to_markdown(index=False, tablefmt="github", disable_numparse=True))
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


_LATEX_ESCAPE = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                 "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPE.get(ch, ch) for ch in text).replace("±", r"$\pm$").replace("†", r"$^\dagger$")


def to_latex(table: Table) -> str:
    def header(label, col):
        if col is None or col.key.startswith("paper:"):
            return latex_escape(label)
        arrow = "" if col.lower is None else r"$\downarrow$" if col.lower else r"$\uparrow$"
        return latex_escape(col.header("ARROW")).replace("ARROW", arrow)

    df = _frame(table, lambda t: r"\textbf{" + t + "}", r"$^\dagger$", header, latex_escape)
    styler = df.style.hide(axis="index")
    n_desc = len(table.descriptor_keys)
    body = styler.to_latex(column_format="l" * n_desc + "r" * (len(df.columns) - n_desc), hrules=True,
                           caption=latex_escape(_caption(table)), label=f"tab:{table.study}", position="t",
                           position_float="centering")
    p = table.provenance
    lines = [f"% generated by mqvq report {p['study']} --profile {p['profile']}; results as of {p['date']}",
             f"% data {', '.join(p['data']) or 'unknown'}; git {', '.join(p['git_commit']) or 'unknown'}; "
             f"device {', '.join(p['device']) or 'unknown'}; torch {', '.join(p['torch']) or '?'}"
             + (f"; torch threads {'/'.join(p['threads'])}" if p.get("threads") else ""),
             "% runs: " + ", ".join(f"{k}={v}" for k, v in p["runs"].items()),
             "% needs \\usepackage{booktabs}; bold = best per column; $^\\dagger$ = rank differs from the paper's"]
    return "\n".join(lines) + "\n" + body


def to_records(table: Table) -> list[dict]:
    out = []
    for row in table.rows:
        rec = {"row": row.name, **{k: row.descriptors.get(k, "") for k in ["label", *table.descriptor_keys] if k},
               "status": row.status, "seeds": row.seeds}
        for col in table.columns:
            if col.key.startswith("paper:"):
                rec[f"paper_{col.key[6:]}"] = row.paper.get(col.key[6:])
            else:
                v = row.values.get(col.key)
                rec[col.key] = v[0] if v else None
                rec[f"{col.key}_std"] = v[1] if v else None
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
    return json.dumps({"study": table.study, "profile": table.profile, "caption": _caption(table), "rows": rows,
                       "provenance": table.provenance}, indent=2) + "\n"


RENDERERS = {"md": to_markdown, "latex": to_latex, "csv": to_csv, "json": to_json}
