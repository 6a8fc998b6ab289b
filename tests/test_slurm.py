"""`mqvq study submit --slurm`, `study status` and `study cancel` on a real one-node SLURM that these
tests start (tests/slurm.py; skipped when slurm-wlm and munge are not installed). Only the cases a
real cluster cannot produce here (a refused account, several nodes) use a stand-in, and say so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm import SlurmCluster
from tests.test_studies import write_study

pytestmark = pytest.mark.integration  # a SLURM controller and node, and whole studies as its jobs

ROOT = Path(__file__).resolve().parent.parent
ONE_THREAD = ["--setup", "export OMP_NUM_THREADS=1"]  # tasks and the reference run alike, so their numbers can match


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SlurmCluster.start(tmp_path_factory.mktemp("slurm"))
    yield c
    c.stop()


@pytest.fixture
def site(cluster, tmp_path, monkeypatch):
    """A researcher's shell on the cluster: SLURM_CONF, a studies folder and a home of this test's."""
    studies, home = tmp_path / "studies", tmp_path / "home"
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    monkeypatch.setenv("MQVQ_STUDIES", str(studies))
    monkeypatch.setenv("MQVQ_HOME", str(home))
    yield studies, home
    cluster.run("scancel", "--full", "-u", "root")
    cluster.wait_idle(60)


def mqvq(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mqvq", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def status(name: str) -> list[dict]:
    p = mqvq("study", "status", name, "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["rows"]


def runs(home: Path, experiment: str):
    from mqvq.tracking import Tracker

    return Tracker(None, home).find_runs(experiment)


def test_submit_queues_every_missing_row_and_returns(cluster, site):
    studies, home = site
    write_study(studies, "two", [("a", "vqgan-f16"), ("b", "mqvae-f16-adaptive-50")], metrics='["rfid", "usage"]')
    dry = mqvq("study", "submit", "two", "--slurm", "--dry-run", "--time", "0:30:00", *ONE_THREAD)
    assert dry.returncode == 0, dry.stderr
    assert not home.exists()  # a dry run writes nothing: no store, no folder
    assert f"--output={home}/slurm/" in dry.stdout  # the script names where the logs will be
    assert "would queue 2 tasks: a (seed 0), b (seed 0)" in dry.stdout
    for line in (
        "#SBATCH --array=0-1%1",
        "#SBATCH --time=30",
        "#SBATCH --signal=USR2@90",
        "#SBATCH --requeue",
        "export OMP_NUM_THREADS=1",
    ):
        assert line in dry.stdout, line
    assert cluster.run("squeue", "-h").stdout == ""  # a dry run queues nothing

    p = mqvq("study", "submit", "two", "--slurm", "--time", "30", *ONE_THREAD)
    assert p.returncode == 0, p.stderr
    assert "queued SLURM job" in p.stdout  # returns once queued, not when done: its tasks are still queued or running
    job = p.stdout.split("queued SLURM job ")[1].split(":")[0]
    assert {r["slurm"]["state"] for r in status("two")} <= {"queued", "running"}
    cluster.wait_idle()
    rows = status("two")
    assert [(r["row"], r["status"], r["slurm"]["job"], r["slurm"]["state"]) for r in rows] == [
        ("a", "finished", f"{job}_0", "completed"),
        ("b", "finished", f"{job}_1", "completed"),
    ]
    assert all({"rfd_vgg16", "usage"} <= set(r["metrics"]) for r in rows)
    parents = [r for r in runs(home, "two/smoke") if r.data.tags.get("mqvq.kind") == "row"]
    assert sorted(r.data.tags["mqvq.slurm.job"] for r in parents) == [f"{job}_0", f"{job}_1"]
    assert all(r.info.status == "FINISHED" for r in runs(home, "two/smoke"))
    assert (home / "slurm" / f"{job}_0" / f"{job}_0_0_log.out").is_file()  # task logs under <home>/slurm/<job id>/
    again = mqvq("study", "submit", "two", "--slurm")
    assert again.returncode == 0 and "nothing to submit" in again.stdout
    assert cluster.run("squeue", "-h").stdout == ""


def test_a_requeued_task_resumes_its_row_from_the_checkpoint(cluster, site, tmp_path):
    studies, home = site
    extra = ["stage1.train.steps=100", "stage1.train.ckpt_every=10", "stage1.train.log_every=10"]
    write_study(studies, "long", [("a", "mqvae-f16-adaptive-50")], extra=extra, metrics='["rfid", "usage"]')
    p = mqvq("study", "submit", "long", "--slurm", *ONE_THREAD)
    assert p.returncode == 0, p.stderr
    job = p.stdout.split("queued SLURM job ")[1].split(":")[0]
    ckpt = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and ckpt is None:  # mid stage 1, with a checkpoint written
        found = list((home / "checkpoints").glob("*/last.pt")) if (home / "checkpoints").is_dir() else []
        ckpt = found[0] if found else None
        time.sleep(0.2)
    assert ckpt is not None, cluster.run("squeue").stdout
    time.sleep(1.0)
    assert cluster.run("scontrol", "requeue", job).returncode == 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "PENDING" not in cluster.run("squeue", "-h", "-j", job, "-o", "%T").stdout:
        time.sleep(0.5)
    killed = [r for r in runs(home, "long/smoke") if r.data.tags.get("mqvq.stage") == "stage1"]
    assert [r.info.status for r in killed] == ["KILLED"] and "interrupted at step" in killed[0].data.tags[
        "mqvq.failure"
    ]
    assert status("long")[0]["slurm"]["state"] == "requeued" or status("long")[0]["slurm"]["state"] == "queued"
    cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")  # SLURM holds a requeued job a while first
    cluster.wait_idle()
    every = runs(home, "long/smoke")
    assert not [r for r in every if r.info.status != "FINISHED"]  # none RUNNING or KILLED in the end
    parents = [r for r in every if r.data.tags.get("mqvq.kind") == "row"]
    stage1 = [r for r in every if r.data.tags.get("mqvq.stage") == "stage1"]
    assert (
        len(parents) == 1 and len(stage1) == 1 and stage1[0].info.run_id == killed[0].info.run_id
    )  # the same run, resumed
    assert int(stage1[0].data.tags["mqvq.resumed_from_step"]) > 0
    # the same row, uninterrupted, on this machine with the same thread count: the same numbers
    ref = mqvq(
        "study",
        "run",
        "long",
        "--no-progress",
        "--home",
        str(tmp_path / "ref"),
        env={"OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert ref.returncode == 0, ref.stderr
    mine = parents[0].data.metrics
    theirs = [r for r in runs(tmp_path / "ref", "long/smoke") if r.data.tags.get("mqvq.kind") == "row"][0].data.metrics
    assert {k: mine[k] for k in ("rfd_vgg16", "usage")} == {k: theirs[k] for k in ("rfd_vgg16", "usage")}


def test_sigusr2_before_the_time_limit_checkpoints_and_requeues_the_task(cluster, site):
    """What SLURM sends `--signal` seconds before a task's time limit, and on preemption: the row
    checkpoints and ends KILLED, submitit requeues the task, and the requeued task finishes the row."""
    studies, home = site
    write_study(
        studies,
        "usr2",
        [("a", "mqvae-f16-adaptive-50")],
        metrics='["usage"]',
        extra=["stage1.train.steps=100", "stage1.train.ckpt_every=10", "stage1.train.log_every=10"],
    )
    p = mqvq("study", "submit", "usr2", "--slurm", *ONE_THREAD)
    assert p.returncode == 0, p.stderr
    job = p.stdout.split("queued SLURM job ")[1].split(":")[0]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(home.glob("checkpoints/*/last.pt")):
        time.sleep(0.2)
    assert cluster.run("scancel", "--signal=USR2", job).returncode == 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and "PENDING" not in cluster.run("squeue", "-h", "-j", job, "-o", "%T").stdout:
        time.sleep(0.5)
    assert status("usr2")[0]["slurm"]["state"] == "requeued"  # by submitit, not by hand
    cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    cluster.wait_idle()
    every = runs(home, "usr2/smoke")
    assert not [r for r in every if r.info.status != "FINISHED"]
    [stage1] = [r for r in every if r.data.tags.get("mqvq.stage") == "stage1"]
    assert int(stage1.data.tags["mqvq.resumed_from_step"]) > 0
    log = "".join(f.read_text() for f in (home / "slurm" / job).glob(f"{job}_0_log.*"))
    assert "Caught signal SIGUSR2" in log and "Requeued job" in log and "stage 1 resuming" in log


def test_cancel_leaves_nothing_queued_and_no_run_running(cluster, site):
    studies, home = site
    write_study(
        studies,
        "slow",
        [("a", "mqvae-f16-adaptive-50"), ("b", "mqvae-f16-random-50")],
        extra=["stage1.train.steps=2000", "stage1.train.log_every=10"],
        metrics='["usage"]',
    )
    p = mqvq("study", "submit", "slow", "--slurm", *ONE_THREAD)
    assert p.returncode == 0, p.stderr
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not [r for r in runs(home, "slow/smoke") if "train/loss" in r.data.metrics]:
        time.sleep(0.5)  # task 0 trains, task 1 waits its turn
    c = mqvq("study", "cancel", "slow")
    assert c.returncode == 0, c.stderr
    assert "cancelled 2 tasks" in c.stdout
    assert cluster.run("squeue", "-h").stdout == ""
    every = runs(home, "slow/smoke")
    assert not [r for r in every if r.info.status in ("RUNNING", "SCHEDULED")]
    assert sorted(r.info.status for r in every if r.data.tags.get("mqvq.kind") == "row") == ["KILLED", "KILLED"]
    after = status("slow")
    assert [r["status"] for r in after] == ["missing", "missing"]  # resumable by the next submit or run
    assert [r["slurm"]["state"] for r in after] == ["cancelled", "cancelled"]  # this cluster keeps no accounting
    assert "no queued or running SLURM task" in mqvq("study", "cancel", "slow").stdout


def _refused(*args, path: str | None = None, monkeypatch=None) -> str:
    """`mqvq study submit ...` in this process (the CLI's own error path, without a second start-up)."""
    from typer.testing import CliRunner

    from mqvq.cli import app

    if path is not None:
        monkeypatch.setenv("PATH", path)
    r = CliRunner().invoke(app, ["study", "submit", *args])
    if path is not None:
        monkeypatch.undo()
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    return " ".join(r.output.split())


def test_bad_input_is_one_sentence_and_queues_nothing(cluster, site, tmp_path, monkeypatch):
    studies, home = site
    write_study(studies, "two", [("a", "vqgan-f16")])
    assert "pass --slurm" in _refused("two")
    assert "--slurm needs a SLURM client: no `sbatch` on PATH" in _refused(
        "two", "--slurm", path="/nonexistent", monkeypatch=pytest.MonkeyPatch()
    )
    assert "--time '1h' is not a SLURM time" in _refused("two", "--slurm", "--time", "1h")
    assert "--partition 'gpu' is not a partition of this cluster" in _refused("two", "--slurm", "--partition", "gpu")
    assert "partition 'debug' has none" in _refused("two", "--slurm", "--partition", "debug", "--gpus-per-task", "1")
    # a stand-in for what this cluster cannot refuse (it keeps no accounts): sbatch as SLURM answers a wrong one
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "sbatch").write_text(
        "#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid account or "
        "account/partition combination specified' >&2\nexit 1\n"
    )
    (stub / "sbatch").chmod(0o755)
    said = _refused(
        "two", "--slurm", "--account", "nope", path=f"{stub}:{os.environ['PATH']}", monkeypatch=pytest.MonkeyPatch()
    )
    assert "SLURM refused the array: invalid account or account/partition combination specified" in said
    assert cluster.run("squeue", "-h").stdout == ""
    assert all(
        r.info.status == "KILLED" for r in runs(home, "two/smoke")
    )  # a refused submission leaves nothing SCHEDULED


