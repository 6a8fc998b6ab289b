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

This module builds the table; `cells.py` formats its cells, `render.py` writes Markdown, CSV, JSON
and the glance, `latex.py` LaTeX.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from mqvq.errors import UserError
from mqvq.metrics.registry import GUIDED, REGISTRY, named_step_seconds
from mqvq.tracking import tags as T
from mqvq.tracking.records import RowRecord

DESCRIPTOR_LABELS = {"label": "model setting", "mask_ratio": "mask ratio", "f": "f", "mask_type": "mask type", "demask": "de-mask"}
# LaTeX headers, short enough for one column of a two-column paper (the caption spells them out)
SHORT_DESCRIPTORS = {"label": "Setting", "mask_ratio": "Ratio", "f": "$f$", "mask_type": "Mask", "demask": "De-mask"}
PAPER_LAYOUTS = ("columns", "line", "none")
PAPER = "paper:"  # the key prefix of a column holding the paper's numbers


@dataclass
class Column:
    key: str              # metric name in the runs (e.g. fd_vgg16), or PAPER + the paper's key
    label: str            # header without arrow
    lower: bool | None    # None: a diagnostic with no better direction (no arrow, no bold)
    decimals: int
    backend: str = ""
    family: str = ""      # the study metric it shows (rfid, fid, usage, ...): a paper column compares with its family
    extra: bool = False   # a diagnostic the study did not declare (effective usage, detail): not in the one-column LaTeX default

    @property
    def is_paper(self) -> bool:
        return self.key.startswith(PAPER)

    @property
    def paper_key(self) -> str:
        """The paper's key a paper column shows (rfid, fid, usage, ...)."""
        return self.key[len(PAPER):]

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
    data: list = field(default_factory=list)      # the rows' DataRecords, as trained


# --------------------------------------------------------------------------- building
def describe(cfg) -> dict[str, str]:
    """Row descriptors from an experiment resolved at the paper profile (the paper's f, not the profile's)."""
    m = cfg.stage1.model
    return {"mask_ratio": f"{m.mask.ratio:.0%}".replace("%", " %"), "f": str(m.downsample),
            "mask_type": "-" if m.mask.type == "none" else m.mask.type,
            "demask": {"none": "-", "sa": "SA", "dcsa": "DC-SA", "dcsa-update": "DC-SA + update"}[m.demask.type]}


def build_table(study, profile: str, records: list[RowRecord], descriptors: dict[str, dict], paper: dict[str, dict]) -> Table:
    """`records`: one per row run (row x seed)."""
    by_row: dict[str, list[RowRecord]] = {}
    records = [replace(r, metrics=named_step_seconds(r.metrics, "stage2" if r.stage2_run else "stage1")) for r in records]  # rows trained before
    for r in records:
        by_row.setdefault(r.row, []).append(r)
    metric_keys = list(study.metrics) + (["fid_best"] if getattr(study, "search", None) and study.search.trials else [])
    present = {k for r in records for k in r.metrics}
    if "speed" in metric_keys:
        metric_keys.append("speedup")
    if "mask_detail" in metric_keys:  # the diagnostics behind "kept on foreground"
        i = metric_keys.index("mask_detail")
        detail = ["fg_fraction", "keep_border", "keep_centre", "score_brightness"]
        metric_keys[i: i + 1] = detail if "mask" in metric_keys else ["mask", *detail]
    if "mask" in metric_keys and "mask_detail_ratio" in present:  # older runs lack it: no empty column
        metric_keys.insert(metric_keys.index("mask") + 1, "detail")
    for family, twin in GUIDED.items():  # classifier-free guidance: measured only for models trained with condition dropout
        if family in metric_keys and any(n in present for n in REGISTRY[twin].names.values()):
            metric_keys.insert(metric_keys.index(family) + 1, twin)
    if "attr" in metric_keys:  # what the caption match reads against: the real images' ceiling, the chance floor
        at = metric_keys.index("attr_cfg" if "attr_cfg" in metric_keys else "attr") + 1
        metric_keys[at:at] = ["attr_real", "attr_chance"]
    if "usage" in metric_keys and "usage_effective" in present:  # used-at-least-once saturates under dead-code restart; 100 exp(H) / K does not
        metric_keys.insert(metric_keys.index("usage") + 1, "usage_effective")
    rows = []
    for srow in study.rows:
        recs = by_row.get(srow.name, [])
        done = [r for r in recs if r.state() == T.Status.FINISHED]
        status = T.Status.FINISHED.value if done else (recs[0].state() if recs else T.Status.MISSING.value)
        row = Row(srow.name, {**descriptors.get(srow.name, {}), "label": srow.label or srow.name}, status, len(done),
                  paper=paper.get(srow.name, {}), run_ids=[r.run_id for r in recs])
        for key in present:
            vals = [r.metrics[key] for r in done if key in r.metrics]
            if vals:
                row.values[key] = (float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals))
                row.per_seed[key] = {r.seed: r.metrics[key] for r in done if key in r.metrics}
        rows.append(row)
    _speedups(rows)
    columns: list[Column] = []
    for m in metric_keys:
        spec = REGISTRY[m]
        names = spec.names
        backends = [b for b, name in names.items() if name in present or (m == "speedup" and any("speedup" in r.values for r in rows))]
        if not backends:  # nothing measured yet: still show the column, under the profile's default backend
            backends = [b for b in names if b in ("", _default_backend(records, profile))][:1] or [next(iter(names))]
        for b in backends:
            columns.append(Column(names[b], spec.labels[b], spec.lower, spec.decimals, b, family=m, extra=spec.auto))
        if spec.paper and any(spec.paper in r.paper for r in rows):
            columns.append(Column(PAPER + spec.paper, f"paper {spec.label('inception')}".strip(), spec.lower,
                                  spec.decimals, "inception" if "inception" in names else "", family=m))
    return Table(study.name, profile, getattr(study, "table", ""), columns, list(study.columns), rows,
                 _provenance(study, profile, records), data=sorted({r.data for r in records if r.data}, key=str))


