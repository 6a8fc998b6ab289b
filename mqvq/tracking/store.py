"""MLflow tracking: where runs go, run lifecycle, params once, metrics, tags, artifacts.

Default store: an absolute SQLite file `<home>/mlflow.db` with artifacts in `<home>/artifacts`
(home = --home, $MQVQ_HOME or ./.mqvq). `--tracking-uri` / $MLFLOW_TRACKING_URI points at a
server (http[s]://) or a database (postgresql://, mysql://, sqlite://). File stores are refused
(MLflow >= 3.13 rejects them). The explicit `MlflowClient` is used throughout: no global active
run, so DDP ranks, study workers and Optuna callbacks cannot step on each other.

Tag names are in `tags.py`; typed run records (row, stage, search trial) in `records.py`. Only
`tracking/` talks to the MLflow client: the rest of mqvq calls this class.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from mqvq import signals
from mqvq.errors import UserError
from mqvq.files import file_lock
from mqvq.tracking import tags as T
from mqvq.tracking.location import check_reachable, home_dir, home_path, resolve_tracking_uri, sqlite_path
from mqvq.tracking.provenance import git_commit

EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = T.MLFLOW_EXPERIMENT_KIND, "custom_model_development"
SHARED_VIEW_TAG = T.MLFLOW_SHARED_VIEW


def _quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stderr for our own progress
    # against a tracking server MLflow prints "View run ..." / "View experiment ..." at every run's end
    # (several per study row, between mqvq's lines): mqvq says where its runs are itself
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name in ("mlflow", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _whole_calls(cls):
    """Every public method runs with interrupts held until it returns (`signals.deferred`): a Ctrl-C
    or SIGTERM raised inside MLflow's database session could leave that session unusable, and the
    run it was ending RUNNING; held, the interrupt lands between two calls, where training's own
    handlers end the run KILLED."""
    for name, fn in list(vars(cls).items()):
        if callable(fn) and not name.startswith("_"):
            setattr(cls, name, _held(fn))
    return cls


def _held(fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        with signals.deferred():
            return fn(*args, **kwargs)

    return call


@_whole_calls
class Tracker:
    """A thin, explicit wrapper over MlflowClient for one store."""

    # set by a study worker while it holds a row's lease (`lease.Heartbeat.check`): called before every
    # write, it raises `LeaseLost` once the row is another worker's, so a worker that stalled past the
    # lease timeout writes nothing after it wakes
    fence: Callable[[], None] | None = None

    def check_fence(self) -> None:
        if self.fence is not None:
            self.fence()

    def __init__(self, uri: str | None = None, home: str | os.PathLike | None = None, must_exist: bool = False):
        """`must_exist` (commands that only read): refuse a SQLite store that is not there instead of
        creating an empty one that would report every run as missing. `created` says whether this
        call made a new store."""
        self.uri = resolve_tracking_uri(uri, home_path(home))
        db = sqlite_path(self.uri)
        if must_exist and db is not None and not db.is_file():
            raise UserError(
                f"there is no tracking store at {db}: check --home, --tracking-uri or MLFLOW_TRACKING_URI "
                f"(this command only reads, so it does not create one)."
            )
        self.created = db is not None and not db.is_file()
        self.home = home_dir(home)  # the same folder, now created and checked writable
        self._artifact_uris: dict[str, str] = {}
        check_reachable(self.uri)
        _quiet_mlflow()
        from mlflow.tracking import MlflowClient

        try:
            with file_lock(self.home / ".store.lock"):
                self.client = MlflowClient(tracking_uri=self.uri)
                self.client.search_experiments(max_results=1)  # opens (and migrates) the store now
        except UserError:
            raise
        except Exception as e:  # driver errors vary by backend
            raise UserError(f"cannot open the tracking store {self.uri}: {str(e).splitlines()[0]}") from None

    # ------------------------------------------------------------------ experiments and runs
    def experiment_id(self, name: str) -> str:
        with file_lock(self.home / ".store.lock"):
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                if exp.lifecycle_stage == "deleted":
                    self.client.restore_experiment(exp.experiment_id)
                return exp.experiment_id
            location = None
            if self.uri.startswith("sqlite:///"):
                location = (self.home / "artifacts" / name.replace("/", "_")).as_uri()
            return self.client.create_experiment(
                name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )

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
        state = {
            "selectedColumns": columns,
            "columnOrder": order,
            "orderByKey": "attributes.start_time",
            "orderByAsc": True,
            "searchFilter": "",
            "runsExpanded": {},
            "columnWidths": {c: 170 for c in columns},
        }
        self.client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key, json.dumps(state))

    def start_run(
        self,
        experiment: str,
        run_name: str,
        tags: dict[str, Any],
        params: dict[str, Any] | None = None,
        parent_run_id: str | None = None,
    ) -> str:
        self.check_fence()
        tags = {k: str(v) for k, v in tags.items()}
        tags.setdefault(T.GIT_COMMIT, git_commit())
        tags[T.MLFLOW_GIT_COMMIT] = tags[T.GIT_COMMIT]
        tags[T.STATUS] = T.Status.RUNNING.value
        tags[T.HEARTBEAT] = str(time.time())
        if parent_run_id:
            tags[T.MLFLOW_PARENT] = parent_run_id
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name, tags=tags)
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def resume_run(self, run_id: str) -> None:
        """Running again: the reason it stopped no longer describes it (a finished run must not keep
        'interrupted at step 5')."""
        self.check_fence()
        self.client.update_run(run_id, status="RUNNING")
        self.set_tags(run_id, {T.STATUS: T.Status.RUNNING.value, T.HEARTBEAT: time.time(), T.FAILURE: ""})

    def schedule_run(self, run_id: str) -> None:
        """Queued on a scheduler, not started: MLflow's SCHEDULED until a worker resumes it."""
        self.client.update_run(run_id, status="SCHEDULED")
        self.set_tags(run_id, {T.FAILURE: ""})

    def end_run(self, run_id: str, status: str = "FINISHED", reason: str = "") -> None:
        self.check_fence()
        tags: dict[str, Any] = {T.STATUS: status.lower()}
        if reason:
            tags[T.FAILURE] = reason[:4000]
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
            page = self.client.search_runs(
                experiment_ids,
                filter_string,
                order_by=order_by or ["attributes.start_time DESC"],
                max_results=1000,
                page_token=token,
            )
            out += list(page)
            token = page.token
            if not token:
                break
        return out

    def find_run(self, run_id: str):
        """The run, or None when the store has no run of that id."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException:
            return None

    def delete_run(self, run_id: str) -> None:
        self.client.delete_run(run_id)

    def experiment_names(self) -> dict[str, str]:
        """{experiment id: name} of every experiment in the store."""
        return {e.experiment_id: e.name for e in self.client.search_experiments()}

    def has_experiment(self, name: str) -> bool:
        return self.client.get_experiment_by_name(name) is not None

    def experiment_tags(self, name: str) -> dict[str, str] | None:
        exp = self.client.get_experiment_by_name(name)
        return None if exp is None else dict(exp.tags)

    def run_start_time(self, run_id: str) -> float:
        """When the run was created (seconds since the epoch)."""
        return self.client.get_run(run_id).info.start_time / 1000.0

    def experiment_of(self, run_id: str) -> str:
        """The name of the MLflow experiment a run is in."""
        return self.client.get_experiment(self.get_run(run_id).info.experiment_id).name

    def metric_history(self, run_id: str, key: str, every: bool = False) -> list:
        """One value per step of one metric, in step order (MLflow Metric entities: step, value,
        timestamp): a run resumed from its last checkpoint trains the steps after it again and logs
        them twice, and the later value is the one the finished run continued from. `every`: each
        logged value, in the order logged (system metrics: several samples share a second's step)."""
        if every:
            return list(self.client.get_metric_history(run_id, key))
        latest = {}
        for i, m in enumerate(self.client.get_metric_history(run_id, key)):
            if m.step not in latest or (m.timestamp, i) >= latest[m.step][0]:
                latest[m.step] = ((m.timestamp, i), m)
        return [latest[s][1] for s in sorted(latest)]

    def get_run(self, run_id: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException:
            raise UserError(f"no MLflow run {run_id!r} in {self.uri}.") from None

    # ------------------------------------------------------------------ logging
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self.check_fence()
        from mlflow.entities import Param

        items = [Param(k, _param_str(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow caps params per batch at 100
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int, model_id: str | None = None) -> None:
        """`model_id`: the values also describe that logged model (its row in the Models tab)."""
        self.check_fence()
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step, model_id=model_id) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.check_fence()
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dataset(self, run_id: str, data, context: str) -> None:
        """A `DatasetRecord` as the run's input (`context`: training or evaluation): the runs view's
        Datasets filter then finds the run. Its digest is mqvq's; the pixels are never read here."""
        self.check_fence()
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        profile = json.dumps({"num_rows": data.size, "split": data.split, "resolution": data.resolution})
        dataset = Dataset(data.title, data.digest, data.source_type, data.source, profile=profile)
        self._log_inputs(run_id, [DatasetInput(dataset, [InputTag(T.MLFLOW_DATA_CONTEXT, context)])])

    def _log_inputs(self, run_id: str, inputs: list) -> None:
        """MLflow looks a dataset up, then inserts it: two workers logging the same data into one
        experiment at once collide on the insert (a UNIQUE / duplicate-key error). Logging inputs is
        idempotent, so the loser tries again and finds the row the winner wrote."""
        from mlflow.exceptions import MlflowException

        for attempt in range(5):
            try:
                self.client.log_inputs(run_id, datasets=inputs)
                return
            except MlflowException:
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def has_datasets(self, run_id: str) -> bool:
        inputs = self.client.get_run(run_id).inputs
        return bool(inputs and inputs.dataset_inputs)

    def copy_datasets(self, src_run: str, dst_run: str, context: str | None = None) -> None:
        """The datasets logged on one run, logged on another that has none yet (a row's parent, a
        stage-2 run, show the stage-1 data; a resumed run is not given them twice)."""
        self.check_fence()
        if self.has_datasets(dst_run):
            return
        inputs = self.client.get_run(src_run).inputs
        chosen = [
            d
            for d in (inputs.dataset_inputs if inputs else [])
            if context is None or any(t.key == T.MLFLOW_DATA_CONTEXT and t.value == context for t in d.tags)
        ]
        if chosen:
            self._log_inputs(dst_run, chosen)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.check_fence()
        self.client.log_text(run_id, text, name)

    def log_table(self, run_id: str, data: dict, name: str) -> None:
        self.check_fence()
        self.client.log_table(run_id, data, name)

    def heartbeat(self, run_id: str, fenced: bool = True) -> float:
        """Refresh the run's heartbeat; returns its time. `fenced=False`: the fence's own beat, right
        after it read the lease as this worker's."""
        if fenced:
            self.check_fence()
        now = time.time()
        self.client.set_tag(run_id, T.HEARTBEAT, str(now))
        return now

    def _moved_artifacts(self, run_id: str) -> Path | None:
        """Where this run's artifacts live under *this* home when the store was copied or moved from
        another folder (the database still records the old absolute path); None when they are where
        the database says. Artifacts must follow the store being used, never write into the old one."""
        if sqlite_path(self.uri) is None:
            return None
        if run_id not in self._artifact_uris:  # fixed at the run's creation: one query per run, not per artifact
            self._artifact_uris[run_id] = self.client.get_run(run_id).info.artifact_uri
        local = self._local(self._artifact_uris[run_id], 2)  # <old home>/artifacts/<experiment>/<run id>/artifacts
        return local[0] if local is not None and local[1] else None

    def _local(self, uri: str, depth: int) -> tuple[Path, bool] | None:
        """(the folder a file:// artifact URI names, under this home when the store was moved here;
        whether it was moved), or None for a remote artifact store. `depth`: folders between the
        store's `artifacts` root and the URI's last folder."""
        if not uri.startswith("file://"):
            return None
        from urllib.parse import unquote, urlparse

        path = Path(unquote(urlparse(uri).path))
        if sqlite_path(self.uri) is None or len(path.parents) <= depth:
            return path, False
        root, here = path.parents[depth], self.home / "artifacts"
        if root.name != "artifacts" or root == here:
            return path, False
        return here / path.relative_to(root), True

    # ------------------------------------------------------------------ logged models (MLflow 3's Models tab)
    @contextlib.contextmanager
    def new_model(self, run_id: str, name: str, model_type: str, step: int, params: dict, tags: dict):
        """A logged model of `run_id` for its final weights: yields (model id, the folder to write its
        files into). With a local artifact store that folder *is* the model's, so the weights are
        written once, where the model points; with a remote one the files are uploaded from a
        temporary folder. READY when the body ends, FAILED if it raises."""
        self.check_fence()
        import tempfile

        from mlflow.entities import LoggedModelOutput

        exp = self.client.get_run(run_id).info.experiment_id
        m = None
        try:
            with signals.deferred():  # the model exists only together with the code that marks it FAILED
                m = self.client.create_logged_model(
                    exp,
                    name=name,
                    source_run_id=run_id,
                    model_type=model_type,
                    params={k: str(v) for k, v in params.items()},
                    tags={k: str(v) for k, v in tags.items()},
                )
            self.client.log_outputs(run_id, [LoggedModelOutput(m.model_id, step)])  # the run's "Logged models"
            local = self._local(m.artifact_location, 3)  # <home>/artifacts/<experiment>/models/<model id>/artifacts
            with contextlib.ExitStack() as stack:
                folder = (
                    local[0] if local else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mqvq-model-")))
                )
                folder.mkdir(parents=True, exist_ok=True)
                yield m.model_id, folder
                if local is None:
                    self.client.log_model_artifacts(m.model_id, str(folder))
        except BaseException:
            if m is not None:
                self.client.finalize_logged_model(m.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(m.model_id, "READY")
        self.set_tags(run_id, {T.MODEL_ID: m.model_id})

    def model_of(self, run_id: str) -> str | None:
        """The id of the logged model holding a run's final weights (None for runs trained before)."""
        run = self.find_run(run_id)
        return run.data.tags.get(T.MODEL_ID) if run is not None else None

    def model_source_run(self, spec: str) -> str:
        """The run a logged model came from: `m-<id>`, `models:/m-<id>`, or a registered
        `models:/NAME/VERSION`."""
        from mlflow.exceptions import MlflowException

        ref = spec[len("models:/") :] if spec.startswith("models:/") else spec
        try:
            if "/" in ref:
                name, version = ref.split("/", 1)
                v = self.client.get_model_version(name, version)
                if v.run_id:
                    return v.run_id
                ref = v.model_id or ""
            run_id = self.client.get_logged_model(ref).source_run_id
        except MlflowException:
            raise UserError(
                f"{spec!r} is not a logged model in {self.uri}: use a model id (m-...), models:/<id> or "
                f"models:/NAME/VERSION of a registered model."
            ) from None
        if not run_id:
            raise UserError(
                f"logged model {spec!r} was not logged from a run, so it is not one mqvq trained: give the "
                f"run id or the model of a stage-1 or stage-2 run."
            )
        return run_id

    def model_file(self, model_id: str, name: str, dst: Path) -> Path:
        """A logged model's file as a local path: in place for a local store, else downloaded to `dst`."""
        m = self.client.get_logged_model(model_id)
        local = self._local(m.artifact_location, 3)
        if local is not None:
            if not (local[0] / name).is_file():
                raise UserError(
                    f"{name} of logged model {model_id} is not under {local[0]} (the store was copied or moved "
                    f"without its artifacts folder)."
                )
            return local[0] / name
        import mlflow.artifacts

        dst.mkdir(parents=True, exist_ok=True)
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{m.artifact_location}/{name}", dst_path=str(dst), tracking_uri=self.uri
            )
        )

    def _write(self, run_id: str, name: str, write) -> bool:
        """Write one artifact into the moved store's folder; False when MLflow's own path is right."""
        self.check_fence()
        target = self._moved_artifacts(run_id)
        if target is None:
            return False
        out = target / name
        out.parent.mkdir(parents=True, exist_ok=True)
        write(out)
        return True

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.check_fence()
        import shutil

        name = f"{artifact_path}/{Path(path).name}" if artifact_path else Path(path).name
        if not self._write(run_id, name, lambda out: shutil.copyfile(path, out)):
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_dict(self, run_id: str, data: dict, name: str) -> None:
        self.check_fence()
        import json

        if not self._write(run_id, name, lambda out: out.write_text(json.dumps(data, indent=2))):
            self.client.log_dict(run_id, data, name)

    def log_image(self, run_id: str, image, name: str) -> None:
        self.check_fence()

        def save(out: Path) -> None:
            import numpy as np
            from PIL import Image

            (image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))).save(out)

        if not self._write(run_id, name, save):
            self.client.log_image(run_id, image, artifact_file=name)

    def log_figure(self, run_id: str, fig, name: str) -> None:
        """A matplotlib figure as a PNG artifact; the figure is closed (long runs draw many)."""
        self.check_fence()
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
            raise UserError(
                f"artifact {path} of run {run_id} is not under {moved} (the store was copied or moved "
                f"without its artifacts folder)."
            )
        dst.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(dst)))


def _param_str(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(str(x) for x in v) + "]"
    return str(v)
