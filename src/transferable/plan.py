"""Which nets an experiment trains, and what each needs: pure functions of the validated config.

The Snakefile asks this module for the inputs of every aggregate target, so that a figure's target plans
only the nets drawn in it (Figure 2 never plans a natural/man-made net, Figure 3 never plans a selffer).
"""

from __future__ import annotations

import os
import re

import functools

from dataclasses import dataclass

from . import paths
from .settings import schema_default, setting  # noqa: F401  (the workflow reads schema keys through setting)

TREATMENTS = paths.TRANSFER_TREATMENTS


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and what is allowed."""


@dataclass(frozen=True, order=True)
class Net:
    """A planned net: its run (split or replicate), name, dataset ("" the config's own data) and the cross
    source it copies from ("" none)."""

    split: str
    name: str
    dataset: str = ""
    via: str = ""

    @property
    def parsed(self) -> paths.NetName:
        return paths.parse_net(self.name)

    def file(self, what: str) -> str:
        return paths.net_file(self.split, self.name, what, self.dataset, self.via)


def replicates(block: dict, split: str) -> list[str]:
    """The run names of ``split`` in an experiment block: the split itself, then its training-seed
    replicates ``{split}.s1`` ... (``replicates`` in the block, default 1)."""
    return [paths.replicate_split(split, r) for r in range(int(block.get("replicates", 1)))]


def halves_of(cfg: dict, split: str) -> list[str]:
    spec = cfg["splits"][paths.base_split(split)]
    if spec["kind"] == "random":
        return ["A", "B"]
    if spec["kind"] == "all":
        return ["A"]
    return sorted(spec["halves"])


def _other(halves: list[str], target: str) -> str:
    others = [h for h in halves if h != target]
    if len(others) != 1:
        raise ConfigError(f"half {target!r} has no unique other half among {halves}")
    return others[0]


def random_split_nets(cfg: dict) -> list[Net]:
    """Figure 2 and Table 1: base nets, selffers and transfers on the random A/B splits."""
    exp = cfg["experiment"].get("random_splits")
    if not exp:
        return []
    nets: set[Net] = set()
    for split in (run for s in exp["splits"] for run in replicates(exp, s)):
        halves = halves_of(cfg, split)
        for target in exp["targets"]:
            other = _other(halves, target)
            nets.add(Net(split, paths.net_name(target)))
            for treatment in exp["treatments"]:
                t = paths.TREATMENT[treatment]
                layers = [0] if t.per_cell else (exp.get("finetune_layers", exp["layers"]) if t.fine_tuned
                                                  else exp["layers"])
                for n in layers:
                    nets.add(Net(split, paths.treatment_net(treatment, target, other, n)))
    return _with_sources(nets)


def natman_nets(cfg: dict) -> list[Net]:
    """Figure 3, top left: frozen transfer between the man-made and natural halves."""
    exp = cfg["experiment"].get("natman")
    if not exp:
        return []
    halves = halves_of(cfg, exp["split"])
    nets: set[Net] = set()
    for split in replicates(exp, exp["split"]):
        nets |= {Net(split, paths.net_name(t)) for t in exp["targets"]}
        for target in exp["targets"]:
            for n in exp["layers"]:
                nets.add(Net(split, paths.net_name(target, n, _other(halves, target))))
    return _with_sources(nets)


def random_filter_nets(cfg: dict) -> list[Net]:
    """Figure 3, top right: the first n layers random and frozen, trained on all classes; and its reference."""
    exp = cfg["experiment"].get("random_filters")
    if not exp:
        return []
    nets: set[Net] = set()
    for split in replicates(exp, exp["split"]):
        nets |= {Net(split, "baseA")} | {Net(split, paths.net_name("A", n, "R")) for n in exp["layers"]}
    return sorted(nets)


def _with_sources(nets: set[Net]) -> list[Net]:
    out = set(nets)
    for net in nets:
        src = source_of(net)
        if src is not None:
            out.add(src)
    return sorted(out)


def source_of(net: Net) -> Net | None:
    """The base net whose final weights net copies (None for base nets and random filters)."""
    p = net.parsed
    if not p.spec.has_source:
        return None
    return Net(net.split, paths.net_name(p.source))


def figure_nets(cfg: dict, figure: str) -> list[Net]:
    rand = random_split_nets(cfg)
    if figure == "fig2":
        return rand
    if figure == "table1":  # the base nets and the paper's fine-tuned treatments (BnB+, AnB+)
        return [n for n in rand if n.parsed.is_base or (n.parsed.spec.fine_tuned and n.parsed.spec.paper
                                                        and n.parsed.spec.copies == "units")]
    if figure == "fig3":
        # The relative panel compares against the random-split frozen transfers from the other half (AnB)
        rel = [n for n in rand if n.parsed.is_base or (n.parsed.spec.source == "other" and n.parsed.frozen)]
        return sorted(set(rel) | set(natman_nets(cfg)) | set(random_filter_nets(cfg)))
    if figure == "all":
        return sorted(set(rand) | set(natman_nets(cfg)) | set(random_filter_nets(cfg)))
    raise ValueError(f"unknown figure {figure!r}")


def similarity_nets(cfg: dict) -> list[Net]:
    """The nets ``experiment.similarity`` compares (transferable.similarity.analyse): the base nets and
    fine-tuned nets of the random splits, and the base nets of every replicated block (the seed floor)."""
    if not cfg["experiment"].get("similarity"):
        return []
    nets = {n for n in random_split_nets(cfg) if n.parsed.is_base or n.parsed.finetune}
    for key, fn in (("random_splits", random_split_nets), ("natman", natman_nets), ("random_filters", random_filter_nets)):
        block = cfg["experiment"].get(key)
        if block and int(block.get("replicates", 1)) > 1:
            nets |= {n for n in fn(cfg) if n.parsed.is_base}
    return sorted(nets | set(seed_floor_nets(cfg)))


def seed_floor_nets(cfg: dict) -> list[Net]:
    """``experiment.similarity.seed_floor``: the first k random splits' base nets, trained once more with
    another seed (replicate 1), so that CKA between random-split nets has its noise floor in every design.
    Nets the design already trains (``replicates: 2``) are not added twice."""
    sim, rs = cfg["experiment"].get("similarity"), cfg["experiment"].get("random_splits")
    if not sim or not rs:
        return []
    k = int(sim["seed_floor"] if "seed_floor" in sim else schema_default("experiment.similarity.seed_floor"))
    out = []
    for split in rs["splits"][:k]:
        for half in halves_of(cfg, split):
            out += [Net(split, paths.net_name(half)), Net(paths.replicate_split(split, 1), paths.net_name(half))]
    return out


def stream_groups(cfg: dict, extra: list[Net] = ()) -> list[tuple[str, str, list[str]]]:
    """(split, target half, nets) for every set of non-base nets that train on the same half: with
    ``resources.shared_stream`` each set trains in one job on one stream of batches. ``extra``: more nets
    of the config's own nets/ tree (a cross target's random-filter nets on its own data)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for net in sorted(set(figure_nets(cfg, "all")) | set(extra)):
        p = net.parsed
        if not p.is_base:
            groups.setdefault((net.split, p.target), []).append(net.name)
    return [(s, t, sorted(n)) for (s, t), n in sorted(groups.items())]


