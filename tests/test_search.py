"""Optuna sampling search: total trial counts, resumable, parallel without duplicates, pruning, MLflow children."""

import json

import optuna
import pytest
from typer.testing import CliRunner

from mqvq.cli import app
from mqvq.stages.train_stage1 import train_stage1
from mqvq.stages.train_stage2 import train_stage2

runner = CliRunner()
S2 = [
    "stage2.train.steps=4",
    "stage2.train.batch_size=8",
    "stage2.train.log_every=2",
    "stage2.train.val_every=2",
    "stage2.sampling.batch_size=8",
    "eval.batch_size=8",
]
FAST = ["--num-samples", "16", "--rungs", "8", "--no-progress"]


@pytest.fixture
def model_run(trained):
    s1, s2 = trained  # the session's tiny row, in this test's home
    return s2, s1


def _search(run_id, home, *args):
    return runner.invoke(app, ["search", "sampling", run_id, "--home", str(home), *FAST, *args])


def _study(home, run_id, metric="fd_vgg16", n=16, name=None):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(home / "optuna" / "sampling.journal")))
    return optuna.load_study(study_name=name or f"sampling/{run_id}/{metric}/{n}", storage=storage)


@pytest.mark.integration
def test_trials_in_total_children_and_best_round_trip(model_run, tracker, tmp_path):
    run_id, _ = model_run
    r = _search(run_id, tracker.home, "--trials", "4", "--pruner", "none")  # pruning has its own test
    assert r.exit_code == 0, r.output
    study = _study(tracker.home, run_id)
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)
    children = tracker.find_runs(
        run_id and tracker.client.get_experiment(tracker.get_run(run_id).info.experiment_id).name,
        f"tags.\"mlflow.parentRunId\" = '{run_id}'",
    )
    assert sorted(int(c.data.tags["mqvq.trial"]) for c in children) == [0, 1, 2, 3]
    for c in children:
        assert {"top_k", "top_p", "top_k_pos", "top_p_pos"} <= set(c.data.params)
        assert "fd_vgg16" in c.data.metrics and c.data.tags["mqvq.trial_state"] == "complete"
        hist = tracker.client.get_metric_history(c.info.run_id, "fd_vgg16")
        assert sorted(m.step for m in hist) == [8, 16]  # the distance at each sample count
        assert tracker.download_artifact(c.info.run_id, "figures/samples.png", tmp_path / "dl").is_file()
    r = _search(run_id, tracker.home, "--trials", "4", "--pruner", "none")
    assert r.exit_code == 0 and len(_study(tracker.home, run_id).trials) == 4  # a finished search starts nothing
    tags = tracker.get_run(run_id).data.tags
    best = study.best_trial
    assert int(tags["mqvq.sampling.best.top_k"]) == best.params["top_k"]
    assert float(tags["mqvq.sampling.best.value"]) == pytest.approx(best.value)
    out = tmp_path / "s"
    r = runner.invoke(
        app,
        [
            "sample",
            run_id,
            "--num",
            "3",
            "--out",
            str(out),
            "--sampling",
            "best",
            "--home",
            str(tracker.home),
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    used = json.loads((out / "sampling.json").read_text())["sampling"]
    assert used["top_k"] == best.params["top_k"] and used["top_p_pos"] == pytest.approx(best.params["top_p_pos"])
    r = runner.invoke(app, ["search", "status", run_id, "--home", str(tracker.home), "--json"])
    data = json.loads(r.stdout)["searches"][0]
    assert data["trials"] == 4 and data["best_trial"] == best.number and "optuna-dashboard" in data["dashboard"]
    assert data["in_use"] is True  # search status says which search --sampling best uses
    before = tracker.get_run(run_id).data.metrics.get("fd_vgg16")
    r = runner.invoke(
        app, ["eval", run_id, "--metrics", "fid", "--sampling", "best", "--home", str(tracker.home), "--no-progress"]
    )
    assert r.exit_code == 0, r.output
    run = tracker.get_run(run_id)
    assert run.data.metrics.get("fd_vgg16") == before and "fd_vgg16_best" in run.data.metrics  # nothing overwritten
    assert json.loads(run.data.tags["mqvq.eval.fd_vgg16_best.sampling"])["top_k"] == best.params["top_k"]
    assert run.data.tags["mqvq.eval.fd_vgg16_best.sampling_choice"] == "best"


@pytest.mark.integration
def test_two_workers_exact_count_and_no_duplicate_grid_point(model_run, tracker):
    run_id, _ = model_run
    r = _search(
        run_id,
        tracker.home,
        "--trials",
        "100",
        "--sampler",
        "grid",
        "--workers",
        "2",
        "--grid-points",
        "2",
        "--top-k",
        "2:16",
        "--top-p",
        "1.0",
        "--top-k-pos",
        "2:8",
        "--top-p-pos",
        "0.8:1.0",
    )
    assert r.exit_code == 0, r.output
    study = _study(tracker.home, run_id)
    points = [json.dumps(t.params, sort_keys=True) for t in study.trials]
    assert len(points) == 8 and len(set(points)) == 8  # 2 x 2 x 2 grid, every point once, then it stops
    assert {t.user_attrs["worker"] for t in study.trials}.__len__() >= 1
    r = _search(run_id, tracker.home, "--trials", "5", "--workers", "2", "--study-name", "tpe2")
    assert r.exit_code == 0, r.output
    assert len(_study(tracker.home, run_id, name="tpe2").trials) == 5  # exactly N across two workers


@pytest.mark.integration
def test_pruned_trials_are_recorded_as_pruned(model_run, tracker, monkeypatch):
    run_id, _ = model_run
    monkeypatch.setattr(
        optuna.pruners, "MedianPruner", lambda **k: optuna.pruners.ThresholdPruner(upper=0.0)
    )  # prune all
    from mqvq.studies.search import SearchSpec, default_space, run_search

    space = default_space(16, 16, False)
    summary = run_search(
        tracker, SearchSpec(run_id, "fd_vgg16", 16, 3, "random", space, [8]), progress=False, log=lambda m: None
    )
    assert summary["states"] == {"pruned": 3}
    study = _study(tracker.home, run_id)
    assert all(t.state.name == "PRUNED" and list(t.intermediate_values) == [8] for t in study.trials)
    kids = tracker.find_runs(
        tracker.client.get_experiment(tracker.get_run(run_id).info.experiment_id).name,
        f"tags.\"mlflow.parentRunId\" = '{run_id}'",
    )
    assert len(kids) == 3 and all(k.data.tags["mqvq.trial_state"] == "pruned" for k in kids)


def _has_postgres_driver() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) for m in ("psycopg", "psycopg2"))


