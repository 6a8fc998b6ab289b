"""Reports: paper-layout tables byte-identical to stored files, honest rendering, LaTeX that compiles, --check."""

import copy
import json
from types import SimpleNamespace
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mqvq.cli import app
from mqvq.reports.checks import check_claims
from mqvq.reports.report import row_meta
from mqvq.reports.latex import to_latex
from mqvq.reports.render import to_csv, to_json, to_markdown
from mqvq.reports.tables import build_table
from mqvq.studies.spec import load_study
from mqvq.tracking.records import RowRecord

FIX = Path(__file__).parent / "fixtures" / "report"
runner = CliRunner()


def _table(records=None, study="ablation-mask"):
    s = load_study(study)
    recs = (
        records
        if records is not None
        else [stored(r) for r in json.loads((FIX / "ablation-mask-runs.json").read_text())]
    )
    d, meta, paper = row_meta(s, "smoke")
    return build_table(s, "smoke", recs, d, paper), meta


def test_table_is_byte_identical_to_the_stored_markdown_and_latex():
    table, _ = _table()
    assert to_markdown(table) == (FIX / "ablation-mask.md").read_text()
    assert to_latex(table) == (FIX / "ablation-mask.tex").read_text()


def test_rendering_is_honest():
    table, _ = _table()
    md = to_markdown(table)
    lines = {
        line.split("|")[1].strip() + line.split("|")[3].strip(): line
        for line in md.splitlines()
        if line.startswith("| ") and "%" in line.split("|")[1]
    }
    assert lines["75 %random"].count("missing") == 6  # the row that never ran stays in the table
    assert lines["75 %adaptive"].count("failed") == 6
    assert "±" not in lines["10 %adaptive"] and lines["10 %adaptive"].rstrip(" |").endswith("1")  # one seed: no spread
    assert "±" in lines["25 %adaptive"]
    # mixed backends: Inception numbers only under FID, VGG16 numbers only under FD-VGG16, each labelled
    header = md.splitlines()[2]
    assert "| FID↓" in header and "| FD-VGG16↓" in header and "| rFID↓" in header
    cols = [c.strip() for c in header.split("|")]
    fid, fd = cols.index("FID↓"), cols.index("FD-VGG16↓")
    adaptive = [c.strip() for c in lines["25 %adaptive"].split("|")]
    assert adaptive[fid] == "n/a" and adaptive[fd].startswith("**8.07")
    assert "FD-VGG16 (VGG16 features, not FID)" in md and "FID (Inception-v3 features)" in md
    assert "8.54 ± 0.10†" in md  # ranks above the 50 % adaptive row, unlike the paper
    assert (
        json.loads(to_json(table))["rows"][8]["status"] == "missing"
        and "rfd_vgg16_std" in to_csv(table).splitlines()[0]
    )


def test_latex_compiles(tmp_path):
    table, _ = _table()
    tex = to_latex(table)
    assert tex.count(r"\toprule") == tex.count(r"\midrule") == tex.count(r"\bottomrule") == 1
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    ncols = tex.split(r"\begin{tabular}{@{}")[1].split("@{}}")[0]
    assert len(body) == 18 and all(
        line.count(" & ") == len(ncols) - 1 for line in body
    )  # 9 rows, each with the paper's line
    assert all(r"{\scriptsize(" in line for line in body[1::2]) and r"{\scriptsize(" not in "".join(body[::2])
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (CI installs texlive); structure checked above")
    (tmp_path / "table.tex").write_text(tex)
    (tmp_path / "doc.tex").write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage[T1]{fontenc}\n"
        "\\begin{document}\n\\input{table.tex}\n\\end{document}\n"
    )
    p = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000


def stored(d: dict) -> RowRecord:
    """A fixture row run (tags and metrics as MLflow stores them) read as `collect` reads a store."""
    run = SimpleNamespace(
        data=SimpleNamespace(tags=d["tags"], metrics=d["metrics"]),
        info=SimpleNamespace(run_id=d["run_id"], start_time=None, end_time=d["end_time"]),
    )
    return RowRecord.of(run)


def finished_record(row: str, seed: int, metrics: dict, run_id: str) -> RowRecord:
    return RowRecord(
        study="t",
        row=row,
        seed=seed,
        profile="smoke",
        experiment=row,
        label=row,
        table="",
        config_hash="",
        run_id=run_id,
        status="finished",
        metrics=metrics,
        end_time=1_700_000_000_000,
    )


