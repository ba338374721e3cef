"""The typed settings a training job runs with: the config's ``net``, ``train`` and ``metric`` sections as
frozen dataclasses, built once from the (validated) config. Defaults live only in the schema
(``workflow/schemas/config.schema.yaml``): a key the config leaves out takes the schema's default here, so
no module reads a schema key with a default of its own. ``model.pt`` and the checkpoint keep
``RunSettings.as_dict()``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    import yaml

    with open(SCHEMA) as f:
        return yaml.safe_load(f)


def schema_defaults(section: str) -> dict:
    """The schema's default of every key of ``section`` (a top-level section, or a nested one written as the
    config spells it: ``experiment.similarity``) that has one."""
    node = schema()
    for part in section.split("."):
        node = node["properties"][part]
    return {k: v["default"] for k, v in node.get("properties", {}).items() if "default" in v}


def schema_default(key: str):
    """The schema's default of a nested key, written as the config spells it
    (``experiment.similarity.seed_floor``)."""
    node = schema()
    for part in key.split("."):
        node = node["properties"][part]
    return node["default"]


def _coerce(value, kind: str):
    if value is None:
        return None
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "bool":
        return bool(value)
    if kind == "tuple":
        return tuple(value)
    return value


class _Section:
    """A config section: ``from_dict`` fills the schema's defaults, refuses unknown keys and names a
    missing required one."""

    SECTION: ClassVar[str]
    KINDS: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_dict(cls, d):
        if isinstance(d, cls):
            return d
        d = dict(d or {})
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"{cls.SECTION}: unknown key(s) {unknown} (see workflow/schemas/config.schema.yaml)")
        merged = {**schema_defaults(cls.SECTION), **d}
        optional = {f.name for f in fields(cls) if f.default is not dataclasses.MISSING}
        missing = [n for n in names if n not in merged and n not in optional]
        if missing:
            raise ValueError(f"{cls.SECTION}: missing key(s) {missing}")
        return cls(**{n: _coerce(merged[n], cls.KINDS.get(n, "")) for n in names if n in merged})

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class Net(_Section):
    SECTION: ClassVar[str] = "net"
    KINDS: ClassVar[dict[str, str]] = {"crop": "int", "dropout": "float", "input_scale": "float", "lrn": "bool",
                                       "widths": "tuple"}

    arch: str
    crop: int
    units: str
    outputs: str | int
    dropout: float
    input_scale: float
    lrn: bool
    init: str
    random_units_norm: str
    widths: tuple[int, ...] | None = None  # CaffeNet's 7 widths; None: the paper's


@dataclass(frozen=True)
class Train(_Section):
    SECTION: ClassVar[str] = "train"
    KINDS: ClassVar[dict[str, str]] = {
        "batch_size": "int", "max_iter": "int", "lr": "float", "lr_step": "int", "gamma": "float",
        "warmup_iter": "int", "momentum": "float", "weight_decay": "float", "grad_clip": "float",
        "eval_every": "int", "eval_batch_size": "int", "checkpoint_every": "int", "checkpoint_minutes": "float",
        "seed": "int", "deterministic": "bool", "amp": "bool", "tf32": "bool", "cudnn_benchmark": "bool"}

    batch_size: int
    max_iter: int
    lr: float
    lr_policy: str
    lr_step: int
    gamma: float
    warmup_iter: int
    optimizer: str
    momentum: float
    weight_decay: float
    grad_clip: float
    eval_every: int
    eval_batch_size: int
    checkpoint_every: int
    checkpoint_minutes: float
    seed: int
    deterministic: bool
    amp: bool
    tf32: bool
    cudnn_benchmark: bool


@dataclass(frozen=True)
class Metric(_Section):
    SECTION: ClassVar[str] = "metric"
    KINDS: ClassVar[dict[str, str]] = {"best_k": "int"}

    best_k: int


@dataclass(frozen=True)
class RunSettings:
    """What a training job's result depends on (its ``--params``): the three sections and the split's kind."""

    net: Net
    train: Train
    metric: Metric
    split_kind: str | None = None

    @classmethod
    def from_dict(cls, cfg: Mapping | RunSettings) -> RunSettings:
        if isinstance(cfg, RunSettings):
            return cfg
        return cls(Net.from_dict(cfg["net"]), Train.from_dict(cfg["train"]), Metric.from_dict(cfg.get("metric")),
                   cfg.get("split_kind"))

    def as_dict(self) -> dict:
        out = {"net": self.net.as_dict(), "train": self.train.as_dict(), "metric": self.metric.as_dict()}
        if self.split_kind is not None:
            out["split_kind"] = self.split_kind
        return out


_MISSING = object()


def setting(cfg: Mapping, section: str, key: str):
    """``cfg[section][key]``, or the schema's default when the config leaves it out: how code outside this
    module reads a schema key that has a default (never ``.get(key, a default of its own)``)."""
    value = (cfg.get(section) or {}).get(key, _MISSING)
    if value is not _MISSING:
        return value
    defaults = schema_defaults(section)
    if key not in defaults:
        raise KeyError(f"{section}.{key}: not in the config and without a default in the schema")
    return defaults[key]
