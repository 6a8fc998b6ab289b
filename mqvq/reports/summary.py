"""A study's summary in MLflow, so the ablation shows in the UI at a glance: one run per study and
profile (tag mqvq.kind = summary, drawn anew each time, the previous one deleted) whose description is the report's Markdown table, with the table
as an MLflow table artifact (rows x columns, as printed) and the report in Markdown, LaTeX and JSON
plus its figures as artifacts. The study's experiment gets a saved runs view with its metric
columns, which `mqvq ui STUDY` opens."""
from __future__ import annotations

import tempfile
from pathlib import Path

from mqvq.reports.report import make_table, write_figures
from mqvq.reports.tables import (Table, _caption, _cell, _markdown_grid, _paper_of, fit_one_column, select_columns, to_json, to_latex,
                                 to_markdown)
from mqvq.studies.plan import study_experiment
from mqvq.tracking.store import Tracker

VIEW_KEY = "mqvq"


def publish_summary(tracker: Tracker, name: str, profile: str, figures: bool = True) -> str:
    """Create or refresh the study's summary run; returns its id."""
    table, study, meta = make_table(tracker, name, profile)
    experiment = study_experiment(name, profile)
    older = tracker.find_runs(experiment, "tags.\"mqvq.kind\" = 'summary'")
    tags = {"mqvq.kind": "summary", "mqvq.study": name, "mqvq.profile": profile, "mqvq.table": study.table,
            "mqvq.rows_finished": sum(r.status == "finished" for r in table.rows), "mqvq.rows": len(table.rows)}
    run_id = tracker.start_run(experiment, f"summary: {name} ({profile})", tags)
    markdown = to_markdown(table)
    head, rows = glance(table)
    note = (f"**{_caption(table, 'the paper’s numbers (in parentheses) are')}**\n\n{_markdown_grid(head, rows)}\n\n"
            "†: the row ranks differently from the paper in that column. The whole table with its provenance: artifact `summary/"
            f"{name}.md` (also `.tex`, `.json` and `figures/`), or `mqvq report {name} --profile {profile}`.")
    tracker.set_tags(run_id, {"mlflow.note.content": note, "mqvq.status": "finished"})
    tracker.client.log_table(run_id, {h: [r[i] for r in rows] for i, h in enumerate(head)}, "summary/table.json")
    fitted, left_out = fit_one_column(select_columns(table))
    with tempfile.TemporaryDirectory() as tmp:
        for suffix, text in (("md", markdown), ("tex", to_latex(fitted, left_out=left_out)), ("json", to_json(table))):
            path = Path(tmp) / f"{name}.{suffix}"
            path.write_text(text)
            tracker.log_artifact(run_id, path, "summary")
        if figures:
            for fig in write_figures(tracker, table, study, meta, Path(tmp) / "figures"):
                tracker.log_artifact(run_id, fig, "summary/figures")
    tracker.client.set_terminated(run_id, "FINISHED")
    for run in older:  # one summary per study and profile: the new one replaces them (MLflow keeps them as deleted)
        tracker.client.delete_run(run.info.run_id)
    columns = [f"metrics.`{c.key}`" for c in table.columns if not c.key.startswith("paper:") and not c.extra
               and any(c.key in r.values for r in table.rows)]
    tracker.save_runs_view(tracker.experiment_id(experiment), VIEW_KEY, columns)
    return run_id


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