def _records(rows: dict[str, dict[str, list[float]]]):
    out = []
    for i, (row, metrics) in enumerate(rows.items()):
        n = len(next(iter(metrics.values())))
        for s in range(n):
            out.append(finished_record(row, s, {k: v[s] for k, v in metrics.items()}, f"{i}{s}"))
    return out


HOLDS = {
    "vqgan-f16": {"rfd_vgg16": [5.0, 5.1, 4.9], "fd_vgg16": [12.0, 12.2, 11.9], "usage": [60.0, 61.0, 60.5]},
    "adaptive-10": {"rfd_vgg16": [5.1, 5.2, 5.0], "fd_vgg16": [8.0, 8.1, 7.9], "usage": [70.0, 70.5, 69.5]},
    "adaptive-25": {"rfd_vgg16": [5.3, 5.2, 5.4], "fd_vgg16": [7.8, 7.7, 7.9], "usage": [78.0, 78.2, 77.9]},
    "random-25": {"rfd_vgg16": [6.5, 6.6, 6.4], "fd_vgg16": [12.5, 12.4, 12.6], "usage": [66.0, 66.3, 66.1]},
    "adaptive-50": {"rfd_vgg16": [5.5, 5.6, 5.4], "fd_vgg16": [8.4, 8.5, 8.3], "usage": [84.0, 84.1, 83.9]},
    "random-50": {"rfd_vgg16": [8.0, 8.1, 7.9], "fd_vgg16": [15.5, 15.6, 15.4], "usage": [69.0, 69.1, 68.9]},
}


def test_check_verdicts_when_claims_hold_and_when_they_fail():
    table, meta = _table(_records(HOLDS))
    v = {x.claim.split(" (")[0]: x for x in check_claims(table, meta)}
    assert v["adaptive beats random at every mask ratio"].status == "holds"
    assert v["adaptive beats random at every mask ratio"].significance == "p <= 0.00012 in 4 comparisons"
    assert "rFD-VGG16 and FD-VGG16" in next(
        x.claim for x in check_claims(table, meta) if x.claim.startswith("adaptive")
    )
    assert v["codebook usage rises with the adaptive mask ratio, VQGAN lowest"].status == "holds"
    assert v["10-25 % adaptive mask improves generation over 0 %"].status == "holds"
    fails = copy.deepcopy(HOLDS)
    fails["random-50"]["fd_vgg16"] = [8.0, 8.1, 8.2]  # random beats adaptive at 50 %
    fails["adaptive-25"]["usage"] = [65.0, 65.1, 64.9]  # usage dips
    fails["adaptive-10"]["fd_vgg16"] = [12.5, 12.6, 12.4]  # 10 % is worse than 0 %
    fails["random-25"] = {k: [v[0]] for k, v in fails["random-25"].items()}  # one seed: not assessable
    table, meta = _table(_records(fails))
    v = {x.claim.split(" (")[0]: x for x in check_claims(table, meta)}
    assert v["adaptive beats random at every mask ratio"].status == "fails"
    assert any("the other way" in e and "50%" in e for e in v["adaptive beats random at every mask ratio"].evidence)
    # one row has one seed, and yet the claim fails: a significant reversal elsewhere, which is what it says
    assert v["adaptive beats random at every mask ratio"].significance.startswith(
        "FD-VGG16 at 50% goes the other way (p = "
    )
    assert v["codebook usage rises with the adaptive mask ratio, VQGAN lowest"].status == "fails"
    assert v["10-25 % adaptive mask improves generation over 0 %"].status == "fails"


def _fg(adaptive: list[float], random: list[float], ratio: str = "50"):
    rows = {f"adaptive-{ratio}": {"mask_fg_precision": adaptive}, f"random-{ratio}": {"mask_fg_precision": random}}
    table, meta = _table(_records(rows))
    return next(x for x in check_claims(table, meta) if x.claim.startswith("the adaptive mask keeps the foreground"))