def test_a_sqlite_store_is_refused_for_several_nodes_unless_shared(tmp_path):
    """Several nodes cannot be produced here: the rule itself, with the node count a partition reports."""
    from mqvq.errors import UserError
    from mqvq.studies.cluster import SlurmOptions, check_shared_store, filesystem_type, parse_time
    from mqvq.tracking import Tracker

    tracker = Tracker(None, tmp_path / "home")
    with pytest.raises(UserError, match="pass --tracking-uri .* or a --home on a filesystem every node mounts"):
        check_shared_store(tracker, SlurmOptions(partition="gpu"), nodes=4)
    with pytest.raises(UserError, match="--array-parallelism 4 runs tasks side by side"):
        check_shared_store(tracker, SlurmOptions(array_parallelism=4), nodes=0)
    check_shared_store(tracker, SlurmOptions(array_parallelism=4), nodes=1)  # one node shares its local disk
    assert filesystem_type(Path("/proc")) == "proc"
    from mqvq.studies.cluster import task_command
    from mqvq.studies.spec import load_study

    two_gpus = task_command(load_study("ablation-mask"), "ablation-mask", "mini", "adaptive-25", 1, tracker, nproc=2)
    assert two_gpus[3:] == [
        "study",
        "run",
        "ablation-mask",
        "--profile",
        "mini",
        "--only",
        "adaptive-25",
        "--seeds",
        "1",
        "--home",
        str(tracker.home),
        "--no-progress",
        "--nproc",
        "2",
    ]
    assert [parse_time(t) for t in ("90", "1:30", "2:00:00", "1-0", "1-2:30", "0-0:0:30")] == [
        90,
        2,
        120,
        1440,
        1590,
        1,
    ]


