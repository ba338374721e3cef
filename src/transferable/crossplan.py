"""The cross experiment's plan (``experiment.cross``, docs/cross.md): further data roots, the nets each
target trains, where each source's weights come from, and what is checked before any job.

A further data root (``datasets.<name>``) is handled as a config of its own: ``dataset_config`` gives a
view of the config in which ``data``, ``demo`` and ``splits`` are that dataset's, so that every function of
plan.py (class counts, shard parts, batch-size checks) and every data rule work on it unchanged; its files
live under results/datasets/<name>/ (paths.tree), so two data roots never share a path.

A target is (dataset, split, half). For each replicate r it trains its own base net (``base{T}``, from
scratch) and random frozen units (``R{n}{T}``), once whatever the sources; for each source, ``X{n}{T}``
(units 1..n copied from the source and frozen: AnB) and ``X{n}{T}_ft`` (fine-tuned: AnB+), under
results/datasets/<target>/transfer/<source>/. A source is one net: a half's base net trained here (on any
dataset, trained once and shared by every target), or a checkpoint file mapped onto the units.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import paths, plan
from .plan import ConfigError, Net

MAIN = paths.MAIN_DATASET  # the config's own data root, as sources and targets name it
CROSS_SOURCE = "X"  # the source letter of a cross net's name (X3A); the directory names the source


def block(cfg: dict) -> dict | None:
    """``experiment.cross`` after validation (the schema's defaults filled), or None."""
    return cfg["experiment"].get("cross") or None


def key(name: str) -> str:
    """The path key of a dataset name: "" for main (results/), else the name (results/datasets/<name>/)."""
    return "" if name == MAIN else name


def name_of(dataset_key: str) -> str:
    return dataset_key or MAIN


def datasets(cfg: dict) -> list[str]:
    """The further data roots' names (``datasets``), sorted."""
    return sorted(cfg.get("datasets") or {})


def dataset_config(cfg: dict, dataset: str) -> dict:
    """The config as seen from dataset ``dataset`` (a path key: "" is ``cfg`` itself): its data, demo and
    splits, no experiment of its own, and the splits its cross nets use (plan.used_splits)."""
    if not dataset:
        return cfg
    ds = cfg["datasets"][dataset]
    view = {**cfg, "data": ds["data"], "demo": ds.get("demo") or {},
            "splits": ds.get("splits") or {"all": {"kind": "all"}}, "experiment": {}}
    view["_used_splits"] = sorted({paths.base_split(n.split) for n in dataset_nets(cfg, dataset)})
    return view


@dataclass(frozen=True)
class Target:
    name: str  # as the config names it (a dataset name, or main)
    split: str
    half: str

    @property
    def dataset(self) -> str:
        return key(self.name)


@dataclass(frozen=True)
class Source:
    name: str
    checkpoint: str = ""  # a file brought by the user; else the net below
    net: Net | None = None
    mean: tuple[float, ...] = ()

    def model(self) -> str:
        """The model.pt the cross nets copy from."""
        return paths.source_model(self.name) if self.checkpoint else self.net.file("model.pt")


def targets(cfg: dict) -> list[Target]:
    b = block(cfg)
    if not b:
        return []
    return [Target(n, t["split"], t["half"]) for n, t in sorted(b["targets"].items())]


def sources(cfg: dict) -> dict[str, Source]:
    b = block(cfg)
    if not b:
        return {}
    out = {}
    for name, s in sorted(b["sources"].items()):
        if s.get("checkpoint"):
            out[name] = Source(name, checkpoint=s["checkpoint"], mean=tuple(float(v) for v in s["mean"]))
        else:
            out[name] = Source(name, net=Net(s["split"], paths.net_name(s["half"]), key(s["dataset"])))
    return out


def target_nets(cfg: dict, t: Target) -> list[Net]:
    """Every net target ``t`` trains: per replicate, its base net, random frozen units and, per source,
    frozen and fine-tuned transfers."""
    b = block(cfg)
    asked = [spec for spec in paths.TREATMENT_TABLE if spec.key in b["treatments"]]
    own = [spec for spec in asked if spec.source == "random"]  # no source: trained once per replicate
    transfers = [spec for spec in asked if spec.source == "other"]  # once per source

    def layers(spec) -> list[int]:
        return b.get("finetune_layers", b["layers"]) if spec.fine_tuned else b["layers"]

    nets = []
    for r in range(int(b["replicates"])):
        run = paths.replicate_split(t.split, r)
        nets.append(Net(run, paths.net_name(t.half), t.dataset))
        for spec in own:
            nets += [Net(run, paths.treatment_net(spec.key, t.half, "", n), t.dataset) for n in layers(spec)]
        for s in sources(cfg):
            for spec in transfers:
                nets += [Net(run, paths.treatment_net(spec.key, t.half, CROSS_SOURCE, n), t.dataset, s)
                         for n in layers(spec)]
    return nets


def cross_nets(cfg: dict) -> list[Net]:
    """Every target net of the cross experiment (not the sources)."""
    return sorted({n for t in targets(cfg) for n in target_nets(cfg, t)})


def source_nets(cfg: dict) -> list[Net]:
    """The sources this pipeline trains (each once, whatever the number of targets)."""
    return sorted({s.net for s in sources(cfg).values() if s.net is not None})


def dataset_nets(cfg: dict, dataset: str) -> list[Net]:
    """The cross experiment's nets (targets' and sources') on dataset ``dataset`` (a path key)."""
    return sorted(n for n in set(cross_nets(cfg)) | set(source_nets(cfg)) if n.dataset == dataset)


def own_tree_nets(cfg: dict, dataset: str) -> list[Net]:
    """Those of them in the dataset's own nets/ folder (not a transfer/<source>/ one)."""
    return [n for n in dataset_nets(cfg, dataset) if not n.via]


def source_model(cfg: dict, net: Net) -> str | None:
    """The model.pt a cross net copies units from (None: it copies nothing)."""
    return sources(cfg)[net.via].model() if net.via else None


def stream_groups(cfg: dict) -> list[tuple[str, str, str, str, list[str]]]:
    """(dataset, source, run, target half, nets): the non-base cross nets outside the config's own nets/
    folder that can train on one stream of batches (resources.shared_stream): one group per folder and half.
    Those in the config's own nets/ folder join the paper's groups (plan.stream_groups)."""
    groups: dict[tuple[str, str, str, str], list[str]] = {}
    for n in cross_nets(cfg):
        if not n.parsed.is_base and (n.dataset or n.via):
            groups.setdefault((n.dataset, n.via, n.split, n.parsed.target), []).append(n.name)
    return [(*k, sorted(v)) for k, v in sorted(groups.items())]


def pairs(cfg: dict) -> list[tuple[str, str]]:
    return [(s, t.name) for s in sources(cfg) for t in targets(cfg)]


def target_bases(cfg: dict, target: Target) -> list[str]:
    """The model files of the target's own base nets, one per replicate (the similarity's reference)."""
    return [n.file("model.pt") for n in target_nets(cfg, target) if n.parsed.is_base]


# ---- checks, before any job -------------------------------------------------------------------------


def check_config(cfg: dict, schema: str, overrides: dict | None = None, checkpoints: bool = True) -> None:
    """plan.check_config (the schema, its defaults, the config's own data), then the further data roots
    and the cross experiment (``check``), with each dataset's class count where known before ingest; with
    ``checkpoints`` (Snakemake's main process: not every job again), each checkpoint source's keys."""
    plan.check_config(cfg, schema, overrides)
    check(cfg, lambda d: plan.known_num_classes(dataset_config(cfg, d)))
    for s in sources(cfg).values() if checkpoints else ():
        if s.checkpoint:
            from .sources import SourceError, check_source, is_pipeline_model, load_checkpoint, read_state_dict

            try:
                obj = load_checkpoint(s.checkpoint)
                check_source(obj if is_pipeline_model(obj) else read_state_dict(s.checkpoint), cfg["net"],
                             s.checkpoint, size=int(cfg["preprocess"]["size"]))
            except SourceError as e:
                raise ConfigError(f"experiment.cross.sources.{s.name}: {e}") from e


def check(cfg: dict, num_classes_of) -> None:
    """What the schema cannot say about ``datasets`` and ``experiment.cross``; ``num_classes_of(dataset)``
    gives a dataset's class count when it is known before ingest. Raises ConfigError naming the key."""
    _check_names(cfg)
    _check_block(cfg)
    for name in datasets(cfg):  # after the block: a dataset's checks read the splits it names
        _check_dataset(cfg, name, num_classes_of)
    own = {paths.base_split(n.split) for n in dataset_nets(cfg, "")}
    if own - set(plan.used_splits(cfg)):  # the config's own data: the splits its cross nets train on too
        plan.check({**cfg, "_used_splits": sorted(own | set(plan.used_splits(cfg)))}, num_classes_of(""))


# folder names of the results tree: a dataset or source of that name would make a path read two ways
RESERVED = (MAIN, "own", "nets", "transfer", "datasets", "sources")


def _check_names(cfg: dict) -> None:
    """Names become folders, rule names and file stems: refuse the reserved ones and two that would give
    the same rule or file (``group_rule_name``, ``pair_stem``)."""
    b = block(cfg) or {}
    for where, names in (("datasets", datasets(cfg)), ("experiment.cross.sources", sorted(b.get("sources") or {}))):
        bad = [n for n in names if n in RESERVED]
        if bad:
            raise ConfigError(f"{where}.{bad[0]}: the name {bad[0]!r} is reserved ({', '.join(RESERVED)} name "
                              "folders of the results tree or the config's own data); rename it")
    if not b:
        return
    stems = [pair_stem(s, t) for s, t in pairs(cfg)]
    groups = [group_rule_name(*g[:4]) for g in stream_groups(cfg)]
    groups += [group_rule_name("", "", s, t) for s, t, _ in plan.stream_groups(cfg, own_tree_nets(cfg, ""))]
    for what, names in (("file names", stems), ("rule names", groups)):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"experiment.cross: two sources, targets or splits give the same {what} ({dup[0]}); "
                              "rename one of them")


