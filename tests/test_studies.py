"""Studies end to end on tiny rows: run, rerun starts nothing, SIGKILL + resume, concurrent workers, errors, UI."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mqvq.cli import app
from mqvq.errors import UserError
from mqvq.studies.spec import load_study
from tests.conftest import TINY, TINY_S2

pytestmark = pytest.mark.integration  # whole studies, in this process or several

ROOT = Path(__file__).parent.parent
runner = CliRunner()
FAST = [*TINY, *TINY_S2]


def write_study(
    folder: Path, name: str, rows: list[tuple[str, str]], extra: list[str] = (), metrics='["rfid", "fid", "usage"]'
):
    folder.mkdir(parents=True, exist_ok=True)
    text = f'description = "test study"\ntable = "Table 6"\nmetrics = {metrics}\nseeds = [0]\n'
    for row, exp in rows:
        overrides = json.dumps([*FAST, *extra])
        text += f'\n[[rows]]\nname = "{row}"\nexperiment = "{exp}"\noverrides = {overrides}\npaper = {{ rfid = 4.0, fid = 7.5 }}\n'
    (folder / f"{name}.toml").write_text(text)
    return folder


def _cli(*args, home):
    return runner.invoke(app, [*args, "--home", str(home)])


def _runs(tracker, experiment="two/smoke"):
    return tracker.find_runs(experiment)


def test_run_then_rerun_starts_nothing(studies, home, tracker):
    write_study(studies, "two", [("a", "vqgan-f16"), ("b", "mqvae-f16-adaptive-50")])
    r = _cli("study", "run", "two", "--no-progress", home=home)
    assert r.exit_code == 0, r.output
    assert "2 finished" in r.stdout
    runs = _runs(tracker)
    assert len(runs) == 7  # per row: a parent, a stage-1 child, a stage-2 child; and the study's summary
    assert [x.data.tags.get("mqvq.kind") for x in runs].count("summary") == 1
    rows = [x for x in runs if x.data.tags.get("mqvq.kind") == "row"]
    for row in rows:
        assert row.info.status == "FINISHED" and row.data.tags["mqvq.status"] == "finished"
        assert {"rfd_vgg16", "fd_vgg16", "usage"} <= set(row.data.metrics)
        assert row.data.tags["mqvq.eval.fd_vgg16.backend"] == "vgg16" and row.data.params["paper.rfid"] == "4.0"
        children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == row.info.run_id]
        assert sorted(c.data.tags["mqvq.stage"] for c in children) == ["stage1", "stage2"]
        assert [d.dataset.name for d in row.inputs.dataset_inputs] == [
            "procedural train"
        ]  # the data the row trained on
    r = _cli("study", "run", "two", "--no-progress", home=home)
    assert r.exit_code == 0 and "2 skipped" in r.stdout
    assert len(_runs(tracker)) == 7  # nothing new (the summary is refreshed only when a row finished)
    r = _cli("study", "status", "two", "--json", home=home)
    data = json.loads(r.stdout)
    assert [x["status"] for x in data["rows"]] == ["finished", "finished"] and data["rows"][0]["paper"]["fid"] == 7.5
    r = _cli("study", "plan", "two", "--json", home=home)
    assert all(st["state"] == "done" for row in json.loads(r.stdout)["rows"] for st in row["stages"].values())
    # estimates for new seeds come from the step times measured on this device, per experiment
    from mqvq.studies.plan import measured_costs
    from mqvq.timing import device_name

    r = _cli("study", "plan", "two", "--json", "--seeds", "7", home=home)
    plan = json.loads(r.stdout)
    assert plan["estimate"]["device"].startswith(device_name(__import__("torch").device("cpu")))
    assert plan["estimate"]["measured_runs"] == 4  # two stage-1 and two stage-2 runs
    costs = measured_costs(tracker, "smoke")
    stage1_runs = [x for x in runs if x.data.tags.get("mqvq.stage") == "stage1"]
    step_s = {x.data.tags["mqvq.experiment"]: x.data.metrics["time/stage1_step_seconds"] for x in stage1_runs}
    assert costs.step_s[("stage1", "vqgan-f16")] == step_s["vqgan-f16"]
    a = next(x for x in plan["rows"] if x["row"] == "a")
    from mqvq.studies.spec import load_study as _load, row_config

    cfg = row_config(_load("two").rows[0], "smoke", 7)
    expected = costs.stage_seconds("stage1", cfg) + costs.stage_seconds("stage2", cfg) + 2 * costs.eval_s
    assert a["estimate_s"] == pytest.approx(expected)
    r = _cli("study", "plan", "two", "--seeds", "7", home=home)
    assert "estimates assume CPU" in r.stdout and "from the step times of 4 finished smoke runs" in r.stdout


def test_stage1_is_reused_across_studies_and_failures_are_recorded(studies, home, tracker):
    write_study(studies, "one", [("x", "mqvae-f16-adaptive-50")])
    write_study(studies, "two", [("a", "mqvae-f16-adaptive-50"), ("broken", "vqgan-f16")], metrics='["usage"]')
    text = (
        (studies / "two.toml")
        .read_text()
        .replace(
            'experiment = "vqgan-f16"\noverrides = [',
            'experiment = "vqgan-f16"\noverrides = ["stage1.data.name=folder", "stage1.data.root=/nonexistent", ',
        )
    )
    (studies / "two.toml").write_text(text)
    assert _cli("study", "run", "one", "--no-progress", home=home).exit_code == 0
    r = _cli("study", "plan", "two", "--json", home=home)
    plan = {x["row"]: x for x in json.loads(r.stdout)["rows"]}
    assert plan["a"]["stages"]["stage1"]["state"] == "reusable"  # same content hash as study one's row
    r = _cli("study", "run", "two", "--no-progress", home=home)
    assert r.exit_code == 1 and "1 finished" in r.stdout and "1 failed" in r.stdout and "does not exist" in r.stdout
    status = {x["row"]: x for x in json.loads(_cli("study", "status", "two", "--json", home=home).stdout)["rows"]}
    assert status["broken"]["status"] == "failed" and "does not exist" in status["broken"]["failure"]
    assert status["a"]["status"] == "finished"
    stage1_runs = [x for x in tracker.find_runs_everywhere("tags.\"mqvq.stage\" = 'stage1'")]
    assert len(stage1_runs) == 1  # reused, not retrained
    # once linked, the reused run is this row's: a rerun (or a second worker) does not redo the row
    plan = {x["row"]: x for x in json.loads(_cli("study", "plan", "two", "--json", home=home).stdout)["rows"]}
    assert all(st["state"] in ("done", "skip") for st in plan["a"]["stages"].values()), plan["a"]
    r = _cli("study", "run", "two", "--only", "a", "--no-progress", home=home)
    assert r.exit_code == 0 and "1 skipped" in r.stdout and "reusable" not in r.stdout, r.stdout


def _spawn(home, study, *extra, session=False):
    """`mqvq study run` as typed at a terminal: SIGINT at its default even when this suite itself runs
    in the background (a non-interactive shell starts background jobs with SIGINT ignored, and Python
    then never installs its Ctrl-C handler)."""
    env = {**os.environ, "MQVQ_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "mqvq", "study", "run", study, "--no-progress", *extra],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=session,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_sigkill_mid_row_then_restart_resumes_from_the_checkpoint(studies, home, tracker):
    write_study(
        studies,
        "long",
        [("a", "mqvae-f16-adaptive-50")],
        extra=["stage1.train.steps=120", "stage1.train.ckpt_every=5", "stage1.train.log_every=5"],
    )
    p = _spawn(home, "long")
    deadline = time.time() + 120
    ckpts = []
    while time.time() < deadline and not ckpts:
        ckpts = list((home / "checkpoints").glob("*/last.pt")) if (home / "checkpoints").exists() else []
        time.sleep(0.2)
    assert ckpts, "no checkpoint appeared"
    time.sleep(0.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed = tracker.find_runs_everywhere("tags.\"mqvq.stage\" = 'stage1'")
    assert len(killed) == 1 and killed[0].info.status == "RUNNING"  # SIGKILL leaves it RUNNING
    run_id = killed[0].info.run_id
    import torch

    step_at_kill = torch.load(ckpts[0], weights_only=True)["step"]
    assert 0 < step_at_kill < 120
    r = _cli("study", "run", "long", "--no-progress", home=home)
    assert r.exit_code == 0, r.output
    stage1 = tracker.find_runs_everywhere("tags.\"mqvq.stage\" = 'stage1'")
    assert [x.info.run_id for x in stage1] == [run_id] and stage1[0].info.status == "FINISHED"  # resumed, not restarted
    history = tracker.client.get_metric_history(run_id, "train/loss")
    assert min(m.step for m in history) <= step_at_kill < max(m.step for m in history) == 120
    rows = [x for x in tracker.find_runs("long/smoke") if x.data.tags.get("mqvq.kind") == "row"]
    assert len(rows) == 1 and rows[0].info.status == "FINISHED"
    assert len(tracker.find_runs_everywhere("tags.\"mqvq.stage\" = 'stage2' and attributes.status = 'FINISHED'")) == 1


def test_two_concurrent_workers_never_run_the_same_row(studies, home, tracker):
    write_study(studies, "three", [("a", "vqgan-f16"), ("b", "mqvae-f16-adaptive-50"), ("c", "mqvae-f16-random-50")])
    tracker.experiment_id("warm")  # the store exists before both workers start
    procs = [_spawn(home, "three"), _spawn(home, "three")]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        if p.returncode != 0:
            print(f"worker exited {p.returncode}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-6000:]}")
    assert all(p.returncode == 0 for p in procs)
    runs = tracker.find_runs("three/smoke")
    rows = [x for x in runs if x.data.tags.get("mqvq.kind") == "row"]
    assert sorted(x.data.tags["mqvq.row"] for x in rows) == ["a", "b", "c"]  # one parent per row
    for stage in ("stage1", "stage2"):
        per_row = [x.data.tags["mqvq.row"] for x in runs if x.data.tags.get("mqvq.stage") == stage]
        assert sorted(per_row) == ["a", "b", "c"], (stage, per_row)  # each row trained exactly once
    assert all(x.info.status == "FINISHED" for x in runs)
    done = sum(o[1].count(": finished") for o in outs)
    assert done == 3  # three rows finished in total across both workers


def test_study_input_errors(studies, home, tmp_path):
    write_study(studies, "ok", [("a", "vqgan-f16")])
    for args, msg in [
        (["study", "run", "nope"], "unknown study 'nope'"),
        (["study", "run", "ok", "--only", "zzz"], "unknown row 'zzz' in study ok: rows are a"),
        (["study", "status", "ok", "--tracking-uri", "http://127.0.0.1:9"], "cannot reach the MLflow server"),
    ]:
        r = _cli(*args, home=home)
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, (args, r.output)
    (studies / "bad.toml").write_text(
        'description = "x"\nseedz = [0]\n[[rows]]\nname = "a"\nexperiment = "vqgan-f16"\n'
    )
    with pytest.raises(UserError, match=r"bad.toml: unknown key seedz in the top level: allowed keys are"):
        load_study("bad")
    (studies / "bad.toml").write_text(
        'description = "x"\nseeds = "zero"\n[[rows]]\nname = "a"\nexperiment = "vqgan-f16"\n'
    )
    with pytest.raises(UserError, match=r"bad.toml: seeds = 'zero' is invalid: expected a list of integers"):
        load_study("bad")
    (studies / "bad.toml").write_text('description = "x"\n[[rows]]\nname = "a"\nexperimnt = "vqgan-f16"\n')
    r = runner.invoke(app, ["study", "show", "bad"])
    assert r.exit_code == 2 and "bad.toml: unknown key rows[0].experimnt" in r.output
    # nothing recorded is lost by a failing command
    assert _cli("study", "run", "ok", "--no-progress", home=home).exit_code == 0
    _cli("study", "run", "nope", home=home)
    assert json.loads(_cli("study", "status", "ok", "--json", home=home).stdout)["rows"][0]["status"] == "finished"


def test_every_declared_study_loads():
    from mqvq.studies.spec import list_studies

    names = list_studies()
    assert {"ablation-mask", "ablation-demask", "ablation-downsample", "speed-quality"} <= set(names)
    mask = load_study("ablation-mask")
    from mqvq.studies.spec import row_paper

    assert len(mask.rows) == 9 and row_paper(mask, mask.rows[3]) == {"rfid": 4.79, "fid": 7.67, "usage": 78.22}
    assert mask.columns == ("mask_ratio", "f", "mask_type")
    demask = load_study("ablation-demask")
    assert [r.experiment for r in demask.rows][
        -1
    ] == "mqvae-f16-adaptive-50"  # Table 7's full model = Table 6's 50 % row


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_studys_runs(studies, home, tracker):
    write_study(studies, "one", [("a", "vqgan-f16")], metrics='["usage"]')
    assert _cli("study", "run", "one", "--no-progress", home=home).exit_code == 0
    from mqvq.reports.summary import publish_summary

    first = [r.info.run_id for r in _runs(tracker, "one/smoke") if r.data.tags.get("mqvq.kind") == "summary"]
    again = publish_summary(tracker, "one", "smoke", figures=False)  # drawn anew: one summary, the old one deleted
    assert (
        [r.info.run_id for r in _runs(tracker, "one/smoke") if r.data.tags.get("mqvq.kind") == "summary"]
        == [again]
        != first
    )
    port = _free_port()
    env = {**os.environ, "MQVQ_HOME": str(home)}
    p = subprocess.Popen(
        [sys.executable, "-m", "mqvq", "ui", "one", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(base + "/health", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        exp = json.loads(
            urllib.request.urlopen(
                base + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=one/smoke", timeout=10
            ).read()
        )["experiment"]
        req = urllib.request.Request(
            base + "/api/2.0/mlflow/runs/search",
            method="POST",
            headers={"Content-Type": "application/json"},
            data=json.dumps({"experiment_ids": [exp["experiment_id"]]}).encode(),
        )
        runs = json.loads(urllib.request.urlopen(req, timeout=10).read())["runs"]
        assert len(runs) == 4  # the row, its two stage runs and the study's summary
        tags = {r["info"]["run_name"]: {t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs}
        note = tags["summary: one (smoke)"]["mlflow.note.content"]
        assert "| row " in note and "| usage (%)" in note and tags["summary: one (smoke)"]["mqvq.kind"] == "summary"
        exp_tags = {t["key"]: t["value"] for t in exp["tags"]}
        assert exp_tags["mlflow.experimentKind"] == "custom_model_development"  # opens in the model-training view
        view = json.loads(exp_tags["mlflow.sharedViewState.mqvq"])
        assert view["selectedColumns"] == ["metrics.`usage`"] and view["columnOrder"] == ["duration", "metrics.`usage`"]
    finally:
        p.send_signal(signal.SIGTERM)  # only the mqvq process: it must take the server down with it
        out = p.communicate(timeout=60)[0]
    assert (
        f"http://127.0.0.1:{port}/#/experiments/{exp['experiment_id']}/runs?workflowType=machine_learning&viewStateShareKey=mqvq"
        in out
    )
    assert p.returncode in (0, 130, -15), out[-2000:]
    with pytest.raises(OSError):  # nothing listens any more
        urllib.request.urlopen(base + "/health", timeout=2)


def test_ui_with_auth_refuses_a_request_without_the_password(home, tracker):
    """`mqvq ui --auth`: MLflow's basic-auth app, on 127.0.0.1 here: no credentials, no runs; the
    admin's password (made on the first start, in a file only its owner reads) opens them."""
    import base64

    pytest.importorskip("flask_wtf")
    tracker.start_run("seen", "r", {}, {})
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_AUTH")} | {"MQVQ_HOME": str(home)}
    p = subprocess.Popen(
        [sys.executable, "-m", "mqvq", "ui", "--auth", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=seen"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base, timeout=10)
        assert refused.value.code == 401
        secret = home / "ui-auth" / "admin-password"
        assert secret.stat().st_mode & 0o077 == 0 or (home / "ui-auth").stat().st_mode & 0o077 == 0
        token = base64.b64encode(f"admin:{secret.read_text().strip()}".encode()).decode()
        req = urllib.request.Request(base, headers={"Authorization": f"Basic {token}"})
        assert json.loads(urllib.request.urlopen(req, timeout=10).read())["experiment"]["name"] == "seen"
    finally:
        p.send_signal(signal.SIGTERM)
        out = p.communicate(timeout=60)[0]
    assert f"sign in as admin with the password in {secret}" in " ".join(out.split()), out[-2000:]


def test_readme_main_job_ablation_mask_at_smoke(tmp_path):
    """The README's main job from a clean home: the whole Table 6 study at the smoke profile, then its status."""
    env = {**os.environ, "MQVQ_HOME": str(tmp_path / "h")}
    env.pop("MQVQ_STUDIES", None)
    p = subprocess.run(
        [sys.executable, "-m", "mqvq", "study", "run", "ablation-mask", "--profile", "smoke", "--no-progress"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "9 finished" in p.stdout
    s = subprocess.run(
        [sys.executable, "-m", "mqvq", "study", "status", "ablation-mask", "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    rows = json.loads(s.stdout)["rows"]
    assert len(rows) == 9 and all(r["status"] == "finished" for r in rows)
    assert all({"rfd_vgg16", "fd_vgg16", "usage"} <= set(r["metrics"]) for r in rows)
    masked = [r for r in rows if r["row"].startswith(("adaptive", "random"))]
    assert all("mask_fg_precision" in r["metrics"] for r in masked)


def test_workers_option_splits_the_rows_between_processes(studies, home, tracker):
    write_study(studies, "three", [("a", "vqgan-f16"), ("b", "mqvae-f16-adaptive-50"), ("c", "mqvae-f16-random-50")])
    p = _spawn(home, "three", "--workers", "2")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert "three (smoke): 3 finished" in out
    assert "w0 " in err and "w1 " in err  # both workers ran and logged under their names
    runs = tracker.find_runs("three/smoke")
    for stage in ("stage1", "stage2"):
        per_row = [x.data.tags["mqvq.row"] for x in runs if x.data.tags.get("mqvq.stage") == stage]
        assert sorted(per_row) == ["a", "b", "c"], (stage, per_row)  # each row trained exactly once
    r = _cli("study", "run", "three", "--workers", "2", "--only", "zzz", home=home)
    assert r.exit_code == 2 and "unknown row 'zzz'" in r.output and "Traceback" not in r.output


def test_reevaluation_asks_only_for_the_missing_metric_families():
    from mqvq.metrics import metric_family, metric_stage

    assert {
        metric_family(n)
        for n in (
            "rfd_vgg16",
            "usage_effective",
            "mask_detail_ratio",
            "fg_token_fraction",
            "fd_vgg16",
            "speed_images_per_s",
        )
    } == {"rfid", "usage", "mask", "fid", "speed"}
    assert {metric_family(n) for n in ("fd_vgg16_cfg", "attr_acc", "attr_acc_cfg", "attr_colour")} == {"fid", "attr"}
    assert [metric_stage(n) for n in ("attr_acc_real", "fid_cfg", "rfid", "usage")] == [
        "stage2",
        "stage2",
        "stage1",
        "stage1",
    ]


@pytest.mark.parametrize("stop", ["sigterm", "ctrl-c", "sigterm-under-load"])
def test_sigterm_stops_a_background_study_like_ctrl_c(studies, home, tracker, stop):
    """`nohup mqvq study run ... &` ignores SIGINT; `kill -TERM` must checkpoint and release every row.
    Ctrl-C (SIGINT to the whole process group) must stop the workers and the parent alike. Under load
    (two busy processes beside it) the signal lands at other moments, e.g. inside an MLflow call."""
    write_study(
        studies,
        "term",
        [("a", "mqvae-f16-adaptive-50"), ("b", "mqvae-f16-random-50")],
        extra=["stage1.train.steps=400", "stage1.train.log_every=5"],
    )
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 if stop.endswith("load") else 0)
    ]
    try:
        _stop_a_background_study(studies, home, tracker, stop)
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def _stop_a_background_study(studies, home, tracker, stop):
    p = _spawn(home, "term", "--workers", "2", session=stop == "ctrl-c")
    deadline = time.time() + 240
    running = []
    while time.time() < deadline and len(running) < 2:
        running = [
            r for r in tracker.find_runs_everywhere("tags.\"mqvq.stage\" = 'stage1'") if "train/loss" in r.data.metrics
        ]
        time.sleep(0.5)
    assert len(running) == 2, "both workers should be training"
    if stop == "ctrl-c":
        os.killpg(p.pid, signal.SIGINT)
    else:
        p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    for run in tracker.find_runs_everywhere("tags.\"mqvq.stage\" = 'stage1'"):
        assert run.info.status == "KILLED", (
            run.data.tags.get("mqvq.failure"),
            err[-3000:],
        )  # ended as resumable, not left RUNNING
        assert (home / "checkpoints" / run.info.run_id / "last.pt").is_file()
    rows = [r for r in _runs(tracker, "term/smoke") if r.data.tags.get("mqvq.kind") == "row"]
    assert [(r.info.status, r.data.tags["mqvq.status"]) for r in rows] == [
        ("KILLED", "killed")
    ] * 2  # resumable, not RUNNING
    r = _cli("study", "plan", "term", "--json", home=home)
    assert [x["stages"]["stage1"]["state"] for x in json.loads(r.stdout)["rows"]] == ["resumable", "resumable"]


def test_study_level_overrides_come_before_each_rows_own(studies):
    from mqvq.studies.spec import row_config

    studies.mkdir(parents=True, exist_ok=True)
    (studies / "pinned.toml").write_text(
        'overrides = ["stage1.train.steps=7", "stage1.model.mask.ratio=0.25"]\n'
        '[[rows]]\nname = "a"\nexperiment = "mqvae-f16-adaptive-50"\n'
        '[[rows]]\nname = "b"\nexperiment = "mqvae-f16-adaptive-50"\noverrides = ["stage1.train.steps=9"]\n'
    )
    a, b = (row_config(r, "smoke", 0) for r in load_study("pinned").rows)
    assert (a.stage1.train.steps, a.stage1.model.mask.ratio) == (7, 0.25)
    assert (b.stage1.train.steps, b.stage1.model.mask.ratio) == (9, 0.25)


def test_train_stage2_finds_the_stage1_run_a_study_trained(studies, home, tracker):
    """The README: `train stage2 EXPERIMENT` uses the finished stage-1 run of the same config, also
    when a study (whose runs live in the study's MLflow experiment) trained it."""
    write_study(studies, "one", [("a", "vqgan-f16")], metrics='["usage"]')
    assert _cli("study", "run", "one", "--no-progress", home=home).exit_code == 0
    (s1,) = tracker.find_runs_everywhere("tags.\"mqvq.stage\" = 'stage1'")
    sets = [a for o in FAST for a in ("--set", o)]
    r = _cli("train", "stage2", "vqgan-f16", "--profile", "smoke", *sets, "--no-progress", home=home)
    assert r.exit_code == 0, r.output
    assert len(tracker.find_runs_everywhere("tags.\"mqvq.stage\" = 'stage1'")) == 1
    (mine,) = tracker.find_runs("vqgan-f16", "tags.\"mqvq.stage\" = 'stage2'")
    assert mine.data.tags["mqvq.stage1_run"] == s1.info.run_id


def test_a_run_left_running_by_a_dead_process_is_marked_killed_and_stays_resumable(tracker):
    """After SIGKILL nothing ends the MLflow run: the next `study run` must not leave it RUNNING."""
    from mqvq.studies.lease import reap_stale_runs

    exp = "s/smoke"
    parent = tracker.start_run(exp, "row", {"mqvq.kind": "row"})
    tracker.set_tags(parent, {"mqvq.lease": "somehost:999999:dead", "mqvq.heartbeat": 1000.0})
    dead = tracker.start_run(exp, "stage1", {"mqvq.stage": "stage1"}, parent_run_id=parent)
    tracker.set_tags(dead, {"mqvq.heartbeat": 1000.0})  # its process died long ago
    alive = tracker.start_run(exp, "stage1", {"mqvq.stage": "stage1"}, parent_run_id=parent)  # fresh heartbeat
    assert reap_stale_runs(tracker, exp, timeout=120) == [dead]
    run = tracker.get_run(dead)
    assert run.info.status == "KILLED" and "no heartbeat since" in run.data.tags["mqvq.failure"]
    assert tracker.get_run(alive).info.status == "RUNNING" and tracker.get_run(parent).info.status == "RUNNING"
    # a stale heartbeat under a row whose worker is alive (a long evaluation) is left alone
    tracker.set_tags(parent, {"mqvq.lease": "somehost:1:x", "mqvq.heartbeat": __import__("time").time()})
    tracker.set_tags(alive, {"mqvq.heartbeat": 1000.0})
    assert reap_stale_runs(tracker, exp, timeout=120) == []


def test_two_workers_and_a_third_killed_mid_row_then_a_rerun(studies, home, tracker):
    """Every row exactly once FINISHED, no run left RUNNING, the killed row's stage 1 resumed."""
    write_study(
        studies,
        "trio",
        [("a", "vqgan-f16"), ("b", "mqvae-f16-adaptive-50"), ("c", "mqvae-f16-random-50")],
        extra=["stage1.train.steps=60", "stage1.train.ckpt_every=5", "stage1.train.log_every=5"],
        metrics='["usage"]',
    )
    tracker.experiment_id("warm")
    victim = _spawn(home, "trio")
    deadline, owned = time.time() + 180, None
    while time.time() < deadline and owned is None:  # the row the victim holds, once it has a checkpoint
        for row in tracker.find_runs("trio/smoke", "tags.\"mqvq.kind\" = 'row'"):
            if f":{victim.pid}:" in row.data.tags.get("mqvq.lease", ""):
                s1 = [
                    x
                    for x in tracker.find_runs("trio/smoke", f"tags.\"mlflow.parentRunId\" = '{row.info.run_id}'")
                    if x.data.tags.get("mqvq.stage") == "stage1"
                ]
                if s1 and (home / "checkpoints" / s1[0].info.run_id / "last.pt").is_file():
                    owned = (row.data.tags["mqvq.row"], s1[0].info.run_id)
        time.sleep(0.2)
    assert owned, "the victim never held a row with a checkpoint"
    workers = [_spawn(home, "trio"), _spawn(home, "trio")]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    for p in workers:
        out, err = p.communicate(timeout=600)
        assert p.returncode in (0, 1), err[-3000:]
    r = _cli("study", "run", "trio", "--no-progress", home=home)
    assert r.exit_code == 0, r.output
    runs = tracker.find_runs("trio/smoke")
    assert not [x for x in runs if x.info.status == "RUNNING"]
    rows = [x for x in runs if x.data.tags.get("mqvq.kind") == "row"]
    assert sorted(x.data.tags["mqvq.row"] for x in rows) == ["a", "b", "c"] and all(
        x.info.status == "FINISHED" for x in rows
    )
    finished_s1 = [x for x in runs if x.data.tags.get("mqvq.stage") == "stage1" and x.info.status == "FINISHED"]
    assert sorted(x.data.tags["mqvq.row"] for x in finished_s1) == ["a", "b", "c"]  # each exactly once
    assert owned[1] in {x.info.run_id for x in finished_s1}  # the killed stage was resumed, not restarted


def test_a_study_given_as_a_toml_path_gets_its_summary(tmp_path, home, tracker):
    """`mqvq study run path/to/own-study.toml`: the summary run is drawn from the study loaded from that path,
    not looked up by its name among the declared studies (where it is not)."""
    own = write_study(tmp_path / "mine", "own", [("a", "vqgan-f16")], metrics='["usage"]') / "own.toml"
    r = _cli("study", "run", str(own), "--no-progress", home=home)
    assert r.exit_code == 0, r.output
    assert "summary in MLflow" in r.output and "was not updated" not in r.output
    summaries = [x for x in tracker.find_runs("own/smoke") if x.data.tags.get("mqvq.kind") == "summary"]
    assert len(summaries) == 1


def _stop_outside_a_write(proc, db: Path, tries: int = 50) -> None:
    """SIGSTOP `proc` at a moment it holds no write lock on the SQLite store: a process stopped inside a
    write keeps SQLite's lock, and every other writer then fails with "database is locked" (a limit of
    a SQLite store, not of the lease; a server store has no such file lock). Stopped inside one, it
    is woken, and stopped again a moment later."""
    import sqlite3

    for _ in range(tries):
        os.kill(proc.pid, signal.SIGSTOP)
        con = sqlite3.connect(db, timeout=0.5)
        try:
            con.execute("BEGIN IMMEDIATE")  # takes the write lock if nobody holds it
            con.rollback()
            return
        except sqlite3.OperationalError:
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.3)
        finally:
            con.close()
    raise AssertionError(f"the worker held the store's write lock at each of {tries} tries")


def test_a_worker_stopped_past_its_lease_is_taken_over_and_writes_nothing_after_it_wakes(studies, home, tracker):
    """Fencing: SIGSTOP a worker past the lease timeout (Ctrl-Z, a suspended SLURM job, a paused VM), let a second
    worker take the row over, SIGCONT the first: it stops at once, says why, and writes nothing more; the row ends
    with exactly one FINISHED run per stage."""
    write_study(
        studies,
        "stall",
        [("a", "mqvae-f16-adaptive-50")],
        extra=["stage1.train.steps=400", "stage1.train.ckpt_every=5", "stage1.train.log_every=5"],
        metrics='["usage"]',
    )
    a = _spawn(home, "stall", "--lease-timeout", "4")
    deadline = time.time() + 120
    while time.time() < deadline and not list(home.glob("checkpoints/*/last.pt")):
        time.sleep(0.2)
    time.sleep(1.0)
    _stop_outside_a_write(a, home / "mlflow.db")
    (stage1,) = tracker.find_runs_everywhere("tags.\"mqvq.stage\" = 'stage1'")
    run_id = stage1.info.run_id
    stalled_at = max(m.step for m in tracker.client.get_metric_history(run_id, "train/loss"))
    time.sleep(6)  # past the 4 s lease
    b = _spawn(home, "stall", "--lease-timeout", "4")
    deadline = time.time() + 60
    while time.time() < deadline and tracker.get_run(run_id).data.tags.get("mqvq.trainer", "").split(":")[1:2] != [
        str(b.pid)
    ]:
        time.sleep(0.2)  # until the second worker resumed the stage run
    os.kill(a.pid, signal.SIGCONT)
    out_a, err_a = a.communicate(timeout=300)
    out_b, err_b = b.communicate(timeout=600)
    assert b.returncode == 0, err_b[-3000:]
    assert a.returncode == 1 and "lost the row's lease" in out_a + err_a and "Traceback" not in err_a, (
        out_a,
        err_a[-3000:],
    )
    runs = tracker.find_runs("stall/smoke")
    stages = [
        r
        for r in runs
        if r.data.tags.get("mqvq.stage") in ("stage1", "stage2") and r.data.tags.get("mqvq.kind") != "row"
    ]
    assert sorted(r.data.tags["mqvq.stage"] for r in stages if r.info.status == "FINISHED") == ["stage1", "stage2"]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    (row,) = [r for r in runs if r.data.tags.get("mqvq.kind") == "row"]
    assert row.info.status == "FINISHED" and row.data.tags.get("mqvq.failure", "") == ""
    # after it woke, the first worker logged nothing: every step past where it stalled has one value, the second's
    history = tracker.client.get_metric_history(run_id, "train/loss")
    later = [m.step for m in history if m.step > stalled_at]
    assert later and len(later) == len(set(later))