@pytest.mark.integration
def test_search_input_errors(model_run, tracker, tmp_path):
    run_id, stage1_run = model_run
    assert _search(run_id, tracker.home, "--trials", "2").exit_code == 0
    for args, msg in [
        (["--top-k", "50:10"], "is an empty range"),
        (["--top-p", "0:0.5"], "must lie in (0, 1]"),
        (["--top-k", "0:5"], "must be at least 1"),
        (["--temperature", "abc"], "use LOW:HIGH"),
        (
            ["--storage", "postgresql://nobody@127.0.0.1:9/optuna"],  # with the driver: the server; without: the extra
            "cannot open the Optuna storage" if _has_postgres_driver() else 'pip install "mqvq[postgres]".',
        ),
        (["--storage", "sqlite:///x.db", "--workers", "2"], "SQLite cannot serve parallel Optuna workers"),
        (["--sampler", "cmaes"], "use tpe, gp, grid or random"),
        (["--metric", "kid"], "use fid or fd_vgg16"),
        (["--trials", "4", "--top-p", "0.5:0.9"], "exists with a different space"),
        (["--top-k", "100:200"], "--top-k 200 exceeds this model's K = 16 codes: use at most 16."),
        (["--top-k-pos", "1:1000"], "--top-k-pos 1000 exceeds this model's L = 16 positions: use at most 16."),
    ]:
        r = _search(run_id, tracker.home, *args)
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, (args, r.output)
    r = _search(stage1_run, tracker.home, "--trials", "2")
    assert r.exit_code == 2 and "searches need a stage-2 model" in r.output
    r = runner.invoke(
        app,
        [
            "sample",
            stage1_run,
            "--num",
            "1",
            "--out",
            str(tmp_path / "x"),
            "--sampling",
            "best",
            "--home",
            str(tracker.home),
        ],
    )
    assert r.exit_code == 2
    r = runner.invoke(
        app,
        ["sample", run_id, "--num", "1", "--out", str(tmp_path / "y"), "--top-k", "100", "--home", str(tracker.home)],
    )
    assert (
        r.exit_code == 2
        and "--top-k 100 exceeds this model's K = 16 codes" in r.output
        and not (tmp_path / "y").exists()
    )
    assert len(_study(tracker.home, run_id).trials) == 2  # nothing lost