def split_kind(cfg: dict, split: str) -> str:
    split = paths.base_split(split)
    kind = cfg["splits"][split]["kind"]
    return {"random": "random", "all": "all"}.get(kind, "natman" if _is_natman(cfg, split) else kind)


def _is_natman(cfg: dict, split: str) -> bool:
    exp = cfg["experiment"].get("natman")
    return bool(exp) and exp["split"] == split


def used_splits(cfg: dict) -> list[str]:
    """The configured splits the experiment trains on (replicates count as their split); a dataset's view
    (crossplan.dataset_config) carries its own."""
    if "_used_splits" in cfg:
        return list(cfg["_used_splits"])
    return sorted({paths.base_split(n.split) for n in figure_nets(cfg, "all")})


def known_num_classes(cfg: dict) -> int | None:
    """The number of classes, known before any job runs: the demo's from its config, a data root's from
    its devkit or train/ folders (never from an earlier run's catalog, which may be another dataset's)."""
    if cfg["data"]["source"] == "demo":
        return 2 * setting(cfg, "demo", "classes_per_family")
    return _count_classes(cfg["data"]["root"], setting(cfg, "data", "format"))


@functools.lru_cache(maxsize=8)
def _count_classes(root: str, fmt: str) -> int | None:
    """The devkit (or train/ folders) read once per Snakemake process, whoever asks (the config check, the
    shard plan, the figures' paper lines)."""
    from .data.ilsvrc import count_classes

    return count_classes(root, fmt)