def _default_backend(records, profile) -> str:
    return "inception" if profile == "paper" else "vgg16"


def _speedups(rows: list[Row]) -> None:
    """speed relative to the 0 % row at the same f (Fig. 6b's speed improvement over VQGAN): a table
    with VQGAN at f = 32 and f = 16 compares the f = 16 masks with the f = 16 VQGAN."""
    key = "speed_images_per_s"
    bases = {}
    for r in rows:
        if r.descriptors.get("mask_ratio", "").startswith("0 ") and key in r.values:
            bases.setdefault(r.descriptors.get("f"), r.values[key][0])
    for r in rows:
        b = bases.get(r.descriptors.get("f"))
        if b and key in r.values:
            mean, std, n = r.values[key]
            r.values["speedup"] = (mean / b, std / b, n)


def _provenance(study, profile: str, records: list[RowRecord]) -> dict:
    def tag_set(*keys):
        return sorted({str(v) for r in records for k in keys if (v := r.eval_tags.get(k))})

    ends = [r.end_time for r in records if r.end_time and r.state() == T.Status.FINISHED]
    import datetime as dt

    date = dt.datetime.fromtimestamp(max(ends) / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if ends else "no results"
    backends = {}
    for r in records:
        for name, facts in T.eval_facts(r.eval_tags).items():
            for fact in ("backend", "num", "sampling_choice"):
                if fact in facts:
                    backends.setdefault(name, {}).setdefault(fact, set()).add(facts[fact])
    return {"study": study.name, "table": getattr(study, "table", ""), "profile": profile,
            "runs": {r.row + (f"/s{r.seed}" if len(study.seeds) > 1 else ""): r.run_id for r in records},
            "git_commit": sorted({r.git_commit for r in records if r.git_commit}),
            "data": sorted({str(r.data) for r in records if r.data}),
            "device": tag_set(T.EVAL_DEVICE), "torch": tag_set(T.EVAL_TORCH), "threads": tag_set(T.TORCH_THREADS, T.EVAL_THREADS),
            "metrics": {k: {kk: sorted(vv) for kk, vv in v.items()} for k, v in sorted(backends.items())},
            "date": date}

def select_columns(table: Table, names: list[str] | None = None) -> Table:
    """The table with the chosen metric columns, in the order given. A name is a metric of the study
    (rfid, fid, usage, ...: every backend's column of it) or a column key (fd_vgg16, usage_effective,
    ...); a paper column follows its metric."""
    ours = [c for c in table.columns if not c.is_paper]
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
        paper = next((p for p in table.columns if p.is_paper and p.family == c.family), None)
        if paper is not None and paper not in columns and c is next(k for k in keep if k.family == c.family):
            columns.append(paper)
    return replace(table, columns=columns)