def test_a_quicker_or_worse_search_never_replaces_the_best_settings_in_use(tracker):
    """Issue: a 1-trial search at 16 samples overwrote the best of a 6-trial search at 64 samples."""
    from types import SimpleNamespace

    from optuna.trial import TrialState

    from mqvq.config import SamplingConfig
    from mqvq.stages.generate import best_sampling
    from mqvq.studies.search import Range, SearchSpec, _write_best, best_in_use
    from mqvq.tracking.tags import SAMPLING_SEARCHED

    run_id = tracker.start_run("x", "model", {"mqvq.stage": "stage2"})

    def search(metric, n, value, top_k, name):
        spec = SearchSpec(
            run_id, metric, n, 1, "tpe", {"top_k": Range(1, 64), "top_p": Range(0.9, 0.9)}, [], 3, 0, name
        )
        trial = SimpleNamespace(value=value, params={"top_k": top_k}, number=0, state=TrialState.COMPLETE)
        _write_best(tracker, spec, SimpleNamespace(get_trials=lambda deepcopy=False, states=(): [trial]))
        return best_in_use(tracker, run_id)

    assert search("fd_vgg16", 64, 209.36, 40, "a")["study"] == "a"
    assert search("fd_vgg16", 16, 244.80, 5, "b")["study"] == "a"  # fewer samples
    assert search("fd_vgg16", 64, 230.00, 6, "c")["study"] == "a"  # same count, worse
    assert search("fid", 1000, 12.0, 7, "d")["study"] == "a"  # another metric: not comparable
    assert search("fd_vgg16", 64, 200.00, 30, "e")["study"] == "e"  # same count, better
    assert search("fd_vgg16", 128, 250.00, 20, "f")["study"] == "f"  # more samples of the same metric
    assert best_sampling(tracker, run_id, SamplingConfig()).top_k == 20
    kinds = json.loads(tracker.get_run(run_id).data.tags[SAMPLING_SEARCHED])
    assert {k: v["value"] for k, v in kinds.items()} == {
        "fd_vgg16@64": 200.0,
        "fd_vgg16@16": 244.8,
        "fid@1000": 12.0,
        "fd_vgg16@128": 250.0,
    }


@pytest.mark.integration
@pytest.mark.parametrize("split", ["test", "train"])
def test_a_search_trial_and_eval_measure_one_metric_against_one_reference(split, tiny, tracker):
    """`fd_vgg16` of a search trial and of `mqvq eval` on the same model: the same reference images
    (eval.fid_reference's split, the same cached statistics), named on both runs."""
    from mqvq.stages.evaluate import evaluate_run

    cfg = tiny("mqvae-f16-adaptive-50", *S2, f"eval.fid_reference={split}", "eval.num_samples=16")
    train_stage1(cfg, tracker, progress=False)
    run_id = train_stage2(cfg, tracker, progress=False)["run_id"]
    assert _search(run_id, tracker.home, "--trials", "1", "--pruner", "none").exit_code == 0
    evaluate_run(tracker, run_id, ["fid"], progress=False)
    evaluated = tracker.get_run(run_id).data.tags
    trial = tracker.find_runs(tracker.experiment_of(run_id), f"tags.\"mlflow.parentRunId\" = '{run_id}'")[0].data.tags
    for fact in ("reference", "split", "backend"):
        assert trial[f"mqvq.eval.fd_vgg16.{fact}"] == evaluated[f"mqvq.eval.fd_vgg16.{fact}"], fact
    assert evaluated["mqvq.eval.fd_vgg16.split"] == split