def _typed(v: str):
    """What YAML makes of a command-line string: a number, true/false, a list; else the string itself
    (``on``, ``no``... stay strings, and so does anything YAML cannot read)."""
    import yaml

    try:
        t = yaml.safe_load(v) if v.strip() else v
    except yaml.YAMLError:
        return v
    if isinstance(t, bool) and v.strip().lower() not in ("true", "false"):
        return v
    if t is None and v.strip() in ("null", "~"):
        return None
    return t if isinstance(t, (int, float, bool, list)) else v


# what YAML 1.2 reads as a number and PyYAML (YAML 1.1: a dot required) leaves a string: 1e-2, 5E3
_EXPONENT_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _as_documented(cfg: dict, schema: dict) -> None:
    """Values as the schema documents them, before it is checked: a null where the schema allows null and
    has no default means the key is absent (``experiment.similarity: null``: off), and a number written
    with an exponent and no dot (``lr: 1e-2``, a string to YAML 1.1) is a number where one is expected."""
    for key, sub in (schema.get("properties") or {}).items():
        if key not in cfg:
            continue
        types = sub.get("type", [])
        types = [types] if isinstance(types, str) else types
        v = cfg[key]
        if v is None and "null" in types and "default" not in sub:
            del cfg[key]
        elif isinstance(v, str) and {"number", "integer"} & set(types) and _EXPONENT_FLOAT.match(v.strip()):
            cfg[key] = float(v) if "number" in types or not float(v).is_integer() else int(float(v))
        elif isinstance(v, dict):
            _as_documented(v, sub)
            for pattern in (sub.get("additionalProperties"), *(sub.get("patternProperties") or {}).values()):
                if isinstance(pattern, dict) and pattern.get("properties"):
                    for item in v.values():
                        if isinstance(item, dict):
                            _as_documented(item, pattern)


def retype_overrides(cfg: dict, overrides: dict | None) -> None:
    """Snakemake types a top-level ``--config key=value`` (int, float, bool) but reads a nested one,
    ``--config 'train={lr: 0.02, max_iter: 500}'``, with YAML's BaseLoader: every value a string. Give each
    nested command-line override in ``cfg`` the type YAML would give it, so that nested overrides work.
    ``overrides`` must be the ``--config`` values only (config files are typed already)."""

    def walk(over, into: dict, depth: int) -> None:
        for k, v in over.items():
            if isinstance(v, dict) and isinstance(into.get(k), dict):
                walk(v, into[k], depth + 1)
            elif depth > 0 and isinstance(v, str) and into.get(k) == v:
                into[k] = _typed(v)
            elif depth > 0 and isinstance(v, (list, tuple)) and list(into.get(k) or []) == list(v):
                into[k] = [_typed(x) if isinstance(x, str) else x for x in v]

    walk(overrides or {}, cfg, 0)


