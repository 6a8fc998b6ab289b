"""MLflow tracking: where runs go, run lifecycle, params once, metrics, tags, artifacts.

Default store: an absolute SQLite file `<home>/mlflow.db` with artifacts in `<home>/artifacts`
(home = --home, $MQVQ_HOME or ./.mqvq). `--tracking-uri` / $MLFLOW_TRACKING_URI points at a
server (http[s]://) or a database (postgresql://, mysql://, sqlite://). File stores are refused
(MLflow >= 3.13 rejects them). The explicit `MlflowClient` is used throughout: no global active
run, so DDP ranks, study workers and Optuna callbacks cannot step on each other.

Tags (structure lives in tags, never in params, so resumes never rewrite params):
    mqvq.stage, mqvq.experiment, mqvq.profile, mqvq.seed, mqvq.config_hash, mqvq.data_digest,
    mqvq.status, mqvq.heartbeat, mqvq.checkpoint, mqvq.git_commit
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mqvq.errors import UserError
from mqvq.files import file_in_the_way

SUPPORTED_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def home_path(home: str | os.PathLike | None = None) -> Path:
    """Where the home folder is (--home, else $MQVQ_HOME, else ./.mqvq), without creating it."""
    return Path(home or os.environ.get("MQVQ_HOME") or ".mqvq").expanduser().resolve()


def home_dir(home: str | os.PathLike | None = None) -> Path:
    """The writable folder holding the default store, artifacts and working checkpoints."""
    path = home_path(home)
    ensure_writable(path, "--home / MQVQ_HOME")
    return path


def ensure_writable(path: Path, what: str) -> None:
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise UserError(f"cannot write to {path} ({what}): {blocker} is a file, not a folder; choose a writable folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to {path} ({what}): {e.strerror or e}; choose a writable folder.") from None


def resolve_tracking_uri(uri: str | None, home: Path) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    if scheme not in SUPPORTED_SCHEMES:
        raise UserError(f"tracking URI {uri!r} is not supported: use sqlite:///ABS/PATH.db, http(s)://HOST:PORT or a database URL "
                        f"(postgresql://...); MLflow file stores (plain paths, file:) are refused.")
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (None for servers and other databases)."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


# plain postgresql:// is served by either driver (MLflow picks psycopg 3 when it is there)
DRIVERS = {"postgresql": ("psycopg", "psycopg2"), "postgresql+psycopg2": ("psycopg2",), "postgresql+psycopg": ("psycopg",)}


def require_driver(uri: str, what: str) -> None:
    """A PostgreSQL URL needs its Python driver; name the extra that installs it."""
    modules = DRIVERS.get(uri.split("://", 1)[0].lower(), ()) if "://" in uri else ()
    for module in modules:
        try:
            __import__(module)
            return
        except ImportError:
            continue
    if modules:
        raise UserError(f'{what} {uri} needs a PostgreSQL driver ({" or ".join(modules)}), which is not installed: '
                        f'pip install "mqvq[postgres]".')


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast with one sentence instead of MLflow's minutes of retries."""
    require_driver(uri, "the tracking store")
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                r.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(f"cannot reach the MLflow server at {uri}: {reason}; start it or pass another --tracking-uri.") from None
    elif (db := sqlite_path(uri)) is not None:
        ensure_writable(db.parent, "the SQLite tracking store's folder")


EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # + a key: a runs view the UI loads from ?viewStateShareKey=<key>


def git_commit() -> str:
    """HEAD of the checkout mqvq runs from (`-dirty` with uncommitted changes); a copy of the tree
    outside git (a snapshot for a long background run, a machine the tree was carried to) names
    its commit in $MQVQ_GIT_COMMIT."""
    if os.environ.get("MQVQ_GIT_COMMIT"):
        return os.environ["MQVQ_GIT_COMMIT"]
    root = Path(__file__).resolve().parent.parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