@pytest.mark.parametrize("moment", ["before sbatch", "during sbatch"])
def test_ctrl_c_during_submit_leaves_no_run_scheduled_without_a_task(cluster, site, monkeypatch, moment):
    """Before the array is queued, Ctrl-C ends the rows' runs KILLED (no task would ever run them); during
    sbatch it is held until the array is queued and its job ids are on the runs, which stay SCHEDULED."""
    import signal

    import mqvq.studies.cluster as cluster_mod
    from mqvq.studies.cluster import SlurmOptions, submit
    from mqvq.studies.spec import load_study
    from mqvq.tracking import Tracker

    studies, home = site
    write_study(studies, "two", [("a", "vqgan-f16"), ("b", "mqvae-f16-adaptive-50")], metrics='["usage"]')
    if moment == "before sbatch":
        real = cluster_mod.ensure_row_run
        made = []

        def ensure_row_run(*a, **k):  # the Ctrl-C lands after the first row's run exists
            if made:
                raise KeyboardInterrupt
            made.append(real(*a, **k))
            return made[-1]

        monkeypatch.setattr(cluster_mod, "ensure_row_run", ensure_row_run)
    else:
        real_executor = cluster_mod._executor

        def executor(*a, **k):  # a real executor whose first submit gets a SIGINT, as a Ctrl-C would
            ex = real_executor(*a, **k)
            real_submit = ex.submit

            def submit_one(*sa, **sk):
                os.kill(os.getpid(), signal.SIGINT)
                return real_submit(*sa, **sk)

            ex.submit = submit_one
            return ex

        monkeypatch.setattr(cluster_mod, "_executor", executor)
    tracker = Tracker(None, home)
    previous = signal.signal(
        signal.SIGINT, signal.default_int_handler
    )  # Ctrl-C as a CLI user has it (an earlier test may have changed it)
    try:
        with pytest.raises(KeyboardInterrupt):
            submit(tracker, load_study("two"), "two", "smoke", SlurmOptions(time="5"))
    finally:
        signal.signal(signal.SIGINT, previous)
    rows = runs(home, "two/smoke")
    queued = cluster.run("squeue", "-h", "-o", "%i").stdout.split()
    if moment == "before sbatch":
        assert [r.info.status for r in rows] == ["KILLED"] and queued == []
        assert rows[0].data.tags["mqvq.failure"] == "the submission was interrupted"
    else:
        assert sorted(r.info.status for r in rows) == ["SCHEDULED", "SCHEDULED"] and queued
        assert all(r.data.tags.get("mqvq.slurm.job") for r in rows)


def test_a_task_carries_mlflow_settings_by_name_only(tmp_path, monkeypatch):
    """The pickled task lies on a shared file system: MLflow credentials must not be in it. The task
    reads them where it runs, and says in one sentence when the job's environment lacks one."""
    import pickle

    from mqvq.studies.cluster import RowTask, task_environment

    env, needs = task_environment({"MQVQ_STUDIES": "/s", "MLFLOW_TRACKING_PASSWORD": "hunter2", "PATH": "/bin"})
    assert env == {"MQVQ_STUDIES": "/s"} and needs == ("MLFLOW_TRACKING_PASSWORD",)
    out = tmp_path / "seen"
    task = RowTask(
        [sys.executable, "-c", f"import os; open({str(out)!r}, 'w').write(os.environ['MLFLOW_TRACKING_PASSWORD'])"],
        env,
        needs,
    )
    blob = pickle.dumps(task)
    assert b"hunter2" not in blob
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(
        RuntimeError, match="MLFLOW_TRACKING_PASSWORD was set where the study was submitted but is not in this task"
    ):
        pickle.loads(blob)()
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")
    assert pickle.loads(blob)() == 0 and out.read_text() == "hunter2"