def check_config(cfg: dict, schema: str, overrides: dict | None = None) -> None:
    """Validate ``cfg`` in place, as the Snakefile does before any job: nested ``--config`` overrides
    typed (``retype_overrides``), the JSON Schema (types, allowed values, unknown keys; fills defaults),
    ``--config data_root=...``, the data root, then ``check``. Raises ConfigError naming the key."""
    import os

    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    import yaml

    retype_overrides(cfg, overrides)
    with open(schema) as f:
        _as_documented(cfg, yaml.safe_load(f))
    try:
        validate(cfg, schema)  # and fills the schema's defaults
    except WorkflowError as e:  # its message prints the whole schema: name the key instead
        import jsonschema
        import yaml

        with open(schema) as f:
            errors = list(jsonschema.Draft202012Validator(yaml.safe_load(f)).iter_errors(cfg))
        raise ConfigError(_schema_message(jsonschema.exceptions.best_match(errors)) if errors else str(e)) from e
    if cfg.get("data_root"):  # `--config data_root=/path/to/imagenet`
        cfg["data"].update(source="path", root=str(cfg["data_root"]))
    if cfg["data"]["source"] == "path":
        root = cfg["data"].get("root")
        if not root:
            raise ConfigError("data.root is required when data.source is 'path' (--config data_root=...)")
        if not os.path.isdir(root):
            raise ConfigError(f"data.root {root!r} does not exist or is not a directory")
    check(cfg, known_num_classes(cfg))


def _schema_message(err) -> str:
    """A JSON Schema error with the key spelled as a user writes it (``train.batch_size: 'big' is not ...``)."""
    where = ".".join(str(p) for p in err.absolute_path) or "the config"
    if "propertyNames" in err.schema_path and "halves" in err.absolute_path:
        return (f"{where}: {err.message} (a half is named by one capital letter other than R: net names are "
                "built from it, A3B, and R means random filters; put the half's display name in family)")
    if "propertyNames" in err.schema_path:
        return f"{where}: {err.message} (names may use letters, digits, _ and -, and do not begin with -)"
    if err.validator == "additionalProperties":
        return f"{where}: {err.message} (see workflow/schemas/config.schema.yaml for the keys allowed)"
    return f"{where}: {err.message}"


def _check_finite(cfg: dict, where: str = "") -> None:
    """NaN passes every JSON Schema bound (each comparison is false) and infinity passes a minimum: refuse
    both anywhere in the config (``train.lr: .nan`` would end in a FloatingPointError after the data)."""
    import math

    for k, v in cfg.items():
        key = f"{where}{k}"
        for i, x in enumerate(v if isinstance(v, list) else [v]):
            if isinstance(x, float) and not math.isfinite(x):
                raise ConfigError(f"{key}{f'[{i}]' if isinstance(v, list) else ''}: {x} is not a finite number")
            if isinstance(x, dict):
                _check_finite(x, key + ".")