def _kill_a_worker_mid_trial_then_rerun(run_id, home, tracker, storage: str | None, study_name: str):
    """Start a search, SIGKILL it while a trial runs, wait out the grace period, run it again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from mqvq.studies.search import GRACE_BEATS

    args = [
        "search",
        "sampling",
        run_id,
        "--home",
        str(home),
        "--trials",
        "2",
        "--sampler",
        "random",
        "--pruner",
        "none",
        "--num-samples",
        "256",
        "--rungs",
        "128",
        "--no-progress",
        "--heartbeat",
        "1",
        "--study-name",
        study_name,
        *(["--storage", storage] if storage else []),
    ]
    load = (
        (lambda: optuna.load_study(study_name=study_name, storage=storage))
        if storage
        else (lambda: _study(home, run_id, name=study_name))
    )
    p = subprocess.Popen([sys.executable, "-m", "mqvq", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, running = time.time() + 240, []
    run_of = lambda t: tracker.find_runs(  # noqa: E731  (the killed trial's MLflow run exists: it must end KILLED)
        tracker.experiment_of(run_id), f"tags.\"mqvq.search\" = '{study_name}' and tags.\"mqvq.trial\" = '{t.number}'"
    )
    while time.time() < deadline and not running and p.poll() is None:
        time.sleep(0.2)
        try:
            running = [
                t for t in load().trials if t.state.name == "RUNNING" and "heartbeat" in t.user_attrs and run_of(t)
            ]
        except Exception:  # noqa: BLE001  (the study does not exist yet)
            pass
    assert running, p.stderr.read().decode()[-2000:] if p.poll() is not None else "no trial started"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    killed = load().trials[running[0].number]
    assert killed.state.name == "RUNNING"  # what a dead worker leaves behind
    time.sleep(GRACE_BEATS * 1 + 1.5)  # its heartbeat is now older than the grace period
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert f"trial {killed.number} had stopped without finishing" in r.output
    trials = load().trials
    states = [t.state.name for t in trials]
    assert (
        states.count("COMPLETE") == 2 and "RUNNING" not in states and states.count("FAIL") == 1
    )  # N finished, the dead one failed
    assert trials[killed.number].state.name == "FAIL"
    retry = [t for t in trials if t.number != killed.number and t.params == killed.params]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"  # its parameters were tried again
    if storage:  # by Optuna's own heartbeat machinery, not by looking at processes
        assert retry[0].system_attrs["failed_trial"] == killed.number
    else:
        assert retry[0].user_attrs["retry_of"] == killed.number
    runs = tracker.find_runs(tracker.experiment_of(run_id), f"tags.\"mqvq.search\" = '{study_name}'")
    by_trial = {int(r.data.tags["mqvq.trial"]): r.info.status for r in runs}
    assert by_trial.pop(killed.number) == "KILLED" and set(by_trial.values()) == {
        "FINISHED"
    }  # no MLflow run left RUNNING
    r = runner.invoke(app, args)  # a finished search starts nothing
    assert r.exit_code == 0 and len(load().trials) == len(trials)


@pytest.mark.integration
def test_a_killed_search_worker_is_failed_and_retried_on_the_journal(model_run, tracker):
    """The journal uses the rows' lease rule: on this machine the dead process is seen at once."""
    run_id, _ = model_run
    _kill_a_worker_mid_trial_then_rerun(run_id, tracker.home, tracker, None, "killed-journal")


@pytest.mark.integration
def test_a_killed_search_worker_is_failed_and_retried_on_postgresql(model_run, tracker, postgres_url):
    """PostgreSQL uses Optuna's heartbeat and RetryHeartbeatStaleTrialCallback (a stale heartbeat,
    whichever machine the worker ran on)."""
    run_id, _ = model_run
    _kill_a_worker_mid_trial_then_rerun(run_id, tracker.home, tracker, f"{postgres_url}/optuna", "killed-postgresql")


