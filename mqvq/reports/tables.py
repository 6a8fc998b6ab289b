"""A study's runs -> the paper's table layout, as Markdown, LaTeX (booktabs), CSV or JSON.

Rows are the study's rows in declaration order; missing or failed rows are shown as such, never
dropped. Each metric cell is the mean over seeds (± std when there are several; the seed count
has its own column). Every Fréchet column is named after its feature backend (FID only for
Inception, FD-VGG16 otherwise), so backends are never mixed in one column; the paper's number sits
in the adjacent column (or, with `paper="line"`, on a small line under each row: the LaTeX default,
so that the table fits one column of a two-column paper). The best value per column is bold, and †
marks a row whose rank in that column differs from its rank in the paper's column. Provenance
(study, profile, run ids, git commit, data, device, date of the newest result) goes into a Markdown
footnote / LaTeX comment. `select_columns` chooses the columns for every format.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field, replace

import numpy as np

from mqvq.errors import UserError

# metric in a study -> (metric names per backend in the runs, label per backend, lower is better, decimals, paper key)
METRICS: dict[str, tuple[dict[str, str], dict[str, str], bool, int, str | None]] = {
    "rfid": ({"inception": "rfid", "vgg16": "rfd_vgg16"}, {"inception": "rFID", "vgg16": "rFD-VGG16"}, True, 2, "rfid"),
    "fid": ({"inception": "fid", "vgg16": "fd_vgg16"}, {"inception": "FID", "vgg16": "FD-VGG16"}, True, 2, "fid"),
    "fid_best": ({"inception": "fid_best", "vgg16": "fd_vgg16_best"}, {"inception": "FID (best sampling)", "vgg16": "FD-VGG16 (best sampling)"}, True, 2, "fid"),
    "fid_cfg": ({"inception": "fid_cfg", "vgg16": "fd_vgg16_cfg"}, {"inception": "FID (guided)", "vgg16": "FD-VGG16 (guided)"}, True, 2, None),
    "attr": ({"": "attr_acc"}, {"": "caption match (%)"}, False, 1, None),
    "attr_cfg": ({"": "attr_acc_cfg"}, {"": "caption match guided (%)"}, False, 1, None),
    "attr_real": ({"": "attr_acc_real"}, {"": "real images (%)"}, None, 1, None),
    "attr_chance": ({"": "attr_acc_chance"}, {"": "shuffled captions (%)"}, None, 1, None),
    "usage": ({"": "usage"}, {"": "usage (%)"}, False, 2, "usage"),
    "usage_effective": ({"": "usage_effective"}, {"": "effective usage (%)"}, False, 2, None),
    "mask": ({"": "mask_fg_precision"}, {"": "kept on foreground"}, False, 3, None),
    "detail": ({"": "mask_detail_ratio"}, {"": "detail kept / mean"}, False, 3, None),
    "auroc": ({"": "mask_auroc"}, {"": "AUROC score vs foreground"}, False, 3, None),
    "cost": ({"": "time/step_seconds"}, {"": "train s / step"}, None, 3, None),
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
# LaTeX headers, short enough for one column of a two-column paper (the caption spells them out)
SHORT_LABELS = {"rfid": {"inception": "rFID", "vgg16": "rFD"}, "fid": {"inception": "FID", "vgg16": "FD"},
                "fid_best": {"inception": "FID*", "vgg16": "FD*"}, "fid_cfg": {"inception": "FID$_g$", "vgg16": "FD$_g$"},
                "attr": "Match", "attr_cfg": "Match$_g$", "attr_real": "Real", "attr_chance": "Chance", "usage": "Use (\\%)", "usage_effective": "Eff. (\\%)",
                "mask": "FG", "detail": "Detail", "auroc": "AUC", "cost": "s/step", "fg_fraction": "FG tok.", "keep_border": "Border", "keep_centre": "Centre",
                "score_brightness": "$r$", "psnr": "PSNR", "lpips": "LPIPS", "is": "IS", "speed": "img/s", "speedup": "Speed-up"}
SHORT_DESCRIPTORS = {"label": "Setting", "mask_ratio": "Ratio", "f": "$f$", "mask_type": "Mask", "demask": "De-mask"}
PAPER_LAYOUTS = ("columns", "line", "none")
AUTO_FAMILIES = ("usage_effective", "detail")  # added beside a declared metric, not declared themselves
GUIDED = {"fid": "fid_cfg", "attr": "attr_cfg"}  # shown after their family when the runs have them


@dataclass
class Column:
    key: str              # metric name in the runs (e.g. fd_vgg16), or "paper:<key>"
    label: str            # header without arrow
    lower: bool | None    # None: a diagnostic with no better direction (no arrow, no bold)
    decimals: int
    backend: str = ""
    family: str = ""      # the study metric it shows (rfid, fid, usage, ...): a paper column compares with its family
    extra: bool = False   # a diagnostic the study did not declare (effective usage, detail): not in the one-column LaTeX default

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
    for family, twin in GUIDED.items():  # classifier-free guidance: measured only for models trained with condition dropout
        if family in metric_keys and any(n in present for n in METRICS[twin][0].values()):
            metric_keys.insert(metric_keys.index(family) + 1, twin)
    if "attr" in metric_keys:  # what the caption match reads against: the real images' ceiling, the chance floor
        at = metric_keys.index("attr_cfg" if "attr_cfg" in metric_keys else "attr") + 1
        metric_keys[at:at] = ["attr_real", "attr_chance"]
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
            columns.append(Column(names[b], labels[b], lower, decimals, b, family=m, extra=m in AUTO_FAMILIES))
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


def _decimals(table: Table, col: Column, compact: bool) -> int:
    """The column's decimals; `compact`: one count per column, at most four significant digits for its
    largest value (255.3, 12.34, 0.523), so that the decimal points line up."""
    vals = [abs(v) for r in table.rows if (v := _value(r, col)) is not None and math.isfinite(v)]
    if not compact or not vals:
        return col.decimals
    return min(col.decimals, max(0, 4 - len(str(int(max(vals))))))


def _cell(table: Table, row: Row, col: Column, bold, dagger, escape, spread=None, compact: bool = False) -> str:
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
    spread = spread or (lambda m, s: escape(f"{m} ± {s}"))
    d = _decimals(table, col, compact)
    text = spread(f"{mean:.{d}f}", f"{std:.{d}f}") if n > 1 else escape(f"{mean:.{d}f}")
    if mean == _best(table, col):
        text = bold(text)
    return text + (dagger if _rank_disagrees(table, row, col) else "")


def _paper_of(table: Table, col: Column) -> Column | None:
    """The paper column under a metric column in the "line" layout: the first of its family, Inception first."""
    if col.key.startswith("paper:"):
        return None
    mine = [c for c in table.columns if c.family == col.family and not c.key.startswith("paper:")]
    if sorted(mine, key=lambda c: c.backend != "inception")[0] is not col:
        return None
    return next((c for c in table.columns if c.key.startswith("paper:") and c.family == col.family), None)


def _frame(table: Table, bold, dagger, header, escape, paper: str = "columns", spread=None, paper_cell=None,
           paper_label: str = "", compact: bool = False):
    """Header and rows of strings. `paper`: "columns" (the paper's numbers in their own columns),
    "line" (on a line under each row, in the metric's own column, as `paper_cell` renders them) or "none"."""
    cols = [c for c in table.columns if paper == "columns" or not c.key.startswith("paper:")]
    head = [header(DESCRIPTOR_LABELS[k], None) for k in table.descriptor_keys] + [header(c.label, c) for c in cols] \
        + [header("seeds", None)]
    rows = []
    for row in table.rows:
        rows.append([escape(row.descriptors.get(k, "")) for k in table.descriptor_keys]
                    + [_cell(table, row, c, bold, dagger, escape, spread, compact) for c in cols]
                    + [str(row.seeds) if row.status == "finished" else "0"])
        if paper == "line":
            line = [_cell(table, row, pc, bold, dagger, escape) if (pc := _paper_of(table, c)) else "" for c in cols]
            line = [paper_cell(x) if x and x != "-" else "" for x in line]
            if any(line):
                rows.append([paper_label] + [""] * (len(table.descriptor_keys) - 1) + line + [""])
    return head, rows


def _data_phrase(table: Table) -> str | None:
    """'procedural 32x32 images (synthetic)' from the runs' data tags ('procedural 32px (digest)'), when they agree."""
    import re

    found = {(m.group(1), m.group(2)) for d in table.provenance.get("data", []) if (m := re.match(r"(\S+) (\d+)px", d))}
    if len(found) != 1:
        return None
    name, r = found.pop()
    pretty = {"procedural": "procedural {r}x{r} images (synthetic)", "fashion-mnist": "Fashion-MNIST {r}x{r}"}
    return pretty.get(name, name + " {r}x{r}").format(r=r)


def _caption(table: Table, paper: str = "paper columns report", latex: bool = False) -> str:
    from mqvq.paper import paper_dataset

    metrics = [c for c in table.columns if not c.key.startswith("paper:") and c.backend]
    kinds = sorted({"FID (Inception-v3 features)" if c.backend == "inception" else "FD-VGG16 (VGG16 features, not FID)" for c in metrics})
    what = f"{table.title}: " if table.title and not latex else ""
    data = _data_phrase(table)
    profile = {"smoke": f"smoke profile: tiny models on {data or 'procedural 32x32 images (synthetic)'}",
               "cpu": f"cpu profile: {data or 'Fashion-MNIST 32x32'} on a 2-core CPU",
               "mini": f"mini profile: {data or 'Fashion-MNIST 64x64'}",
               "paper": f"paper profile: {data or 'FFHQ 256x256'}"}.get(table.profile, table.profile)
    theirs = f"; {paper} FID on {paper_dataset(table.title)}" if any(c.key.startswith("paper:") for c in table.columns) else ""
    study = f"{table.study} (the paper's {table.title})" if latex and table.title.startswith(("Table", "Fig")) else table.study
    return f"{what}{study}, {profile}. Fréchet columns: {', '.join(kinds) or 'none measured'}{theirs}."


# --------------------------------------------------------------------------- renderers
def select_columns(table: Table, names: list[str] | None = None) -> Table:
    """The table with the chosen metric columns, in the order given. A name is a metric of the study
    (rfid, fid, usage, ...: every backend's column of it) or a column key (fd_vgg16, usage_effective,
    ...); a paper column follows its metric."""
    ours = [c for c in table.columns if not c.key.startswith("paper:")]
    if not names:
        keep = ours
    else:
        allowed = list(dict.fromkeys([c.family for c in ours] + [c.key for c in ours]))
        keep = []
        for name in names:
            chosen = [c for c in ours if name in (c.family, c.key)]
            if not chosen:
                raise UserError(f"--columns {name!r} is not a column of the {table.study} table: choose from {', '.join(allowed)}.")
            keep += [c for c in chosen if c not in keep]
    columns = []
    for c in keep:
        columns.append(c)
        paper = next((p for p in table.columns if p.key.startswith("paper:") and p.family == c.family), None)
        if paper is not None and paper not in columns and c is next(k for k in keep if k.family == c.family):
            columns.append(paper)
    return replace(table, columns=columns)


def to_markdown(table: Table, paper: str = "columns") -> str:
    def header(label, col):
        if col is None or col.key.startswith("paper:"):
            return label
        return col.header("" if col.lower is None else "↓" if col.lower else "↑")

    head, rows = _frame(table, lambda t: f"**{t}**", "†", header, lambda s: s, paper, paper_cell=lambda x: f"({x})",
                        paper_label="*paper*")
    out = io.StringIO()
    out.write(f"**{_caption(table)}**\n\n")
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


_LATEX_ESCAPE = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                 "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPE.get(ch, ch) for ch in text).replace("±", r"$\pm$").replace("†", r"$^\dagger$")


COLUMN_PT = 229.0  # \columnwidth of a two-column article (229.5 pt); CVPR, ICML, ACM and IEEE columns are wider
LABEL_PT = 80.0    # a row label wider than this wraps in a one-column table


def _short(col: Column) -> str:
    s = SHORT_LABELS.get(col.family, latex_escape(col.label))
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
        if col.key.startswith("paper:"):
            return f"{name} (paper" + (f", {unit}" if unit else ")")
        arrow = "" if col.lower is None else ("v" if plain else r"$\downarrow$") if col.lower else ("^" if plain else r"$\uparrow$")
        return name + arrow + (f" ({unit}" if unit else "")

    if plain:
        head, rows = _frame(table, str, "", header, esc, paper, spread=lambda m, s: f"{m}±{s}",
                            paper_cell=lambda x: "\x01" + x, compact=True)
    else:
        head, rows = _frame(table, lambda t: r"\textbf{" + t + "}", r"\rlap{$^\dagger$}", header, esc, paper,
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
    while table_width(table, paper) > COLUMN_PT:
        ours = [c for c in table.columns if not c.key.startswith("paper:")]
        with_paper = {c.family for c in table.columns if c.key.startswith("paper:")}
        order = [c for c in reversed(ours) if c.extra] + [c for c in reversed(ours) if not c.extra and c.family not in with_paper]
        if len(ours) <= 1 or not order:
            break
        dropped.append(order[0].key)
        table = replace(table, columns=[c for c in table.columns if c is not order[0]
                                        and not (c.key.startswith("paper:") and c.family == order[0].family
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
        room = max(LABEL_PT, budget - sum(widths[1:]))  # its right separation and the others' make up the rest
        spec[0] = f"p{{{room:.0f}pt}}"
        rows = [[r"\raggedright " + r[0], *r[1:]] if r[0] else r for r in rows]
    seeds = {r.seeds for r in table.rows if r.status == "finished"}
    legend = [f"{_short(c).partition(' (')[0]}: {latex_escape(c.label)}"
              for c in table.columns if not c.key.startswith("paper:") and _short(c) != latex_escape(c.label)]
    caption = latex_escape(_caption(table, "the paper's numbers are", latex=True)) + (" " + "; ".join(legend) + "." if legend else "") \
        + (" Small numbers under each row: the paper's." if paper == "line" and any(r.paper for r in table.rows)
           and any(c.key.startswith("paper:") for c in table.columns) else "") \
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


def glance(table: Table) -> tuple[list[str], list[list[str]]]:
    """The table at a glance: a row's label, each declared metric with the paper's number in
    parentheses, and the seed count."""
    cols = [c for c in table.columns if not c.key.startswith("paper:") and not c.extra]
    head = ["row", *[c.label for c in cols], "seeds"]
    rows = []
    for row in table.rows:
        cells = [row.descriptors.get("label", row.name)]
        for c in cols:
            text = _cell(table, row, c, str, "†", str, compact=True)
            pc = _paper_of(table, c)
            if pc is not None and row.paper.get(pc.key[6:]) is not None:
                text += f" ({row.paper[pc.key[6:]]:.{pc.decimals}f})"
            cells.append(text)
        rows.append([*cells, str(row.seeds)])
    return head, rows


def to_glance(table: Table) -> str:
    """`glance` in Markdown, under its caption."""
    head, rows = glance(table)
    return (f"**{_caption(table, 'the paper’s numbers (in parentheses) are')}**\n\n{_markdown_grid(head, rows)}\n\n"
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
            if col.key.startswith("paper:"):
                rec[f"paper_{col.key[6:]}"] = row.paper.get(col.key[6:])
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
    return json.dumps({"study": table.study, "profile": table.profile, "caption": _caption(table), "rows": rows,
                       "provenance": table.provenance}, indent=2) + "\n"


RENDERERS = {"md": to_markdown, "latex": to_latex, "csv": to_csv, "json": to_json}