def check(cfg: dict, num_classes: int | None = None) -> None:
    """Semantic checks the JSON Schema cannot express. Raises ConfigError naming the key.
    ``num_classes``, when known before ingest runs, bounds class ranges."""
    splits = cfg["splits"]
    exp = cfg["experiment"]
    if num_classes is not None:
        from .data.splits import SplitError, check_half_size, parse_ranges

        for name, spec in splits.items():
            if spec["kind"] == "ranges":
                for h, hs in (spec.get("halves") or {}).items():
                    key = f"splits.{name}.halves.{h}.ranges"
                    try:
                        check_half_size(len(parse_ranges(hs.get("ranges", ""), num_classes, key)), key)
                    except SplitError as e:
                        raise ConfigError(f"{e} (the dataset has {num_classes} classes)") from e
            if spec["kind"] == "random" and num_classes < 4:
                raise ConfigError(f"splits.{name}: a random split needs at least 4 classes (2 per half), "
                                  f"the dataset has {num_classes}")
            if spec["kind"] == "all" and num_classes < 2:
                raise ConfigError(f"splits.{name}: kind 'all' needs at least 2 classes, the dataset has {num_classes}")
    _check_finite(cfg)
    for name, spec in splits.items():
        if spec["kind"] in ("ranges", "ancestors"):
            halves = spec.get("halves") or {}
            if len(halves) != 2:
                raise ConfigError(f"splits.{name}.halves: need exactly two halves, got {sorted(halves)}")
            for h, hs in halves.items():
                key = "ranges" if spec["kind"] == "ranges" else "ancestors"
                if key not in hs:
                    raise ConfigError(f"splits.{name}.halves.{h}: kind {spec['kind']!r} needs key {key!r}")

    def need_split(key: str, split: str, kinds: tuple[str, ...]) -> None:
        if split not in splits:
            raise ConfigError(f"{key}: split {split!r} is not defined under 'splits' (defined: {sorted(splits)})")
        if splits[split]["kind"] not in kinds:
            raise ConfigError(
                f"{key}: split {split!r} has kind {splits[split]['kind']!r}; allowed here: {list(kinds)}"
            )

    rs = exp.get("random_splits")
    if rs:
        for s in rs["splits"]:
            need_split("experiment.random_splits.splits", s, ("random",))
        for t in rs["targets"]:
            if t not in ("A", "B"):
                raise ConfigError(f"experiment.random_splits.targets: {t!r} is not a half (allowed: A, B)")
        bad = [t for t in rs["treatments"] if t not in paths.TRANSFER_TREATMENTS]
        if bad:
            raise ConfigError(f"experiment.random_splits.treatments: {bad} unknown (allowed: "
                              f"{', '.join(paths.TRANSFER_TREATMENTS)}; paths.TREATMENT_TABLE defines them)")
    nm = exp.get("natman")
    if nm:
        need_split("experiment.natman.split", nm["split"], ("ranges", "ancestors"))
        halves = halves_of(cfg, nm["split"])
        for t in nm["targets"]:
            if t not in halves:
                raise ConfigError(f"experiment.natman.targets: {t!r} is not a half of {nm['split']!r} ({halves})")
    rf = exp.get("random_filters")
    if rf:
        need_split("experiment.random_filters.split", rf["split"], ("all",))
    try:
        k = len(paths.unit_names(cfg["net"]))
    except ValueError as e:
        raise ConfigError(str(e)) from e
    for key, block in (("random_splits", rs), ("natman", nm), ("random_filters", rf)):
        for field in ("layers", "finetune_layers"):
            if block and field in block:
                bad = [n for n in block[field] if not (isinstance(n, int) and 1 <= n <= k)]
                if bad:
                    raise ConfigError(f"experiment.{key}.{field}: {bad} outside the allowed 1..{k} "
                                      f"({cfg['net']['arch']} has {k} transferable units)")
    _check_arch(cfg)
    _check_training(cfg)
    if num_classes is not None:
        _check_outputs(cfg, num_classes)


def _check_arch(cfg: dict) -> None:
    """What only some architectures have: CaffeNet's widths, LRN and fillers; the image size a ViT's position embedding is built for."""
    net, arch = cfg["net"], cfg["net"]["arch"]
    caffe = arch.startswith("caffenet")
    if not caffe:
        if "widths" in net:  # (dropout, lrn and init have defaults: they are CaffeNet's and ignored here)
            raise ConfigError(f"net.widths: a CaffeNet setting; {arch} is torchvision's definition (remove it)")
        if setting(cfg, "train", "optimizer") == "caffe_sgd":
            raise ConfigError(f"train.optimizer: caffe_sgd is the paper's solver for CaffeNet; for {arch} use "
                              "sgd (ResNets) or adamw (ViTs)")
    elif setting(cfg, "net", "units") != "blocks":
        raise ConfigError(f"net.units: CaffeNet's units are its layers (units: blocks), not {net['units']!r}")
    if arch in paths.VIT_PATCH and net["crop"] % paths.VIT_PATCH[arch]:
        raise ConfigError(f"net.crop: {net['crop']} is not a multiple of {arch}'s patch size")