def test_foreground_claim_holds_fails_or_is_not_significant_over_seeds():
    assert _fg([0.62, 0.60, 0.64], [0.40, 0.39, 0.41]).status == "holds"
    v = _fg([0.13, 0.20, 0.28], [0.40, 0.39, 0.41])  # the MLP scorer's background preference
    assert v.status == "fails" and "the other way" in v.evidence[0]
    v = _fg([0.46, 0.70, 0.30], [0.40, 0.39, 0.41])  # higher on average, but the seeds spread too much
    assert v.status == "not significant" and "as the paper" in v.evidence[0]
    assert _fg([0.62], [0.40]).status == "not assessable"  # one seed: never a verdict on means alone
    assert _fg([0.62], [0.40]).significance.endswith(
        "(run the study with --seeds 0 --seeds 1 --seeds 2)"
    )  # as the CLI takes them
    assert _fg([0.62, 0.60], [0.40, 0.41], ratio="25").status == "holds"


def test_check_exits_1_when_a_claim_fails_and_strict_when_any_does_not_hold(home, monkeypatch):
    from mqvq.reports.checks import Verdict

    def fake(*args, verdicts, **kwargs):
        return {"text": "t\n", "verdicts": verdicts, "figures": [], "note": None}

    for status, check, strict in (
        ("fails", 1, 1),
        ("not significant", 0, 1),
        ("not assessable", 0, 1),
        ("holds", 0, 0),
    ):
        monkeypatch.setattr(
            "mqvq.reports.report.report", lambda *a, s=status, **k: fake(*a, **k, verdicts=[Verdict("c", s)])
        )
        r = runner.invoke(app, ["report", "ablation-mask", "--check", "--home", str(home)])
        assert r.exit_code == check, (status, r.output)
        r = runner.invoke(app, ["report", "ablation-mask", "--check", "--strict", "--home", str(home)])
        assert r.exit_code == strict, (status, r.output)
    r = runner.invoke(app, ["report", "ablation-mask", "--strict", "--home", str(home)])
    assert r.exit_code == 2 and "--check" in r.output


def test_check_prints_one_short_line_per_claim():
    from mqvq.reports.report import render_verdicts

    fails = copy.deepcopy(HOLDS)
    fails["random-50"]["fd_vgg16"] = [8.0, 8.1, 8.2]
    table, meta = _table(_records(fails))
    verdicts = check_claims(table, meta)
    short = render_verdicts(verdicts, markdown=False).splitlines()
    assert short[0].startswith("reproduction check (Welch's t-test over seeds, two-sided, p < 0.05): ")
    assert len(short) == len(verdicts) + 1
    line = next(x for x in short if "adaptive beats random" in x)
    assert line.startswith("  ✗ fails") and line.endswith("FD-VGG16 at 50% goes the other way (p = 0.021)")
    assert not any(
        "fails (" in x or "not assessable (" in x for x in short
    )  # a verdict, then its reason: never two verdicts
    md = render_verdicts(verdicts)
    assert "- ✗ **fails**: adaptive beats random" in md and "  - FD-VGG16 at 50%:" in md


def test_check_demask_order_and_not_testable():
    demask = {
        "no-demask": {"rfd_vgg16": [7.0], "fd_vgg16": [10.7]},
        "sa": {"rfd_vgg16": [6.5], "fd_vgg16": [9.8]},
        "dcsa": {"rfd_vgg16": [5.8], "fd_vgg16": [8.9]},
        "dcsa-update": {"rfd_vgg16": [5.3], "fd_vgg16": [8.4]},
    }
    table, meta = _table(_records(demask), "ablation-demask")
    (v,) = [x for x in check_claims(table, meta) if x.claim.startswith("each de-mask")]
    assert v.status == "not assessable"  # one seed per row: the order alone is no evidence
    demask = {k: {m: [x - 0.1, x, x + 0.1] for m, (x,) in d.items()} for k, d in demask.items()}
    table, meta = _table(_records(demask), "ablation-demask")
    (v,) = [x for x in check_claims(table, meta) if x.claim.startswith("each de-mask")]
    assert v.status == "holds" and "rFD-VGG16 and FD-VGG16" in v.claim
    assert not any("usage" in x.claim for x in check_claims(table, meta))  # Table 7 makes no usage claim
    demask["sa"]["rfd_vgg16"] = [7.4, 7.5, 7.6]
    table, meta = _table(_records(demask), "ablation-demask")
    (v,) = [x for x in check_claims(table, meta) if x.claim.startswith("each de-mask")]
    assert v.status == "fails"
    table, meta = _table(_records({"vqgan-f16": {"usage": [60.0]}}))
    v = {x.claim.split(" (")[0]: x for x in check_claims(table, meta)}
    assert v["adaptive beats random at every mask ratio"].status == "not assessable"


