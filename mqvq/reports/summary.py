"""A study's summary in MLflow, so the ablation shows in the UI at a glance: one run per study and
profile (kind summary, drawn anew each time, the previous one deleted) whose description
is the table at a glance, with that table as an MLflow table artifact and the report in Markdown,
LaTeX and JSON plus its figures as artifacts. The study's experiment gets a saved runs view with
its metric columns, which `mqvq ui STUDY` opens."""
from __future__ import annotations

import tempfile
from pathlib import Path

from mqvq.reports.report import make_table, render, write_figures
from mqvq.reports.render import glance, to_glance
from mqvq.studies.plan import study_experiment
from mqvq.studies.spec import StudyConfig
from mqvq.tracking import tags as T
from mqvq.tracking.store import Tracker

VIEW_KEY = "mqvq"


def publish_summary(tracker: Tracker, study: str | StudyConfig, profile: str, figures: bool = True) -> str:
    """Create or refresh the study's summary run (`study`: its name, .toml path or loaded config); returns its id."""
    table, study, meta = make_table(tracker, study, profile)
    name = study.name
    experiment = study_experiment(name, profile)
    older = tracker.find_runs(experiment, T.where(kind=T.Kind.SUMMARY))
    tags = {T.KIND: T.Kind.SUMMARY.value, T.STUDY: name, T.PROFILE: profile, T.TABLE: study.table,
            T.ROWS_FINISHED: sum(r.status == "finished" for r in table.rows), T.ROWS: len(table.rows)}
    run_id = tracker.start_run(experiment, f"summary: {name} ({profile})", tags)
    note = (f"{to_glance(table)}\n\nThe whole table with its provenance: artifact `summary/{name}.md` (also `.tex`, "
            f"`.json` and `figures/`), or `mqvq report {name} --profile {profile}`.")
    tracker.set_tags(run_id, {T.MLFLOW_NOTE: note})
    head, rows = glance(table)
    tracker.log_table(run_id, {h: [r[i] for r in rows] for i, h in enumerate(head)}, "summary/table.json")
    with tempfile.TemporaryDirectory() as tmp:
        for suffix, fmt in (("md", "md"), ("tex", "latex"), ("json", "json")):
            path = Path(tmp) / f"{name}.{suffix}"
            path.write_text(render(table, fmt)[0])
            tracker.log_artifact(run_id, path, "summary")
        if figures:
            for fig in write_figures(tracker, table, study, meta, Path(tmp) / "figures"):
                tracker.log_artifact(run_id, fig, "summary/figures")
    tracker.end_run(run_id, "FINISHED")
    for run in older:  # one summary per study and profile: the new one replaces them (MLflow keeps them as deleted)
        tracker.delete_run(run.info.run_id)
    columns = [f"metrics.`{c.key}`" for c in table.columns if not c.is_paper and not c.extra
               and any(c.key in r.values for r in table.rows)]
    tracker.save_runs_view(tracker.experiment_id(experiment), VIEW_KEY, columns)
    return run_id