@pytest.mark.integration
def test_a_worker_killed_before_its_first_heartbeat_is_failed_and_retried_on_postgresql(tmp_path, postgres_url):
    """Optuna never calls a trial stale that has no heartbeat row: a worker that died between `ask`
    and its first beat would leave its trial RUNNING forever (found when the SIGKILL test killed a
    worker in that window under load). The search fails it once it is older than the grace period."""
    import time

    from mqvq.studies.search import GRACE_BEATS, _reap_dead_trials, _retried, open_storage

    storage, _ = open_storage(f"{postgres_url}/optuna", tmp_path, 1, heartbeat=1)
    study = optuna.create_study(study_name="died-before-beating", storage=storage)
    dead = study.ask(
        {"top_k": optuna.distributions.IntDistribution(1, 64)}
    )  # what a worker killed right after ask leaves
    alive = study.ask({"top_k": optuna.distributions.IntDistribution(1, 64)})
    assert _reap_dead_trials(study, 1) == []  # younger than the grace period: could be a worker still starting
    time.sleep(GRACE_BEATS * 1 + 1.5)
    study._storage.record_heartbeat(alive._trial_id)  # a live worker beating
    optuna.trial.Trial(study, alive._trial_id).set_user_attr("heartbeat", time.time())
    assert _reap_dead_trials(study, 1) == [dead.number]
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "RUNNING", "WAITING"]
    assert trials[2].params == {} and trials[2].system_attrs["fixed_params"] == trials[0].params  # queued again
    assert _retried(trials) == {dead.number}  # counts for nothing


def test_a_trial_of_a_worker_on_another_machine_is_failed_only_when_its_heartbeat_is_stale(tmp_path):
    """The journal's rule across machines (a shared file system): no process to look at, only the heartbeat."""
    import time

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from mqvq.studies.search import GRACE_BEATS, _reap_dead_trials, _retried

    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(tmp_path / "j.journal"))))
    fresh, stale = (
        study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}),
        study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}),
    )
    for t, age in ((fresh, 1.0), (stale, GRACE_BEATS * 2.0 + 1)):
        t.set_user_attr("worker", "another-host:12345:abcd")
        t.set_user_attr("heartbeat", time.time() - age)
    assert _reap_dead_trials(study, heartbeat=2.0) == [stale.number]
    trials = study.get_trials()
    assert trials[fresh.number].state.name == "RUNNING" and trials[stale.number].state.name == "FAIL"
    assert (
        _retried(trials) == {stale.number}
        and trials[-1].state.name == "WAITING"
        and trials[-1].user_attrs["retry_of"] == stale.number
    )


def test_a_stalled_worker_whose_trial_was_failed_meanwhile_tells_nothing_and_ends_its_run(tmp_path, tracker):
    """A worker stopped past the heartbeat grace is reaped: its trial failed and its parameters queued again by
    another worker. When it wakes with a result, telling Optuna would raise (a finished trial cannot be told
    again) and hide the result's fate; instead it drops the result, ends its MLflow run KILLED and says why."""
    import time

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from mqvq.studies.search import GRACE_BEATS, _reap_dead_trials, finish_trial

    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(tmp_path / "j.journal"))))
    stalled = study.ask({"top_k": optuna.distributions.IntDistribution(1, 64)})
    stalled.set_user_attr("worker", "another-host:1:x")
    stalled.set_user_attr("heartbeat", time.time() - GRACE_BEATS * 2.0 - 1)
    assert _reap_dead_trials(study, heartbeat=2.0) == [stalled.number]  # what another worker's next ask does
    run_id = tracker.start_run("e", f"trial-{stalled.number:04d}", {})
    said = []
    assert finish_trial(study, stalled, tracker, run_id, 12.5, "complete", "fd_vgg16", said.append) is False
    run = tracker.get_run(run_id)
    assert (
        run.info.status == "KILLED" and "result was dropped" in run.data.tags["mqvq.failure"] and "dropped" in said[0]
    )
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "WAITING"]  # its retry is what counts
    fine = study.ask({"top_k": optuna.distributions.IntDistribution(1, 64)})
    other = tracker.start_run("e", "trial-fine", {})
    assert finish_trial(study, fine, tracker, other, 10.0, "complete", "fd_vgg16", said.append) is True
    assert study.get_trials()[fine.number].value == 10.0 and tracker.get_run(other).info.status == "FINISHED"
