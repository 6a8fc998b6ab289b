"""Declared studies (studies/*.toml): rows of experiments (+ overrides) x seeds, grouped like
the paper's tables, each row naming the paper values it mirrors.

    description = "Table 6: ..."
    table = "6"
    metrics = ["rfid", "fid", "usage"]      # evaluated for every row (stage 1: rfid, usage...; stage 2: fid, speed...)
    seeds = [0]

    [[rows]]
    name = "adaptive-25"
    experiment = "mqvae-f16-adaptive-25"
    label = "25 % adaptive, f = 16"
    paper = { rfid = 4.79, fid = 7.67, usage = 78.22 }
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from mqvq.config import ExperimentConfig, from_dict, opt
from mqvq.config.schema import SAMPLERS, SEARCH_MAX_SAMPLES, SEARCH_RUNGS
from mqvq.errors import UserError, one_of

# mask_detail: the mask diagnostics as table columns; auroc: the score against the foreground (computed by `mask`);
# cost: the stage-1 training seconds per step, as the run measured it (nothing to evaluate)
STAGE1_METRICS = {
    "rfid",
    "usage",
    "psnr",
    "lpips",
    "mask",
    "mask_detail",
    "auroc",
    "sauc",
    "damage_fg",
    "damage_bg",
    "cost",
}
EVAL_AS = {
    "mask_detail": "mask",
    "auroc": "mask",
    "sauc": "mask",
    "damage_fg": "mask",
    "damage_bg": "mask",
    "cost": None,
}  # study metric -> the `mqvq eval` metric that computes it
STAGE2_METRICS = {"fid", "is", "speed", "attr"}  # attr: caption-following accuracy (text models on procedural data)
DESCRIPTORS = ("label", "mask_ratio", "f", "mask_type", "demask")


@dataclass(frozen=True)
class StudyRow:
    name: str = opt("", "row id, unique in the study (used by --only)")
    experiment: str = opt("", "experiment name from experiments/")
    label: str = opt("", "how the row is shown in tables (default: the name)")
    overrides: tuple[str, ...] = opt((), "extra --set overrides for this row")
    seeds: tuple[int, ...] = opt((), "seeds for this row (default: the study's seeds)")
    paper: dict[str, float] = opt(
        None, "the paper's values for this row (default: looked up by `table` and experiment in mqvq/paper.py)"
    )
    stage2: bool = opt(True, "train and evaluate stage 2 for this row")


@dataclass(frozen=True)
class SearchSettings:
    trials: int = opt(0, "sampling-search trials per row (0 = no search)")
    sampler: str = opt(SAMPLERS[0], one_of(SAMPLERS))
    num_samples: int = opt(0, f"samples per trial (0 = the profile's eval.num_samples, at most {SEARCH_MAX_SAMPLES})")
    rungs: tuple[int, ...] = opt(
        (),
        "sample counts at which poor trials may be pruned (default: "
        + ", ".join(map(str, SEARCH_RUNGS))
        + " below num_samples)",
    )


@dataclass(frozen=True)
class StudyConfig:
    name: str = opt("", "study name (file stem)")
    description: str = opt("", "one line: what the study reproduces")
    table: str = opt("", "paper table or figure it mirrors")
    seeds: tuple[int, ...] = opt((0,), "seeds for every row")
    metrics: tuple[str, ...] = opt(("rfid", "fid", "usage"), "metrics evaluated for every row")
    columns: tuple[str, ...] = opt(
        ("label",), "row descriptors in report tables: label, mask_ratio, f, mask_type, demask"
    )
    overrides: tuple[str, ...] = opt((), "--set overrides for every row, applied before each row's own")
    rows: tuple[StudyRow, ...] = opt((), "the rows")
    search: SearchSettings = field(
        default_factory=SearchSettings, metadata={"help": "Optuna sampling search for each row's stage-2 model"}
    )

    def stage_metrics(self, stage: str) -> list[str]:
        """What `mqvq eval` computes for this stage (mask_detail is computed by `mask`)."""
        wanted = STAGE1_METRICS if stage == "stage1" else STAGE2_METRICS
        named = (EVAL_AS.get(m, m) for m in self.metrics if m in wanted)
        return list(dict.fromkeys(m for m in named if m))


def studies_dir() -> Path:
    from mqvq.experiments import declared_dir

    return declared_dir("studies")


def list_studies() -> dict[str, str]:
    out = {}
    for path in sorted(studies_dir().glob("*.toml")):
        try:
            s = load_study(str(path))
            out[path.stem] = f"{s.description} ({len(s.rows)} rows)"
        except UserError as e:
            out[path.stem] = f"(invalid: {e})"
    return out


def find_study(name: str) -> Path:
    from mqvq.experiments import find_declared

    return find_declared(name, studies_dir(), "study", "studies")


def load_study(name: str) -> StudyConfig:
    """Read and validate a study; every error names the file, the key and what is allowed."""
    path = find_study(name)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}.") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is not valid TOML: {e}.") from None
    raw["name"] = path.stem
    try:
        study = from_dict(StudyConfig, raw)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    bad_cols = [c for c in study.columns if c not in DESCRIPTORS]
    if bad_cols:
        raise UserError(f"{path}: columns contains {bad_cols[0]!r}: allowed columns are {', '.join(DESCRIPTORS)}.")
    allowed = sorted(STAGE1_METRICS | STAGE2_METRICS)
    for m in study.metrics:
        if m not in allowed:
            raise UserError(f"{path}: metrics contains {m!r}: allowed metrics are {', '.join(allowed)}.")
    if study.search.sampler not in SAMPLERS:
        raise UserError(f"{path}: search.sampler = {study.search.sampler!r} is invalid: use {one_of(SAMPLERS)}.")
    if not study.rows:
        raise UserError(f"{path}: a study needs at least one [[rows]] table.")
    if not study.seeds:
        raise UserError(f"{path}: seeds must list at least one seed.")
    seen = set()
    for i, row in enumerate(study.rows):
        if not row.name or not row.experiment:
            raise UserError(f"{path}: rows[{i}] needs both name and experiment.")
        if row.name in seen:
            raise UserError(f"{path}: rows[{i}].name = {row.name!r} is used twice; row names must be unique.")
        seen.add(row.name)
    if study.overrides:
        study = dataclasses.replace(
            study, rows=tuple(dataclasses.replace(r, overrides=study.overrides + r.overrides) for r in study.rows)
        )
    return study


def select_rows(study: StudyConfig, only: list[str] | None) -> list[StudyRow]:
    if not only:
        return list(study.rows)
    names = [r.name for r in study.rows]
    for n in only:
        if n not in names:
            raise UserError(f"unknown row {n!r} in study {study.name}: rows are {', '.join(names)}.")
    return [r for r in study.rows if r.name in only]


def row_seeds(study: StudyConfig, row: StudyRow, seeds: list[int] | None) -> list[int]:
    return list(seeds) if seeds else list(row.seeds or study.seeds)


def row_paper(study: StudyConfig, row: StudyRow) -> dict[str, float]:
    from mqvq.paper import paper_values

    return paper_values(study.table, row.experiment, row.paper)


def row_config(row: StudyRow, profile: str, seed: int) -> ExperimentConfig:
    from mqvq.experiments import load_experiment

    try:
        return load_experiment(row.experiment, profile, list(row.overrides), seed)
    except UserError as e:
        raise UserError(f"row {row.name}: {e}") from None