def pair_stem(source: str, target: str) -> str:
    """The file stem of a (source, target) pair's figure and similarity table."""
    return f"{source}_to_{target}"


def group_rule_name(dataset: str, via: str, split: str, target: str) -> str:
    """The rule of one shared-stream group (workflow/rules/train.smk): the paper's keep their names
    (train_together_<run>_<half>), others name their dataset and source ("own": the dataset's own nets)."""
    parts = [name_of(dataset), via or "own"] if dataset or via else []
    return "_".join(["train_together", *parts, split.replace(".", "__"), target])


def _check_block(cfg: dict) -> None:
    b = block(cfg)
    if not b:
        return
    if not any(paths.TREATMENT[t].source == "other" for t in b["treatments"]):
        raise ConfigError("experiment.cross.treatments: name AnB or AnB+ (random filters and the base net alone "
                          "copy nothing from a source: there would be no transfer to report)")
    k = len(paths.unit_names(cfg["net"]))
    for field in ("layers", "finetune_layers"):
        bad = [n for n in b.get(field, []) if not 1 <= n <= k]
        if bad:
            raise ConfigError(f"experiment.cross.{field}: {bad} outside 1..{k} ({cfg['net']['arch']} has {k} units)")
    for name, spec in sorted(b["sources"].items()):
        _check_source(cfg, name, spec)
    for t in targets(cfg):
        _check_half(cfg, f"experiment.cross.targets.{t.name}", t.name, t.split, t.half)


