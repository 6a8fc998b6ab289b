"""Tracking, row leases and Optuna storage against a real PostgreSQL server started for the test
(Debian's `postgresql` package); skipped, with the reason, where it cannot be started."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration  # a PostgreSQL server (the `postgres_url` fixture in conftest.py)


def test_tracking_and_leases_on_postgresql(postgres_url, tmp_path):
    from mqvq.studies import lease
    from mqvq.tracking import Tracker

    t = Tracker(f"{postgres_url}/mlflow", tmp_path / "home")
    run = t.start_run("exp", "r", {"mqvq.stage": "stage1"})
    t.log_metrics(run, {"loss": 1.5}, step=0)
    t.end_run(run)
    assert t.get_run(run).info.status == "FINISHED" and t.get_run(run).data.metrics["loss"] == 1.5
    row = t.start_run("exp", "row", {"mqvq.kind": "row"})
    assert lease.claim(t, row, "a:1:x", timeout=60)
    assert not lease.claim(t, row, "b:2:y", timeout=60)  # a live lease is not taken over
    lease.release(t, row, "a:1:x")
    assert lease.claim(t, row, "b:2:y", timeout=60)


def test_optuna_storage_on_postgresql(postgres_url, tmp_path):
    import optuna

    from mqvq.studies.search import open_storage

    storage, address = open_storage(f"{postgres_url}/optuna", tmp_path, workers=2)
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda trial: (trial.suggest_float("x", -1, 1)) ** 2, n_trials=3)
    again = optuna.load_study(study_name="s", storage=storage)
    assert len(again.trials) == 3 and "postgresql" in address


def test_a_missing_driver_names_the_extra(monkeypatch, tmp_path):
    import builtins

    from mqvq.errors import UserError
    from mqvq.tracking import Tracker

    real = builtins.__import__

    def no_driver(name, *a, **k):
        if name.split(".")[0] in ("psycopg2", "psycopg"):
            raise ModuleNotFoundError(f"No module named '{name}'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_driver)
    with pytest.raises(UserError, match=r'pip install "mqvq\[postgres\]"'):
        Tracker("postgresql://nobody@127.0.0.1:9/mlflow", tmp_path / "home")