@pytest.mark.integration
def test_report_from_a_real_study_writes_table_and_figures(tmp_path, home, tracker, monkeypatch):
    from tests.test_studies import write_study

    folder = write_study(
        tmp_path / "studies", "two", [("vqgan-f16", "vqgan-f16"), ("adaptive-50", "mqvae-f16-adaptive-50")]
    )
    monkeypatch.setenv("MQVQ_STUDIES", str(folder))
    r = runner.invoke(app, ["report", "two", "--home", str(home)])
    assert r.exit_code == 2 and "has no runs at profile smoke yet: run `mqvq study run two --profile smoke`" in r.output
    assert runner.invoke(app, ["study", "run", "two", "--no-progress", "--home", str(home)]).exit_code == 0
    out = tmp_path / "out" / "two.md"
    r = runner.invoke(app, ["report", "two", "--out", str(out), "--check", "--home", str(home)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "| FD-VGG16↓" in text and "Provenance" in text and "Reproduction check" in text
    figs = {p.name for p in (tmp_path / "out" / "two-figures").iterdir()}
    assert {"fig4-mask-adaptive-50.png", "fig5-codebook-pca.png", "fig6a-loss-curves.png"} <= figs
    assert all(p.stat().st_size > 1000 for p in (tmp_path / "out" / "two-figures").iterdir())
    r = runner.invoke(app, ["report", "two", "--format", "latex", "--home", str(home)])
    assert r.exit_code == 0 and r.stdout.startswith("% generated by mqvq report two")
    r = runner.invoke(app, ["report", "two", "-f", "latex", "--columns", "usage", "--home", str(home)])
    assert r.exit_code == 0 and "Use$\\uparrow$" in r.stdout and "rFD$" not in r.stdout
    r = runner.invoke(
        app, ["report", "two", "-f", "latex", "--wide", "--columns", "fid,rfid", "-c", "usage", "--home", str(home)]
    )
    assert r.exit_code == 0 and r"\begin{table*}[t]" in r.stdout
    assert r.stdout.index("FD$\\downarrow$") < r.stdout.index("rFD$\\downarrow$") < r.stdout.index("Use$\\uparrow$")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for args, msg in [
        (["report", "nope"], "unknown study 'nope'"),
        (["report", "two", "--out", str(blocker / "t.md")], "cannot write"),
        (["report", "two", "--out", str(tmp_path / "t.docx")], "cannot tell the format"),
        (["report", "two", "--format", "html"], "use md, latex, csv or json"),
        (["report", "two", "--wide"], "--wide sets a LaTeX table across both columns"),
        (["report", "two", "-f", "latex", "--paper", "side"], "--paper 'side' is invalid: use columns, line, none"),
        (["report", "two", "--columns", "nope"], "--columns 'nope' is not a column of the two table"),
    ]:
        r = runner.invoke(app, [*args, "--home", str(home)])
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, (args, r.output)

    # a store fetched back from a GPU machine without checkpoints or tokens still draws every figure
    fetched = tmp_path / "fetched"
    shutil.copytree(home, fetched, ignore=shutil.ignore_patterns("*.pt", "tokens"))
    shutil.rmtree(home)
    again = tmp_path / "again" / "two.md"
    r = runner.invoke(app, ["report", "two", "--out", str(again), "--home", str(fetched)])
    assert r.exit_code == 0, r.output
    assert {p.name for p in (again.parent / "two-figures").iterdir()} == figs
    assert again.read_text().split("Provenance")[0] == text.split("Provenance")[0].split("Reproduction check")[0]
    r = runner.invoke(app, ["study", "status", "two", "--json", "--home", str(fetched)])
    assert r.exit_code == 0, r.output
    assert [row["status"] for row in json.loads(r.stdout)["rows"]] == ["finished", "finished"]
    r = runner.invoke(app, ["study", "run", "two", "--no-progress", "--home", str(fetched)])
    assert r.exit_code == 0 and "2 skipped" in r.stdout, r.output  # nothing reruns


def test_a_store_moved_from_another_machine_still_finds_its_artifacts(tmp_path, tiny, home, tracker):
    """Results fetched back from a GPU machine: the store records that machine's artifact paths."""
    from mqvq.stages.lookup import model_file
    from mqvq.stages.train_stage1 import train_stage1
    from mqvq.tracking import Tracker

    run_id = train_stage1(tiny("vqgan-f16"), tracker, progress=False)["run_id"]
    shutil.rmtree(home / "checkpoints")
    moved = tmp_path / "fetched"
    shutil.move(str(home), str(moved))
    path = model_file(Tracker(None, moved), run_id)
    assert path.is_file() and str(moved) in str(path)


def test_json_keeps_each_seeds_value_for_paired_comparisons():
    """Seeds share initialisation and data order across rows, so a reader pairing rows by seed needs
    every seed's number, not only mean and spread; a single seed adds nothing beyond the mean."""
    table, _ = _table()
    rows = {r["row"]: r for r in json.loads(to_json(table))["rows"]}
    assert rows["adaptive-25"]["rfd_vgg16_per_seed"] == {"0": 5.32, "1": 5.18, "2": 5.193}
    assert "rfd_vgg16_per_seed" not in rows["adaptive-10"]
    assert "per_seed" not in to_csv(table)


def _study_table(study: str, seeds: int, backend: str = "vgg16"):
    """A study's table with every metric its rows measure, at realistic magnitudes and spreads."""
    from mqvq.studies.plan import expected_metrics
    from mqvq.studies.spec import row_config

    s = load_study(study)
    scale = {
        "rfd_vgg16": 250.0,
        "fd_vgg16": 260.0,
        "rfid": 8.0,
        "fid": 12.0,
        "fd_vgg16_best": 240.0,
        "usage": 97.0,
        "usage_effective": 80.0,
        "speed_images_per_s": 123.4,
    }
    records = []
    for i, row in enumerate(s.rows):
        names = expected_metrics(s, row_config(row, "smoke", 0), backend) + (
            ["fd_vgg16_best"] if s.search.trials else []
        )
        for seed in range(seeds):
            metrics = {m: scale.get(m, 0.5) * (1 + 0.013 * i + 0.021 * seed) for m in names}
            records.append(finished_record(row.name, seed, metrics, f"{i:02d}{seed:030d}"))
    d, _, paper = row_meta(s, "smoke")
    return build_table(s, "smoke", records, d, paper)


def _fitted(table) -> str:
    from mqvq.reports.latex import fit_one_column

    fitted, left_out = fit_one_column(table)
    return to_latex(fitted, left_out=left_out)


def _compile(tmp_path, tables: list[str], docclass: str = "[twocolumn]{article}") -> str:
    """pdflatex a two-column page holding `tables`; returns the log (fails on an error)."""
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (.ci/run installs texlive-latex-base and -recommended)")
    for i, tex in enumerate(tables):
        (tmp_path / f"t{i}.tex").write_text(tex)
    body = "\n".join(f"\\input{{t{i}.tex}}\n\\clearpage" for i in range(len(tables)))
    (tmp_path / "doc.tex").write_text(
        f"\\documentclass{docclass}\n\\usepackage{{booktabs}}\n\\begin{{document}}\nText.\n{body}\n\\end{{document}}\n"
    )
    p = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout[-2000:]
    return (tmp_path / "doc.log").read_text(errors="replace")


def test_latex_default_fits_one_column_of_a_two_column_paper(tmp_path):
    """Every study's default LaTeX table, at one and three seeds, sits in one column with no overfull box;
    the 11-column table of every column goes across both with --wide."""
    from mqvq.studies.spec import list_studies

    tables = [_fitted(_study_table(s, n)) for s in list_studies() for n in (1, 3)]
    assert all(r"\begin{table}[t]" in t and r"\scriptsize(" in t for t in tables[:2])  # the paper's numbers on a line
    wide = to_latex(_table()[0], wide=True)
    assert wide.count(r"\begin{table*}[t]") == 1
    log = _compile(tmp_path, tables + [wide])
    assert all(f"(./t{i}.tex" in log for i in range(len(tables) + 1))
    assert "Overfull \\hbox" not in log, log[log.find("Overfull") :][:300]
    # the check can fail: every column of the mixed-backend table, forced into one column, overflows it
    forced = to_latex(_table()[0])
    assert "Overfull \\hbox" in _compile(tmp_path, [forced])


def test_columns_paper_layout_and_spread_are_the_users_choice():
    from mqvq.errors import UserError
    from mqvq.reports.tables import select_columns

    table, _ = _table()
    chosen = select_columns(table, ["usage", "rfd_vgg16"])
    assert [c.key for c in chosen.columns] == ["usage", "paper:usage", "rfd_vgg16", "paper:rfid"]  # in the order asked
    with pytest.raises(
        UserError, match=r"--columns 'psnr' is not a column of the ablation-mask table: choose from rfid, fid, usage"
    ):
        select_columns(table, ["psnr"])
    beside = to_latex(chosen, paper="columns")
    assert (
        "Use (paper, \\%)" in beside and "rFID (paper)" in beside and r"{\scriptsize(" not in beside
    )  # FID: the paper measured Inception
    assert (
        r"\scriptsize(" not in to_latex(chosen, paper="none")
        and "paper" not in to_markdown(chosen, paper="none").split("\n\n")[1]
    )
    line = to_markdown(chosen, paper="line")
    assert "| *paper* " in line and "(70.02)" in line
    # one seed has no spread: empty in CSV, null in JSON (never 0.0); three seeds have one
    rows = {r["row"]: r for r in json.loads(to_json(table))["rows"]}
    assert rows["adaptive-10"]["rfd_vgg16_std"] is None and rows["adaptive-25"]["rfd_vgg16_std"] > 0
    csv_row = next(x for x in to_csv(table).splitlines() if x.startswith("adaptive-10,"))
    header = to_csv(table).splitlines()[0].split(",")
    import csv as _csv

    values = dict(zip(header, next(_csv.reader([csv_row]))))
    assert values["rfd_vgg16_std"] == "" and values["rfd_vgg16"] != ""


@pytest.mark.integration
def test_the_text_conditional_study_runs_at_smoke_and_reports_table_5(tmp_path, home):
    """Table 5's two rows end to end: captions, tokenizer, guided and unguided samples, caption match, report."""
    r = runner.invoke(
        app, ["study", "run", "text-conditional", "--profile", "smoke", "--no-progress", "--home", str(home)]
    )
    assert r.exit_code == 0, r.output
    out = tmp_path / "out" / "text.md"
    r = runner.invoke(app, ["report", "text-conditional", "--out", str(out), "--check", "--home", str(home)])
    assert r.exit_code in (0, 1), r.output  # 1: a claim fails at smoke size, which is a result, not an error
    text = out.read_text()
    for header in (
        "FD-VGG16↓",
        "paper FID",
        "FD-VGG16↓ (guided)",
        "caption match↑ (%)",
        "caption match guided↑ (%)",
        "real images (%)",
        "shuffled captions (%)",
    ):
        assert header in text, header
    assert "| VQ-GAN†" in text and "| Stackformer" in text and "22.28" in text and "10.08" in text
    assert (
        "samples show their caption's attributes" in text
        and "classifier-free guidance raises the caption match" in text
    )
    figs = {p.name for p in (tmp_path / "out" / "text-figures").iterdir()}
    assert any("samples" in f for f in figs), figs
    r = runner.invoke(app, ["report", "text-conditional", "-f", "latex", "--home", str(home)])
    assert r.exit_code == 0 and "Match" in r.stdout and "Real" in r.stdout
    assert "left out to fit one column: attr_acc_chance" in r.stdout  # one column holds the rest


def _selectors(fg: dict[str, list[float]]):
    rows = {name: {"mask_fg_precision": v, "rfd_vgg16": [50.0] * len(v)} for name, v in fg.items()}
    table, meta = _table(_records(rows), "mask-learning")
    return {
        x.claim.split(" keeps")[0]: x
        for x in check_claims(table, meta)
        if "blind mask and than the paper's MLP" in x.claim
    }


def test_a_learned_selector_must_beat_blind_and_the_paper_mlp_on_its_own_data():
    v = _selectors(
        {
            "fmnist-random": [0.39, 0.39, 0.39],
            "fmnist-mlp": [0.35, 0.25, 0.45],
            "fmnist-damage": [0.66, 0.68, 0.67],
            "fmnist-straight-through": [0.60, 0.30, 0.45],
            # the textured rows must not be compared with the Fashion-MNIST ones
            "textured-random": [0.80, 0.80, 0.80],
            "textured-mlp": [0.30, 0.31, 0.29],
            "textured-damage": [0.26, 0.25, 0.27],
        }
    )
    assert v["Fashion-MNIST: damage prediction (HPM)"].status == "holds"
    assert v["Fashion-MNIST: straight-through Gumbel top-N"].status == "not significant"
    textured = v["textured: damage prediction (HPM)"]
    assert (
        textured.status == "fails" and "0.8" in textured.evidence[0]
    )  # its own data's blind mask, not Fashion-MNIST's
    assert v["textured: straight-through Gumbel top-N"].status == "not assessable"


def test_adaptive_and_random_rows_pair_only_on_the_same_data():
    rows = {
        "fmnist-random": {"mask_fg_precision": [0.39, 0.39]},
        "textured-random": {"mask_fg_precision": [0.32, 0.32]},
        "fmnist-mlp": {"mask_fg_precision": [0.35, 0.36]},
    }
    table, meta = _table(_records(rows), "mask-learning")
    (v,) = [x for x in check_claims(table, meta) if x.claim.startswith("the adaptive mask keeps the foreground")]
    assert len(v.evidence) == 1 and "0.39" in v.evidence[0]


def test_a_selector_beats_the_position_prior_only_with_shuffled_auroc_and_foreground_share_on_its_own_data():
    """mask-position's claim (issue 33): above the centre row's 0.5 in shuffled AUROC and above its foreground
    share, Welch over seeds, on the same data only (the held-out bed's centre row is not the torus bed's)."""

    def row(fg, sauc):
        return {"mask_fg_precision": fg, "mask_sauc": sauc, "rfd_vgg16": [50.0] * len(fg)}

    rows = {
        "wrap-random": {"mask_fg_precision": [0.12, 0.12, 0.12], "rfd_vgg16": [50.0] * 3},
        "wrap-centre": row([0.125, 0.125, 0.125], [0.5, 0.5, 0.5]),
        "wrap-straight-through": row([0.20, 0.21, 0.19], [0.70, 0.72, 0.69]),  # the object: holds
        "wrap-mlp": row([0.10, 0.11, 0.09], [0.45, 0.44, 0.46]),  # below the prior: fails
        "wrap-damage-mixed": row([0.30, 0.12, 0.15], [0.80, 0.51, 0.55]),  # spread too wide: not significant
        "heldout-centre": row([0.9, 0.9, 0.9], [0.5, 0.5, 0.5]),
        "heldout-straight-through": row([0.20, 0.21, 0.19], [0.70, 0.72, 0.69]),
    }  # its own bed's centre keeps more: fails
    table, meta = _table(_records(rows), "mask-position")
    v = {
        x.claim.split(": the object")[0]: x
        for x in check_claims(table, meta)
        if "the object, not its usual place" in x.claim
    }
    assert v["textured objects anywhere (wrap): straight-through (threshold-centred)"].status == "holds"
    assert v["textured objects anywhere (wrap): mlp gain (paper's text)"].status == "fails"
    assert v["textured objects anywhere (wrap): damage, half the masks random"].status == "not significant"
    held = v["top-left quadrant held out: straight-through (threshold-centred)"]
    assert held.status == "fails" and "0.9" in held.evidence[1]
    assert v["textured objects anywhere (wrap): conv + BN gain (released)"].status == "not assessable"  # never run
    assert not any(
        "centre prior (no model)" in k or "oracle" in k for k in v
    )  # judged: selectors with something to learn


def test_table_6_claims_are_judged_for_each_selector_that_sweeps_the_ratio():
    """ablation-mask-learned (issue 34): the paper's MLP, the learned selector and the oracle each get Table 6's
    claims, each against the same random and VQGAN rows, named in the verdict; the speed-up is over the VQGAN of
    the same f (not the f = 32 one that comes first)."""

    def row(rfd, fd, usage, fg, speed):
        return {
            "rfd_vgg16": [rfd, rfd + 0.1, rfd - 0.1],
            "fd_vgg16": [fd, fd + 0.1, fd - 0.1],
            "usage": [usage, usage + 0.1, usage - 0.1],
            "mask_fg_precision": [fg, fg + 0.001, fg - 0.001],
            "speed_images_per_s": [speed, speed + 1, speed - 1],
        }

    rows = {
        "vqgan-f32": row(9.0, 15.0, 50.0, 0.39, 400.0),
        "vqgan-f16": row(5.0, 12.0, 60.0, 0.39, 100.0),
        "random-25": row(6.5, 12.5, 66.0, 0.39, 110.0),
        "random-50": row(8.0, 15.5, 69.0, 0.39, 150.0),
        "adaptive-25": row(7.0, 13.0, 70.0, 0.30, 110.0),
        "adaptive-50": row(9.0, 16.5, 65.0, 0.25, 150.0),  # loses to random
        "learned-25": row(5.5, 9.0, 70.0, 0.60, 110.0),
        "learned-50": row(6.0, 10.0, 80.0, 0.65, 150.0),  # beats it
        "oracle-25": row(5.4, 8.0, 72.0, 0.75, 110.0),
    }
    table, meta = _table(_records(rows), "ablation-mask-learned")
    verdicts = check_claims(table, meta)
    v = {x.claim: x for x in verdicts}
    beats = {
        k.rsplit("[", 1)[1].rstrip("]"): x
        for k, x in v.items()
        if k.startswith("adaptive beats random at every mask ratio")
    }
    assert set(beats) == {"the paper's scorer", "damage prediction", "the foreground oracle"}
    assert beats["the paper's scorer"].status == "fails" and beats["damage prediction"].status == "holds"
    assert beats["the foreground oracle"].status == "holds" and all(
        "25%" in e for e in beats["the foreground oracle"].evidence
    )
    assert all(
        "learned" not in e and "MLP" not in e for e in beats["the foreground oracle"].evidence
    )  # its own rows only
    usage = next(x for k, x in v.items() if k.startswith("codebook usage rises") and k.endswith("[damage prediction]"))
    assert usage.status == "holds" and "0 % (VQGAN), f = 16" in usage.evidence[0]
    small = next(
        x for k, x in v.items() if k.startswith("10-25 % adaptive mask improves") and k.endswith("[damage prediction]")
    )
    assert small.status == "holds"
    speed = next(x for k, x in v.items() if k.startswith("sampling speed rises") and k.endswith("[damage prediction]"))
    assert speed.status == "holds" and "f = 32" not in " ".join(speed.evidence)
    by_name = {r.name: r for r in table.rows}
    assert by_name["learned-50"].values["speedup"][0] == pytest.approx(1.5)  # over VQGAN f = 16, not f = 32
    assert by_name["vqgan-f32"].values["speedup"][0] == pytest.approx(1.0)
    # the per-row foreground claim of the learned selector: more than blind and than the paper's MLP at its ratio
    fg = [
        x for x in verdicts if "keeps the foreground more often than a blind mask and than the paper's MLP" in x.claim
    ]
    assert {x.claim.split(" keeps")[0]: x.status for x in fg} == {
        "10 % adaptive, damage (half the masks random)": "not assessable",
        "25 % adaptive, damage (half the masks random)": "holds",
        "50 % adaptive, damage (half the masks random)": "holds",
        "75 % adaptive, damage (half the masks random)": "not assessable",
    }
    # the curves: one line per mask over the ratio, from VQGAN at the masks' f; a table with one sweep draws none
    from mqvq.reports.report import _ratio_curves

    fig = _ratio_curves(table, meta, load_study("ablation-mask-learned"))
    usage = next(ax for ax in fig.axes if ax.get_title().startswith("usage (%)"))
    lines = {t.get_text(): None for t in fig.axes[0].get_legend().get_texts()}
    assert set(lines) == {
        "the paper's scorer",
        "random",
        "damage prediction",
    }  # the oracle ran at one ratio here: no line
    assert len(usage.containers) == 3 and all(
        c.lines[0].get_ydata()[0] == pytest.approx(60.0) for c in usage.containers
    )  # VQGAN f = 16
    one_sweep = {k: v for k, v in rows.items() if k.startswith(("vqgan", "adaptive"))}
    assert (
        _ratio_curves(*_table(_records(one_sweep), "ablation-mask-learned"), load_study("ablation-mask-learned"))
        is None
    )