@contextlib.contextmanager
def _file_lock(path: Path):
    """Serialise store creation and experiment get-or-create between local processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stderr for our own progress
    for name in ("mlflow", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Tracker:
    """A thin, explicit wrapper over MlflowClient for one store."""

    def __init__(self, uri: str | None = None, home: str | os.PathLike | None = None, must_exist: bool = False):
        """`must_exist` (commands that only read): refuse a SQLite store that is not there instead of
        creating an empty one that would report every run as missing. `created` says whether this
        call made a new store."""
        self.uri = resolve_tracking_uri(uri, home_path(home))
        db = sqlite_path(self.uri)
        if must_exist and db is not None and not db.is_file():
            raise UserError(f"there is no tracking store at {db}: check --home, --tracking-uri or MLFLOW_TRACKING_URI "
                            f"(this command only reads, so it does not create one).")
        self.created = db is not None and not db.is_file()
        self.home = home_dir(home)  # the same folder, now created and checked writable
        self._artifact_uris: dict[str, str] = {}
        check_reachable(self.uri)
        _quiet_mlflow()
        from mlflow.tracking import MlflowClient

        try:
            with _file_lock(self.home / ".store.lock"):
                self.client = MlflowClient(tracking_uri=self.uri)
                self.client.search_experiments(max_results=1)  # opens (and migrates) the store now
        except UserError:
            raise
        except Exception as e:  # driver errors vary by backend
            raise UserError(f"cannot open the tracking store {self.uri}: {str(e).splitlines()[0]}") from None

    # ------------------------------------------------------------------ experiments and runs
    def experiment_id(self, name: str) -> str:
        with _file_lock(self.home / ".store.lock"):
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                if exp.lifecycle_stage == "deleted":
                    self.client.restore_experiment(exp.experiment_id)
                return exp.experiment_id
            location = None
            if self.uri.startswith("sqlite:///"):
                location = (self.home / "artifacts" / name.replace("/", "_")).as_uri()
            return self.client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})

    def mark_model_training(self) -> None:
        """Tag every experiment without a kind for MLflow 3's model-training view (runs, metrics,
        charts); without the tag its UI opens the GenAI (traces) overview."""
        for exp in self.client.search_experiments():
            if EXPERIMENT_KIND_TAG not in exp.tags:
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)

    def save_runs_view(self, experiment_id: str, key: str, columns: list[str]) -> None:
        """A runs-table view the MLflow UI opens with `?viewStateShareKey=<key>`: these columns shown
        in this order (e.g. metrics.`fd_vgg16`), wide enough for their values, the oldest run first,
        stage runs folded under their row."""
        import json

        order = ["duration", *columns]  # (the Duration column's id in MLflow 3.17); columns not listed come after these
        state = {"selectedColumns": columns, "columnOrder": order, "orderByKey": "attributes.start_time", "orderByAsc": True,
                 "searchFilter": "", "runsExpanded": {}, "columnWidths": {c: 170 for c in columns}}
        self.client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key, json.dumps(state))

    def start_run(self, experiment: str, run_name: str, tags: dict[str, Any], params: dict[str, Any] | None = None,
                  parent_run_id: str | None = None) -> str:
        tags = {k: str(v) for k, v in tags.items()}
        tags.setdefault("mqvq.git_commit", git_commit())
        tags["mlflow.source.git.commit"] = tags["mqvq.git_commit"]
        tags["mqvq.status"] = "running"
        tags["mqvq.heartbeat"] = str(time.time())
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name, tags=tags)
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def resume_run(self, run_id: str) -> None:
        """Running again: the reason it stopped no longer describes it (a finished run must not keep
        'interrupted at step 5')."""
        self.client.update_run(run_id, status="RUNNING")
        self.set_tags(run_id, {"mqvq.status": "running", "mqvq.heartbeat": time.time(), "mqvq.failure": ""})

    def end_run(self, run_id: str, status: str = "FINISHED", reason: str = "") -> None:
        tags: dict[str, Any] = {"mqvq.status": status.lower()}
        if reason:
            tags["mqvq.failure"] = reason[:4000]
        self.set_tags(run_id, tags)
        self.client.set_terminated(run_id, status=status)

    def find_runs(self, experiment: str, filter_string: str = "", order_by: list[str] | None = None) -> list:
        exp = self.client.get_experiment_by_name(experiment)
        return [] if exp is None else self.search_all([exp.experiment_id], filter_string, order_by)

    def find_runs_everywhere(self, filter_string: str, order_by: list[str] | None = None) -> list:
        """Runs matching `filter_string` in every experiment of the store (e.g. a reusable stage-1 model)."""
        return self.search_all([e.experiment_id for e in self.client.search_experiments()], filter_string, order_by)

    def search_all(self, experiment_ids: list[str], filter_string: str, order_by: list[str] | None = None) -> list:
        """Every matching run, page by page (search_runs returns at most 1000 at a time)."""
        out, token = [], None
        while experiment_ids:
            page = self.client.search_runs(experiment_ids, filter_string, order_by=order_by or ["attributes.start_time DESC"],
                                           max_results=1000, page_token=token)
            out += list(page)
            token = page.token
            if not token:
                break
        return out

    def get_run(self, run_id: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException:
            raise UserError(f"no MLflow run {run_id!r} in {self.uri}.") from None

    # ------------------------------------------------------------------ logging
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_str(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow caps params per batch at 100
            self.client.log_batch(run_id, params=items[i: i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i: i + 1000])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def heartbeat(self, run_id: str) -> None:
        self.client.set_tag(run_id, "mqvq.heartbeat", str(time.time()))

    def _moved_artifacts(self, run_id: str) -> Path | None:
        """Where this run's artifacts live under *this* home when the store was copied or moved from
        another folder (the database still records the old absolute path); None when they are where
        the database says. Artifacts must follow the store being used, never write into the old one."""
        if sqlite_path(self.uri) is None:
            return None
        if run_id not in self._artifact_uris:  # fixed at the run's creation: one query per run, not per artifact
            self._artifact_uris[run_id] = self.client.get_run(run_id).info.artifact_uri
        uri = self._artifact_uris[run_id]
        if not uri.startswith("file://"):
            return None
        from urllib.parse import unquote, urlparse

        path = Path(unquote(urlparse(uri).path))  # <old home>/artifacts/<experiment>/<run id>/artifacts
        if len(path.parents) < 3:
            return None
        root = path.parents[2]
        here = self.home / "artifacts"
        if root.name != "artifacts" or root == here:
            return None
        return here / path.relative_to(root)

    def _write(self, run_id: str, name: str, write) -> bool:
        """Write one artifact into the moved store's folder; False when MLflow's own path is right."""
        target = self._moved_artifacts(run_id)
        if target is None:
            return False
        out = target / name
        out.parent.mkdir(parents=True, exist_ok=True)
        write(out)
        return True

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        import shutil

        name = f"{artifact_path}/{Path(path).name}" if artifact_path else Path(path).name
        if not self._write(run_id, name, lambda out: shutil.copyfile(path, out)):
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_dict(self, run_id: str, data: dict, name: str) -> None:
        import json

        if not self._write(run_id, name, lambda out: out.write_text(json.dumps(data, indent=2))):
            self.client.log_dict(run_id, data, name)

    def log_image(self, run_id: str, image, name: str) -> None:
        def save(out: Path) -> None:
            import numpy as np
            from PIL import Image

            (image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))).save(out)

        if not self._write(run_id, name, save):
            self.client.log_image(run_id, image, artifact_file=name)

    def log_figure(self, run_id: str, fig, name: str) -> None:
        """A matplotlib figure as a PNG artifact; the figure is closed (long runs draw many)."""
        import matplotlib.pyplot as plt

        try:
            if not self._write(run_id, name, lambda out: fig.savefig(out)):
                self.client.log_figure(run_id, fig, name)
        finally:
            plt.close(fig)

    def download_artifact(self, run_id: str, path: str, dst: Path) -> Path:
        """A run artifact as a local file: from this home's copy when the store was copied or moved
        here (e.g. fetched back from a GPU box), else from where the database says."""
        moved = self._moved_artifacts(run_id)
        if moved is not None:
            if (moved / path).is_file():
                return moved / path
            raise UserError(f"artifact {path} of run {run_id} is not under {moved} (the store was copied or moved "
                            f"without its artifacts folder).")
        dst.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(dst)))


def _param_str(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(str(x) for x in v) + "]"
    return str(v)