def _check_dataset(cfg: dict, name: str, num_classes_of) -> None:
    data = cfg["datasets"][name]["data"]
    if data["source"] == "path":
        root = data.get("root")
        if not root:
            raise ConfigError(f"datasets.{name}.data.root is required when its data.source is 'path'")
        if not os.path.isdir(root):
            raise ConfigError(f"datasets.{name}.data.root {root!r} does not exist or is not a directory")
    view = dataset_config(cfg, name)
    try:
        plan.check(view, num_classes_of(name))
    except ConfigError as e:
        raise ConfigError(f"datasets.{name}: {e}") from e


def _check_source(cfg: dict, name: str, spec: dict) -> None:
    where = f"experiment.cross.sources.{name}"
    if spec.get("checkpoint"):
        if not os.path.isfile(spec["checkpoint"]):
            raise ConfigError(f"{where}.checkpoint: no file {spec['checkpoint']!r}")
        return
    _check_half(cfg, where, spec["dataset"], spec["split"], spec["half"])


def _check_half(cfg: dict, where: str, dataset: str, split: str, half: str) -> None:
    if dataset != MAIN and dataset not in (cfg.get("datasets") or {}):
        raise ConfigError(f"{where}: no dataset {dataset!r} (datasets: {', '.join([MAIN, *datasets(cfg)])})")
    view = dataset_config(cfg, key(dataset))
    if split not in view["splits"]:
        raise ConfigError(f"{where}: dataset {dataset!r} has no split {split!r} (splits: {sorted(view['splits'])})")
    halves = plan.halves_of(view, split)
    if half not in halves:
        raise ConfigError(f"{where}: split {split!r} of {dataset!r} has no half {half!r} (halves: {halves})")
    if half == CROSS_SOURCE:
        raise ConfigError(f"{where}: half {half!r}: X names the cross source in net names (X3A); rename the half")