def _check_training(cfg: dict) -> None:
    """Settings that could only end in a crash mid-pipeline, or in a score that means nothing."""
    net, train, prep = cfg["net"], cfg["train"], cfg["preprocess"]
    if net["crop"] > prep["size"]:
        raise ConfigError(f"net.crop: {net['crop']} is larger than the warped images (preprocess.size "
                          f"{prep['size']}); the crop must fit inside them (paper: 227 of 256)")
    max_iter, every = int(train["max_iter"]), int(train["eval_every"])
    evals = max_iter // every + (1 if max_iter % every else 0)  # and one at the last iteration
    best_k = int(setting(cfg, "metric", "best_k"))
    if evals < best_k:
        raise ConfigError(f"metric.best_k: {best_k} best evaluations asked for, but train.max_iter {max_iter} "
                          f"with train.eval_every {every} evaluates {evals} time(s); lower best_k or eval_every")
    warm = int(setting(cfg, "train", "warmup_iter"))
    if warm >= max_iter:
        raise ConfigError(f"train.warmup_iter: {warm} warm-up iterations leave none of "
                          f"train.max_iter {max_iter}")
    demo = cfg.get("demo") if cfg["data"]["source"] == "demo" else None
    smallest = None
    if demo is not None:  # the smallest half's training set is known before any job runs
        per_class = int(setting(cfg, "demo", "train_per_class"))
        num_classes = 2 * int(setting(cfg, "demo", "classes_per_family"))
        smallest = per_class * min(_half_sizes(cfg, num_classes), default=num_classes)
    elif cfg["data"]["source"] == "path" and setting(cfg, "data", "format") in ("auto", "folder"):
        counts = _folder_train_counts(cfg["data"]["root"])  # an image folder: count its files (cheap)
        halves = _half_classes(cfg, len(counts)) if counts else []
        if halves:
            smallest = min(sum(counts[c] for c in h) for h in halves)
    if smallest is not None and int(train["batch_size"]) > smallest:
        raise ConfigError(f"train.batch_size: {train['batch_size']} is larger than the smallest half's "
                          f"{smallest} training images")


@functools.lru_cache(maxsize=8)
def _folder_train_counts(root: str) -> tuple[int, ...] | None:
    """Training images per class of an image-folder root, in class order (the walk ingest makes), from
    directory entries only; None for another layout or an unreadable root."""
    from pathlib import Path

    from .data.ilsvrc import IMAGE_EXTS, detect_format, walk_subset

    try:
        if detect_format(Path(root)) != "folder":
            return None
        out = []
        for d in walk_subset(Path(root) / "train").classes:
            with os.scandir(d) as it:
                out.append(sum(1 for e in it if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS))
        return tuple(out)
    except Exception:  # noqa: BLE001 - ingest reports an unreadable root, naming it
        return None


def _half_classes(cfg: dict, num_classes: int) -> list[list[int]]:
    """The class indices of every half the experiment trains on whose classes are known before ingest
    (random, ranges, all; ancestor halves need the catalog)."""
    from .data.splits import parse_ranges, random_halves

    out = []
    for name in used_splits(cfg):
        spec = cfg["splits"][name]
        if spec["kind"] == "random":
            out += list(random_halves(num_classes, int(spec.get("seed", 0))))
        elif spec["kind"] == "all":
            out.append(list(range(num_classes)))
        elif spec["kind"] == "ranges":
            out += [parse_ranges(h["ranges"], num_classes) for h in spec["halves"].values()]
    return out


def _half_sizes(cfg: dict, num_classes: int) -> list[int]:
    """The number of classes of every half the experiment trains on (ancestor halves: unknown before ingest)."""
    from .data.splits import parse_ranges

    sizes = []
    for name in used_splits(cfg):
        spec = cfg["splits"][name]
        if spec["kind"] == "random":
            sizes += [num_classes // 2, num_classes - num_classes // 2]
        elif spec["kind"] == "all":
            sizes.append(num_classes)
        elif spec["kind"] == "ranges":
            sizes += [len(parse_ranges(h["ranges"], num_classes)) for h in spec["halves"].values()]
    return sizes


def _check_outputs(cfg: dict, num_classes: int) -> None:
    outputs = setting(cfg, "net", "outputs")
    largest = max(_half_sizes(cfg, num_classes), default=0)
    if isinstance(outputs, int) and outputs < largest:
        raise ConfigError(f"net.outputs: {outputs} fc8 outputs are fewer than the {largest} classes of the "
                          "largest half; use 'all', 'half' or a number at least that large")


def shard_parts(cfg: dict, num_classes: int | None) -> int:
    """``preprocess.parts``, clamped to the number of classes (a part is a block of whole classes)."""
    parts = int(setting(cfg, "preprocess", "parts"))
    return max(1, min(parts, num_classes)) if num_classes else parts
