"""Every MLflow tag mqvq writes, named once. No other module spells a `mqvq.` tag (tests/test_layers.py
checks): they import these names, and read or write whole runs through `records.py`.

Structure lives in tags, never in params, so a resume never rewrites params. Values are strings in
MLflow; `records.py` owns turning them back into numbers and enums.
"""

from __future__ import annotations

import enum


class Kind(str, enum.Enum):
    """What a run is, beside the stage runs (which carry STAGE instead)."""

    ROW = "row"  # a study row's parent run (one per row and seed)
    SEARCH_TRIAL = "search-trial"  # one Optuna trial of a sampling search
    BENCH = "bench"
    SUMMARY = "summary"  # a study's table at a glance


class Stage(str, enum.Enum):
    STAGE1 = "stage1"
    STAGE2 = "stage2"


class Status(str, enum.Enum):
    """mqvq's own run state (MLflow's status says how the process ended; this says what a row is)."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    KILLED = "killed"
    MISSING = "missing"


# ---------------------------------------------------------------- every run
STATUS = "mqvq.status"
HEARTBEAT = "mqvq.heartbeat"  # seconds since the epoch, refreshed while the run works
FAILURE = "mqvq.failure"  # why it stopped ("" once it runs again)
GIT_COMMIT = "mqvq.git_commit"
KIND = "mqvq.kind"
PROFILE = "mqvq.profile"
EXPERIMENT = "mqvq.experiment"  # the experiment preset (experiments.py), not the MLflow experiment
SEED = "mqvq.seed"
CONFIG_HASH = "mqvq.config_hash"

# ---------------------------------------------------------------- stage runs
STAGE = "mqvq.stage"
DATA_DIGEST = "mqvq.data_digest"
STAGE1_RUN = "mqvq.stage1_run"  # on stage-2 runs (and row runs): the stage-1 model read
STAGE2_RUN = "mqvq.stage2_run"  # on row runs
STAGE1_CHECKPOINT = "mqvq.stage1_checkpoint"  # the digest of that model's file
CHECKPOINT = "mqvq.checkpoint"
MODEL_ID = "mqvq.model_id"  # on finished stage runs: the MLflow logged model holding the final weights
PARAMS_COUNT = "mqvq.params_count"
RESUMED_FROM_STEP = "mqvq.resumed_from_step"
TRAINER = "mqvq.trainer"  # the process training the run (host:pid): with a fresh heartbeat and alive, not resumable
WORLD_SIZE = "mqvq.world_size"
DEVICE = "mqvq.device"
DEVICE_NAME = "mqvq.device_name"
TORCH_THREADS = "mqvq.torch_threads"

# ---------------------------------------------------------------- row runs
STUDY = "mqvq.study"
ROW = "mqvq.row"
LABEL = "mqvq.label"
TABLE = "mqvq.table"
LEASE = "mqvq.lease"  # the worker holding the row ("" when free)
DATA_NAME = "mqvq.data.name"
DATA_RESOLUTION = "mqvq.data.resolution"
DATA_LEGACY = "mqvq.data"  # "name 32px (digest)": written before the three tags above; read only
# MLflow's own tags and input tags that mqvq sets or reads
MLFLOW_PARENT = "mlflow.parentRunId"  # a nested run's parent (a row's stage runs, a stage run's trials)
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"
MLFLOW_NOTE = "mlflow.note.content"  # a run's description in the UI
MLFLOW_DATA_CONTEXT = "mlflow.data.context"  # a dataset input's role: training / evaluation
MLFLOW_EXPERIMENT_KIND = "mlflow.experimentKind"
MLFLOW_SHARED_VIEW = "mlflow.sharedViewState."  # + a key: a runs view the UI loads from ?viewStateShareKey=<key>

SLURM_JOB = "mqvq.slurm.job"  # the SLURM task running the row: <array job id>_<task id>
SLURM_LOG = "mqvq.slurm.log"  # that task's log folder
SLURM_CANCELLED = "mqvq.slurm.cancelled"  # "true" once `study cancel` cancelled that task (a cluster without
# accounting forgets an ended task: this is how status still knows)

# ---------------------------------------------------------------- summary runs
ROWS = "mqvq.rows"
ROWS_FINISHED = "mqvq.rows_finished"

# ---------------------------------------------------------------- searches
SEARCH = "mqvq.search"
TRIAL = "mqvq.trial"
TRIAL_STATE = "mqvq.trial_state"
MODEL_RUN = "mqvq.model_run"
SEARCH_STORAGE = "mqvq.search.storage"
SAMPLING_SEARCHED = "mqvq.sampling.searched"  # JSON: every metric@samples searched -> its best value and settings
SAMPLING_BEST = "mqvq.sampling.best."  # + a SamplingConfig field: the settings `--sampling best` uses

# ---------------------------------------------------------------- benchmarks
BENCH = "mqvq.bench"
ENV = "mqvq.env."  # + an environment key


# ---------------------------------------------------------------- evaluation
EVAL = "mqvq.eval."
EVAL_DEVICE, EVAL_TORCH, EVAL_THREADS = EVAL + "device", EVAL + "torch", EVAL + "threads"
EVAL_TIME, EVAL_SECONDS = EVAL + "time", EVAL + "seconds"
EVAL_SAMPLING, EVAL_SAMPLING_CHOICE = EVAL + "sampling", EVAL + "sampling_choice"
EVAL_TEST_IMAGES = EVAL + "test_images"
# what a row copies from its stage runs beside the per-metric tags: where and how they were measured
EVAL_ENVIRONMENT = (EVAL_DEVICE, EVAL_TORCH, EVAL_THREADS, TORCH_THREADS, DEVICE_NAME)
# per-metric facts: EVAL + <metric> + "." + one of these
METRIC_FACTS = (
    "backend",
    "num",
    "reference",
    "resolution",
    "split",
    "sampling",
    "sampling_choice",
    "net",
    "batch_size",
    "trials",
)


def eval_tag(metric: str, fact: str) -> str:
    """`mqvq.eval.<metric>.<fact>`: how a logged metric was measured (backend, num, reference, ...)."""
    return f"{EVAL}{metric}.{fact}"


def eval_facts(tags: dict[str, str], metric: str | None = None) -> dict[str, dict[str, str]]:
    """{metric: {fact: value}} from a run's tags (one metric's when `metric` is given)."""
    out: dict[str, dict[str, str]] = {}
    for k, v in tags.items():
        if not k.startswith(EVAL):
            continue
        name, _, fact = k[len(EVAL) :].rpartition(".")
        if name and fact in METRIC_FACTS and (metric is None or name == metric):
            out.setdefault(name, {})[fact] = v
    return out


def is_eval_tag(key: str) -> bool:
    return key.startswith(EVAL)


# ---------------------------------------------------------------- queries
def quote(value) -> str:
    """A value in an MLflow filter string: single-quoted, or double-quoted when it holds a single
    quote (MLflow's parser takes no escapes inside a string)."""
    text = str(value)
    return f'"{text}"' if "'" in text else f"'{text}'"


def where(*clauses: str, **equal) -> str:
    """An MLflow filter string: `where(finished(), stage="stage1", seed=0)`: each keyword is a tag
    constant above in lower case, equal to the value; positional clauses are added as they are."""
    parts = [f'tags."{_BY_NAME[k]}" = {quote(getattr(v, "value", v))}' for k, v in equal.items()]
    return " and ".join([*parts, *clauses])


def finished() -> str:
    return "attributes.status = 'FINISHED'"


def unfinished() -> str:
    return "attributes.status != 'FINISHED'"


def running() -> str:
    return "attributes.status = 'RUNNING'"


def any_stage() -> str:
    return f"tags.\"{STAGE}\" LIKE 'stage%'"


_BY_NAME = {
    k.lower(): v for k, v in dict(globals()).items() if k.isupper() and isinstance(v, str) and v.startswith("mqvq.")
}
