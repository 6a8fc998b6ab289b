"""Reading configs: nested dicts (TOML) into the typed dataclasses with every name and type
checked, back to dicts, dotted overrides (`--set key=value`), and the field listing."""

from __future__ import annotations

import dataclasses
import functools
import json
import tomllib
import typing
from dataclasses import fields
from typing import Any, Literal

from mqvq.config.schema import ExperimentConfig
from mqvq.errors import UserError


def _allowed(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        item = typing.get_args(tp)[0]
        return "a list of " + ({int: "integers", str: "strings"}.get(item) or "tables")
    if origin is dict:
        return "a table of numbers"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    bad = UserError(f"{name} = {value!r} is invalid: expected {_allowed(tp)}.")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)):
            raise bad
        if dataclasses.is_dataclass(item):  # a TOML array of tables
            return tuple(from_dict(item, v, f"{name}[{i}].") for i, v in enumerate(value))
        if not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            raise bad
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()
        ):
            raise bad
        return {str(k): float(v) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported config type {tp!r} for {name}")


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    """A dataclass's resolved field types; resolving them is most of the cost of reading a config."""
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a (possibly partial) nested dict, checking names and types."""
    if not isinstance(data, dict):
        raise UserError(f"{prefix.rstrip('.') or 'config'} must be a table, got {data!r}.")
    hints = _hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise UserError(f"unknown key {prefix}{unknown[0]} in {where}: allowed keys are {', '.join(sorted(names))}.")
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        name = prefix + f.name
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = from_dict(tp, data[f.name], name + ".")
        else:
            kwargs[f.name] = _coerce(data[f.name], tp, name)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples become lists) suitable for TOML/JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        nxt = d.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise UserError(f"cannot set {dotted}: {k} is a value, not a table.")
        d = nxt
    d[keys[-1]] = value


def get_dotted(d: dict, dotted: str, default: Any = None) -> Any:
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b.c=value` with a TOML value; bare words are strings (`--set stage1.data.name=folder`)."""
    if "=" not in text:
        raise UserError(f"override {text!r} must look like key=value, e.g. stage1.model.mask.ratio=0.5.")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key:
        raise UserError(f"override {text!r} has an empty key.")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def field_help(cls: type = ExperimentConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, meaning) for every leaf field."""
    rows = []
    hints = _hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += field_help(tp, f"{prefix}{f.name}.")
        else:
            default = f.default if f.default is not dataclasses.MISSING else ""
            rows.append((prefix + f.name, repr(default), f.metadata.get("help", "")))
    return rows
