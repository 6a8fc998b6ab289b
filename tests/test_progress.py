"""What a person follows and reads: row i of n with an ETA, durations, result lines and tables that
wrap between values instead of cutting names, --json with whole names, fast read-only commands."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mqvq.cli import app
from mqvq.machine import may_have_gpu
from mqvq.runtime import duration
from mqvq.studies.runner import Eta, metrics_line
from tests.test_studies import write_study

runner = CliRunner()
ROOT = Path(__file__).parent.parent


def test_durations_read_as_people_say_them():
    assert [duration(s) for s in (0.4, 8, 59.6, 65, 3599, 3725, None)] == [
        "0 s",
        "8 s",
        "1 min 00 s",
        "1 min 05 s",
        "59 min 59 s",
        "1 h 02 min",
        "?",
    ]


def test_a_borrowed_stage1_step_time_scales_with_image_area():
    # measured on 16 px rows of another config: a 32 px row's step costs (32/16)^2 as much, its own
    # measured config's exactly what was measured
    from mqvq.config import config_hash, identity
    from mqvq.experiments import load_experiment
    from mqvq.studies.plan import Costs

    small = load_experiment("mqvae-f16-adaptive-50", "smoke", ["stage1.data.resolution=16"], 0)
    large = load_experiment("mqvae-f16-adaptive-50", "smoke", ["stage1.data.resolution=32"], 0)
    costs = Costs(
        "cpu",
        step_s={("stage1", config_hash(identity(small.stage1))): 0.5, ("stage1", small.name): 0.5},
        pixels={("stage1", config_hash(identity(small.stage1))): 256.0, ("stage1", small.name): 256.0},
    )
    steps = small.stage1.train.steps
    assert costs.stage_seconds("stage1", small) == pytest.approx(0.5 * steps)
    assert costs.stage_seconds("stage1", large) == pytest.approx(0.5 * 4 * steps)
    costs.step_s[("stage1", config_hash(identity(large.stage1)))] = 0.9  # measured itself: no scaling
    assert costs.stage_seconds("stage1", large) == pytest.approx(0.9 * steps)


def test_eta_scales_the_plans_estimates_by_what_the_rows_took():
    eta = Eta([0.0, 10.0, 10.0, 10.0])  # the first row was already finished
    assert eta.describe(0).startswith("3 rows to go, about 30 s (until about ")
    eta.finished(1, 30.0)  # three times as slow as estimated: the scale moves halfway there, from one typical row
    assert eta.remaining(2) == 40.0 and eta.describe(2).startswith("2 rows to go, about 40 s")
    eta.finished(2, 50.0)  # the evidence grows: (30 + 50 + 10) / (10 + 10 + 10)
    assert eta.remaining(3) == 30.0 and eta.describe(3).startswith("1 row to go, about 30 s")
    eta = Eta([10.0, 10.0, 10.0])
    eta.finished(0, None)  # another worker had it: nothing learnt
    assert eta.describe(1).startswith("2 rows to go, about 20 s")
    assert Eta([5.0, None]).describe(0) == "2 rows to go (no time estimate: nothing measured yet on this device)"
    assert Eta([10.0] * 4, workers=2).describe(0).startswith("4 rows to go between 2 workers, about 20 s")


def test_result_lines_wrap_between_values_never_inside_one():
    line = metrics_line({"rfd_vgg16": 302.38435, "mask_fg_precision": 0.12857, "usage": 100.0})
    assert line == "rfd_vgg16=302.4  mask_fg_precision=0.1286  usage=100"
    assert all(" " not in pair for pair in line.split("  "))


@pytest.mark.integration
def test_a_study_run_says_row_i_of_n_and_how_long_is_left(studies, home, tracker):
    write_study(studies, "two", [("a", "vqgan-f16"), ("b", "mqvae-f16-adaptive-50")])
    r = runner.invoke(app, ["study", "run", "two", "--no-progress", "--home", str(home)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("two (smoke): 2 rows to go, about ")  # rough defaults before anything is measured
    assert "[1/2] a (seed 0): stage 1 training" in lines and "[2/2] b (seed 0): stage 2 training" in lines
    done = [x for x in lines if x.startswith("[1/2] a (seed 0): finished in ")]
    assert len(done) == 1 and "rfd_vgg16=" in done[0] and " s: " in done[0]
    after = lines[lines.index(done[0]) + 1]
    assert after.startswith("1 row to go, about ") and "(until about " in after  # scaled by what row a took
    r = runner.invoke(app, ["study", "run", "two", "--no-progress", "--home", str(home)])
    assert "[1/2] a (seed 0): done" in r.output and "[2/2] b (seed 0): done" in r.output and "to go" not in r.output


@pytest.mark.parametrize("columns", ["60", "80"])
def test_tables_wrap_names_instead_of_cutting_them(home, columns, monkeypatch):
    monkeypatch.setenv("COLUMNS", columns)
    r = runner.invoke(app, ["study", "status", "ablation-mask", "--home", str(home)])
    assert r.exit_code == 0, r.output
    assert "…" not in r.output and all(name in r.output for name in ("vqgan-f32", "adaptive-10", "random-75"))
    assert max(len(x) for x in r.output.splitlines()) <= int(columns)
    for args in (
        ["study", "show", "ablation-demask"],
        ["experiment", "fields"],
        ["study", "plan", "ablation-demask", "--home", str(home)],
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 0 and "…" not in r.output, (args, r.output)
        assert max(len(x) for x in r.output.splitlines()) <= int(columns), args


@pytest.mark.parametrize("width", [60, 70, 80, 90, 100, 110, 120])
def test_a_table_never_breaks_a_word_and_leaves_out_the_metrics_that_do_not_fit(width):
    """What `study status` printed for a SLURM study at 80 columns before: 'finish|ed', 'vqgan-f|32'
    (Rich's own shrinking folds words); now headers wrap at spaces and metrics that do not fit go."""
    from rich.console import Console
    from rich.text import Text

    from mqvq.cli.common import columns_that_fit, table

    headers = [
        "row",
        "seed",
        "status",
        "SLURM task",
        "SLURM state",
        "rFD-VGG16",
        "FD-VGG16",
        "usage (%)",
        "kept on foreground",
    ]
    numeric = ("seed", "rFD-VGG16", "FD-VGG16", "usage (%)", "kept on foreground")
    rows = [
        ["vqgan-f32", "0", "[green]finished[/]", "1_0", "completed", "307.4", "304.3", "98.44", "-"],
        ["adaptive-10", "0", "[dim]missing[/]", "1_2", "not in the queue", "438.8", "357.7", "100", "0.1414"],
    ]
    shown = 5 + columns_that_fit(headers, rows, 5, width, numeric)
    assert (shown >= 6) == (width >= 70) and (shown == len(headers)) == (width >= 100)
    console = Console(width=width, record=True, force_terminal=False)
    console.print(table(headers[:shown], [r[:shown] for r in rows], numeric, width=width))
    text = console.export_text()
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width
    words = text.split()
    plain = [h for h in headers[:shown]] + [Text.from_markup(c).plain for r in rows for c in r[:shown]]
    assert all(w in words for cell in plain for w in cell.split()), text  # every word whole


def test_json_wherever_a_table_is_printed_with_whole_names(home):
    from mqvq.config import field_help

    fields = json.loads(runner.invoke(app, ["experiment", "fields", "--json"]).stdout)["fields"]
    assert [f["field"] for f in fields] == [f[0] for f in field_help()] and all(f["meaning"] for f in fields)
    show = json.loads(runner.invoke(app, ["study", "show", "ablation-demask", "--json"]).stdout)
    assert "mqvae-f16-adaptive-50-nodemask" in [r["experiment"] for r in show["rows"]]
    assert "MQ-VAE w/ de-mask (DC-SA w/o mask update)" in [r["label"] for r in show["rows"]]
    studies = json.loads(runner.invoke(app, ["study", "list", "--json"]).stdout)["studies"]
    assert {"ablation-mask", "mask-investigation"} <= {s["name"] for s in studies}
    experiments = json.loads(runner.invoke(app, ["experiment", "list", "--json"]).stdout)
    assert (
        "mqvae-f16-adaptive-50" in [e["name"] for e in experiments["experiments"]]
        and "smoke" in experiments["profiles"]
    )
    status = json.loads(
        runner.invoke(app, ["study", "status", "mask-investigation", "--json", "--home", str(home)]).stdout
    )
    assert all(r["status"] == "missing" and r["label"] for r in status["rows"])
    weights = json.loads(runner.invoke(app, ["weights", "--json"]).stdout)["weights"]
    state = {w["weights"]: w["status"] for w in weights}
    assert state == {
        "LPIPS-vgg": "ready",
        "LPIPS-alex": "ready",
        "inception": "missing",
        "vgg16": "missing",
    }  # the test folder's


@pytest.mark.skipif(may_have_gpu(), reason="with a GPU, plan asks torch which device it will use")
@pytest.mark.integration
def test_status_and_plan_never_import_torch(home):
    """torch is most of a second of start-up; the everyday commands that only read do without it
    (plan asks torch its thread count once per machine and remembers it)."""
    code = (
        "import sys; from typer.testing import CliRunner; from mqvq.cli import app\n"
        f"for cmd in ('status', 'plan'):\n"
        f"    r = CliRunner().invoke(app, ['study', cmd, 'ablation-mask', '--home', {str(home)!r}])\n"
        "    assert r.exit_code == 0, r.output\n"
        "print('torch' in sys.modules)\n"
    )
    first, again = (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
        for _ in range(2)
    )
    assert first.returncode == 0 and again.returncode == 0, first.stderr[-2000:] + again.stderr[-2000:]
    assert (first.stdout.strip(), again.stdout.strip()) == ("True", "False")  # the first asked torch its thread count


@pytest.mark.parametrize("omp", [None, "1"])
@pytest.mark.integration
def test_the_remembered_thread_count_is_what_torch_reports(tmp_path, omp):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} | (
        {"OMP_NUM_THREADS": omp} if omp else {}
    )
    code = (
        "import sys; from mqvq.machine import torch_threads; n = torch_threads(sys.argv[1]); "
        "fresh = 'torch' not in sys.modules; import torch; print(n, torch.get_num_threads(), fresh)"
    )
    first = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env, timeout=120
    ).stdout.split()
    again = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env, timeout=120
    ).stdout.split()
    assert first[0] == first[1] and first[2] == "False"  # asked torch, and it was right
    assert again[0] == again[1] and again[2] == "True"  # remembered: torch was not imported for it
    assert len(json.loads((tmp_path / "machine.json").read_text())) == 1
