"""`mqvq report`: read a study's row runs from MLflow, build the table, render, check, draw figures."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from mqvq.errors import UserError
from mqvq.files import atomic_write
from mqvq.metrics.registry import TRAIN_LOSS, VAL_LOSS
from mqvq.paper import paper_values
from mqvq.reports.checks import check_claims
from mqvq.reports.latex import COLUMN_PT, fit_one_column, table_width, to_latex
from mqvq.reports.render import RENDERERS, to_markdown
from mqvq.reports.tables import PAPER_LAYOUTS, Table, build_table, describe, select_columns
from mqvq.studies.plan import study_experiment
from mqvq.studies.spec import StudyConfig, load_study, row_config
from mqvq.tracking import tags as T
from mqvq.tracking.records import RowRecord
from mqvq.tracking.location import ensure_writable
from mqvq.tracking.store import Tracker

FORMATS = {".md": "md", ".tex": "latex", ".csv": "csv", ".json": "json"}


def collect(tracker: Tracker, study: StudyConfig, profile: str) -> list[RowRecord]:
    """One record per row run (row x seed) of the study at `profile`."""
    name = study_experiment(study.name, profile)
    runs = tracker.find_runs(name, T.where(kind=T.Kind.ROW), order_by=["attributes.start_time ASC"]) if tracker.has_experiment(name) else []
    if not runs:
        raise UserError(f"study {study.name} has no runs at profile {profile} yet: run `mqvq study run {study.name} --profile {profile}` first.")
    return [RowRecord.of(r) for r in runs]


def row_meta(study: StudyConfig, profile: str) -> tuple[dict, dict, dict]:
    """Per row: table descriptors (the paper's f), the facts --check needs, and the paper's values."""
    from mqvq.experiments import PROFILES

    descriptors, meta, paper = {}, {}, {}
    for row in study.rows:
        cfg = row_config(row, profile, (row.seeds or study.seeds)[0])
        d = describe(cfg)
        f_paper = cfg.stage1.model.downsample * PROFILES[profile].downsample_divisor
        d["f"] = str(f_paper)
        descriptors[row.name] = d
        m = cfg.stage1.model
        d1 = cfg.stage1.data
        meta[row.name] = {"mask_type": m.mask.type, "ratio": m.mask.ratio, "f": f_paper, "demask": m.demask.type,
                          "selector": m.mask.selector, "scorer": m.mask.scorer,
                          # rows compare only on the same data, trained as long
                          "data": f"{d1.name}/{d1.style}/{d1.fit}/{d1.resolution}/{d1.placement}/{d1.holdout}/{cfg.stage1.train.steps}"}
        paper[row.name] = paper_values(study.table, row.experiment, row.paper)
    return descriptors, meta, paper


def make_table(tracker: Tracker, name: str | StudyConfig, profile: str) -> tuple[Table, StudyConfig, dict]:
    """`name`: a study's name or .toml path, or the study already loaded (a path's study is not found by its name)."""
    study = load_study(name) if isinstance(name, str) else name
    records = collect(tracker, study, profile)
    descriptors, meta, paper = row_meta(study, profile)
    return build_table(study, profile, records, descriptors, paper), study, meta


def write_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), hint="; choose a writable --out")


def report(tracker: Tracker, name: str, profile: str, fmt: str | None = None, out: Path | None = None,
           check: bool = False, figures: bool = True, columns: list[str] | None = None, paper: str | None = None,
           wide: bool = False) -> dict:
    """Render the study's table (and with `check` the claim verdicts); write `out` and its figures.
    `columns`: the metric columns to show (default: all; in LaTeX, those that fit one column of a
    two-column paper unless `wide`); `paper`: where the paper's numbers go (columns, line or none;
    default line in LaTeX, columns in Markdown)."""
    if out is not None and fmt is None:
        fmt = FORMATS.get(out.suffix.lower())
        if fmt is None:
            raise UserError(f"cannot tell the format of {out}: use a .md, .tex, .csv or .json file or pass --format.")
    fmt = fmt or "md"
    if fmt not in RENDERERS:
        raise UserError(f"--format {fmt!r} is invalid: use md, latex, csv or json.")
    if paper is not None and paper not in PAPER_LAYOUTS:
        raise UserError(f"--paper {paper!r} is invalid: use {', '.join(PAPER_LAYOUTS)}.")
    if wide and fmt != "latex":
        raise UserError("--wide sets a LaTeX table across both columns: use it with --format latex or a .tex --out.")
    if out is not None:  # check the destination before reading anything
        ensure_writable(out.parent.resolve(), "--out")
    table, study, meta = make_table(tracker, name, profile)
    text, note = render(table, fmt, columns, paper, wide)
    verdicts = check_claims(table, meta) if check else []
    if verdicts and fmt == "md":
        text += "\n" + render_verdicts(verdicts)
    elif verdicts and fmt == "json":
        text = json.dumps(json.loads(text) | {"check": verdicts_json(verdicts)}, indent=2) + "\n"
    elif verdicts and fmt == "latex":
        text += "".join(f"% check: {line}\n" for line in render_verdicts(verdicts, markdown=False).splitlines() if line.strip())
    result = {"table": table, "text": text, "verdicts": verdicts, "figures": [], "note": note}
    if out is not None:
        write_atomic(out, text)
        if figures:
            result["figures"] = write_figures(tracker, table, study, meta, out.parent / f"{out.stem}-figures")
    return result


def render(table: Table, fmt: str, columns: list[str] | None = None, paper: str | None = None,
           wide: bool = False) -> tuple[str, str | None]:
    """The table as text in `fmt`, and a note for the terminal when LaTeX left columns out to fit one
    column or is wider than one (see `report`)."""
    shown, left_out, note = select_columns(table, columns), [], None
    if fmt == "latex":
        paper = paper or "line"
        if not columns and not wide:
            shown, left_out = fit_one_column(shown, paper)
        if not wide and (w := table_width(shown, paper)) > COLUMN_PT:  # chosen columns, or the paper's alone are too many
            note = f"the table is about {w:.0f} pt wide, wider than one column ({COLUMN_PT:.0f} pt): pass --wide for a table*."
        elif left_out:
            note = f"left out {', '.join(left_out)} to fit one column: --wide or --columns to include them."
        return to_latex(shown, paper, wide, left_out), note
    if fmt == "md":
        return to_markdown(shown, paper or "columns"), note
    return RENDERERS[fmt](shown), note


MARKS = {"holds": "✓", "fails": "✗", "not significant": "≈", "not assessable": "?"}
CHECK_METHOD = "Welch's t-test over seeds, two-sided, p < 0.05"


def render_verdicts(verdicts, markdown: bool = True) -> str:
    """Markdown: one line per claim (mark, verdict, claim, why) with its comparisons under it; else
    the short form a terminal shows: a count, then one line per claim."""
    if not markdown:
        counts = ", ".join(f"{sum(v.status == s for v in verdicts)} {s}" for s in MARKS if any(v.status == s for v in verdicts))
        width = max((len(v.status) for v in verdicts), default=0)
        return "\n".join([f"reproduction check ({CHECK_METHOD}): {counts or 'no claims for this study'}"]
                         + [f"  {MARKS[v.status]} {v.status:<{width}}  {v.claim}: {v.significance}" for v in verdicts]) + "\n"
    lines = [f"**Reproduction check** ({CHECK_METHOD})", ""]
    for v in verdicts:
        lines.append(f"- {MARKS[v.status]} **{v.status}**: {v.claim}: {v.significance}")
        lines += [f"  - {e}" for e in v.evidence]
    return "\n".join(lines) + "\n"


def verdicts_json(verdicts) -> list[dict]:
    return [{"claim": v.claim, "status": v.status, "evidence": v.evidence, "significance": v.significance} for v in verdicts]


# --------------------------------------------------------------------------- figures
def write_figures(tracker: Tracker, table: Table, study: StudyConfig, meta: dict, folder: Path) -> list[str]:
    """Fig. 4 mask grids, each row's reconstructions and samples, Fig. 5 codebook PCA (VQGAN vs MQ-VAE
    at the same f), Fig. 6a loss curves, Fig. 6b speed vs FID."""
    from mqvq import figures as F

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    stage_runs = {r.name: _stage_runs(tracker, r) for r in table.rows if r.status == "finished" and r.run_ids}
    # Fig. 4 and where the mask keeps tokens over the test split, from the masked rows' stage-1 evaluation
    for row, runs in stage_runs.items():
        if meta[row]["mask_type"] == "none" or not runs.get("stage1"):
            continue
        for artifact, name in (("figures/fig4_mask.png", f"fig4-mask-{row}.png"), ("figures/keep_frequency.png", f"keep-frequency-{row}.png")):
            src = _artifact(tracker, runs["stage1"], artifact)
            if src:
                shutil.copy(src, folder / name)
                written.append(str(folder / name))
    fig = _keep_overview(tracker, table, meta, study)
    if fig is not None:
        written.append(_save(fig, folder / "keep-frequency-overview.png"))
    # each row's test-split reconstructions and samples, as its evaluation drew them
    for row, runs in stage_runs.items():
        for stage, artifact, name in (("stage1", "figures/reconstructions_test.png", f"reconstructions-{row}.png"),
                                      ("stage2", "figures/samples_eval.png", f"samples-{row}.png")):
            src = _artifact(tracker, runs[stage], artifact) if runs.get(stage) else None
            if src:
                shutil.copy(src, folder / name)
                written.append(str(folder / name))
    # Table 6 as curves: each mask's usage (and Fréchet distances) over the ratio, when several masks sweep it
    fig = _ratio_curves(table, meta, study)
    if fig is not None:
        written.append(_save(fig, folder / "mask-ratio-curves.png"))
    # foreground share over training, every seed of every masked row
    fig = _mask_curves(tracker, table, meta, study)
    if fig is not None:
        written.append(_save(fig, folder / "mask-foreground-curves.png"))
    # Fig. 5: like with like, VQGAN and MQ-VAE at the same f (the first adaptive row that has such a VQGAN)
    trained = [r for r in stage_runs if stage_runs[r].get("stage1")]
    pair = next(([base, r] for r in trained if meta[r]["mask_type"] == "adaptive"
                 for base in trained if meta[base]["mask_type"] == "none" and meta[base]["f"] == meta[r]["f"]), None)
    if pair:
        fig = _pca_pair(tracker, [(p, stage_runs[p]["stage1"]) for p in pair], table, meta)
        if fig is not None:
            written.append(_save(fig, folder / "fig5-codebook-pca.png"))
    # Fig. 6a: stage-2 validation curves
    curves, kinds = {}, {}
    for row, runs in stage_runs.items():
        if runs.get("stage2"):
            label = next(r.descriptors["label"] for r in table.rows if r.name == row)
            for key, kind in ((VAL_LOSS, "validation"), (TRAIN_LOSS, "train")):
                hist = tracker.metric_history(runs["stage2"], key)
                if hist:
                    curves.setdefault(label, {})[kind] = ([m.step for m in hist], [m.value for m in hist])
            kinds[label] = tracker.get_run(runs["stage2"]).data.params.get("stage2.model.kind", "")
    if curves:
        fig = F.loss_curves_figure(curves, kinds, f"Fig. 6a: {study.name} ({table.profile}), stage-2 loss")
        written.append(_save(fig, folder / "fig6a-loss-curves.png"))
    # Fig. 6b: speed against the Fréchet distance
    fd_key = next((c.key for c in table.columns if c.family == "fid"), None)
    points = [(r.descriptors["label"], r.values["speed_images_per_s"][0], r.values[fd_key][0]) for r in table.rows
              if fd_key and "speed_images_per_s" in r.values and fd_key in r.values]
    if len(points) >= 2:
        written.append(_save(F.speed_fid_figure(points, "FID" if fd_key == "fid" else "FD-VGG16"), folder / "fig6b-speed-vs-fid.png"))
    return written


def _ratio_curves(table: Table, meta: dict, study: StudyConfig):
    """Per mask (the paper's MLP, each other selector, random) a line over the mask ratio, starting at
    VQGAN of the same f, for usage, the foreground share and the Fréchet distances; None unless at
    least two masks each sweep two ratios or more."""
    from mqvq import figures as F
    from mqvq.reports.checks import GROUP_NAMES

    def mask(m):
        return "random" if m["mask_type"] == "random" else GROUP_NAMES.get(m.get("selector", "gain"), m.get("selector"))

    done = [r for r in table.rows if r.status == "finished"]
    masked = [r for r in done if meta[r.name]["mask_type"] != "none"]
    ratios: dict[str, set] = {}
    for r in masked:
        ratios.setdefault(mask(meta[r.name]), set()).add(meta[r.name]["ratio"])
    sweeps = [k for k, v in ratios.items() if len(v) >= 2]
    if len(sweeps) < 2:
        return None
    f = meta[masked[0].name]["f"]
    base = next((r for r in done if meta[r.name]["mask_type"] == "none" and meta[r.name]["f"] == f), None)
    panels = {}
    for col in [c for c in table.columns if not c.is_paper and c.family in ("usage", "usage_effective", "mask", "rfid", "fid")]:
        lines = {}
        for name in sweeps:
            pts = [(meta[r.name]["ratio"], r.values[col.key][0], r.values[col.key][1]) for r in masked
                   if mask(meta[r.name]) == name and meta[r.name]["f"] == f and col.key in r.values]
            if base is not None and col.key in base.values and col.family != "mask":
                pts.append((0.0, base.values[col.key][0], base.values[col.key][1]))
            if len(pts) >= 2:
                lines[name] = pts
        if lines:
            arrow = "" if col.lower is None else (" (lower is better)" if col.lower else " (higher is better)")
            panels[col.label + arrow] = lines
    if not panels:
        return None
    return F.ratio_curves_figure(panels, f"{study.name} ({table.profile}): each mask over the ratio, mean ± std over seeds"
                                         + (f"; 0 %: VQGAN, f = {f}" if base is not None else ""))


def _mask_curves(tracker: Tracker, table: Table, meta: dict, study: StudyConfig):
    from mqvq import figures as F

    curves, fractions = {}, {}
    for row in table.rows:
        if row.status != "finished" or meta[row.name]["mask_type"] == "none":
            continue
        runs, row_fractions = [], []
        for rid in row.run_ids:
            s1 = RowRecord.of(tracker.get_run(rid)).stage1_run
            hist = tracker.metric_history(s1, "val/mask_fg_precision") if s1 else []
            if len(hist) > 1:  # one point per step (`metric_history`)
                runs.append(([m.step for m in hist], [m.value for m in hist]))
                frac = tracker.metric_history(s1, "val/fg_token_fraction")
                row_fractions += [m.value for m in frac[-1:]]
        if runs:
            label = row.descriptors.get("label", row.name)
            curves[label] = runs
            if row_fractions:  # per row: resizing 28 -> 32 changes how much of the grid is garment
                fractions[label] = sum(row_fractions) / len(row_fractions)
    if not curves:
        return None
    return F.mask_curves_figure(curves, fractions,
                                f"{study.name} ({table.profile}): share of kept tokens on the foreground during training")


def _keep_overview(tracker: Tracker, table: Table, meta: dict, study: StudyConfig):
    """Per data set, the foreground frequency per position beside every masked row's keep frequency,
    both averaged over the row's finished seeds (the `metrics/keep_frequency.json` its evaluation
    logged). None for a study with a single masked row per data set (each row's own map is enough)."""
    import numpy as np

    from mqvq import figures as F

    beds: dict[str, list] = {}
    fg_maps: dict[str, list] = {}
    for row in table.rows:
        if meta[row.name]["mask_type"] == "none" or row.status != "finished":
            continue
        keeps = []
        for run_id in row.run_ids:
            rec = RowRecord.of(tracker.get_run(run_id))
            src = _artifact(tracker, rec.stage1_run, "metrics/keep_frequency.json") if rec.stage1_run and rec.state() == T.Status.FINISHED.value else None
            if src:
                data = json.loads(Path(src).read_text())
                keeps.append(np.asarray(data["keep"]))
                if data.get("foreground") is not None:
                    fg_maps.setdefault(meta[row.name]["data"], []).append(np.asarray(data["foreground"]))
        if keeps:
            label = row.descriptors.get("label", row.name)
            bed, _, selector = label.rpartition(": ")
            beds.setdefault(meta[row.name]["data"], []).append((selector or label, np.mean(keeps, 0), bed or label))
    if not beds or max(len(v) for v in beds.values()) < 2:
        return None
    panels = {}
    for data, rows in beds.items():
        name = rows[0][2]
        first = [("foreground frequency", np.mean(fg_maps[data], 0))] if data in fg_maps else []
        panels[name] = first + [(sel, m) for sel, m, _ in rows]
    return F.keep_frequency_overview(panels, f"{study.name} ({table.profile}): where each mask keeps tokens, mean over seeds")


def _stage_runs(tracker: Tracker, row) -> dict:
    rec = RowRecord.of(tracker.get_run(row.run_ids[0]))
    return {"stage1": rec.stage1_run, "stage2": rec.stage2_run}


def _artifact(tracker: Tracker, run_id: str, path: str) -> str | None:
    try:
        return str(tracker.download_artifact(run_id, path, Path(tempfile.mkdtemp())))
    except Exception:  # the run was not evaluated with figures
        return None


def _pca_pair(tracker: Tracker, rows: list[tuple[str, str]], table: Table, meta: dict):
    """Fig. 5 side by side; None when a row has neither its projected codebook nor its checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from mqvq.figures import codebook_pca, scatter_codebook

    panels = []
    for row, run_id in rows:
        pca_path = _artifact(tracker, run_id, "metrics/codebook_pca.json")
        if pca_path:
            xy = np.asarray(json.loads(Path(pca_path).read_text())["pc"])
        else:  # runs evaluated before the projection was logged: project from the checkpoint
            from mqvq.models.mqvae import MQVAE
            from mqvq.stages.lookup import model_file

            try:
                xy = codebook_pca(MQVAE.from_checkpoint(model_file(tracker, run_id)).quantizer.embed)
            except UserError:
                return None
        counts_path = _artifact(tracker, run_id, "metrics/codebook_counts.json")
        used = (torch.tensor(json.loads(Path(counts_path).read_text())["counts"]) > 0).numpy() if counts_path else None
        panels.append((row, xy, used))
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), dpi=120)
    for ax, (row, xy, used) in zip(axes, panels):
        scatter_codebook(ax, xy, used, size=5, legend=False)
        label = next(r.descriptors["label"] for r in table.rows if r.name == row)
        label += "" if "f =" in label else f", f = {meta[row]['f']}"
        ax.set_title(f"{label}" + (f"\n{used.sum()} of {len(used)} codes used on the test split" if used is not None else ""), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Fig. 5: codebook embeddings on their first two principal components ({table.study}, {table.profile})", fontsize=9)
    fig.tight_layout()
    return fig


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path)
    plt.close(fig)
    return str(path)
