"""The results/ path grammar, as pure functions (the only project module the Snakefile imports, with plan.py).

    results/demo_data/                         the generated demo dataset (official ILSVRC2012 files)
    results/ingest/{catalog,images}.csv        class catalog and image index of the raw data
    results/ingest/raw/<digest>.sha256         named by the content digest of a tree/folder data root (rerun trigger)
    results/splits/{split}.json                class-split manifest: halves -> original class indices
    results/shards/{prep}/part{k}/             preprocessed uint8 arrays, one file per class and subset
    results/shards/{prep}/index.json           which part holds which class; counts; rejects
    results/nets/{split}/{net}/                model.pt, history.csv, metrics.json of one trained net
    results/nets/{split}.s{r}/{net}/           the same net, training-seed replicate r >= 1 (same classes)
    results/ckpt/{split}/{net}/last.pt         in-progress checkpoint (NOT a declared output: survives failures)
    results/datasets/{dataset}/...             a further data root (``datasets``): its own demo_data/, ingest/,
                                               splits/, shards/, nets/ and ckpt/, laid out as above
    results/datasets/{dataset}/transfer/{source}/{run}/{net}/
                                               a cross-dataset net: units 1..n from source ``{source}``
                                               (``experiment.cross``), trained on that dataset
    results/sources/{source}/model.pt          a checkpoint file brought as a source, mapped onto the units
    results/tables/*.csv, results/figures/*    aggregates
    logs/<same path as the output>.log         one log per job
    benchmarks/<same path as the output>.tsv   its wall time and peak memory (Snakemake's benchmark:)

Every function that names a data-dependent path takes ``dataset`` ("" for the config's own data root, the
tree above; a name of ``datasets`` for a further one) and, for nets, ``via`` (the cross source a net copies
from), so that two data roots' results never share a path.

Net names: ``base{T}`` (from scratch on half T), ``{S}{n}{T}`` (layers 1..n from the base net of half S,
frozen, trained on half T), ``{S}{n}{T}_ft`` (the same, fine-tuned: the paper's "+"), ``R{n}{T}`` (first n
layers random and frozen: the random-filter control), ``X{n}{T}`` and ``X{n}{T}_ft`` (units 1..n from a
cross source, another dataset's net or a checkpoint: the directory names it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .data.formats import RESIZES, SHARD_FORMATS

RESULTS = "results"
LOGS = "logs"
BENCHMARKS = "benchmarks"

# CaffeNet's transferable layers in order: n in a net's name counts them (fc8 is always re-initialised)
LAYER_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")

# The treatments, written once (see TREATMENT_TABLE below): the order is the paper's legend, with the
# controls after it.
# the columns of every net's history.csv (written by training, read by the figures)
HISTORY_COLUMNS = ("iter", "epoch", "lr", "train_loss", "val_loss", "top1", "top5", "elapsed_s")


def _resnet_units(blocks: tuple[int, ...]) -> dict:
    return {"blocks": ("stem", *(f"layer{s + 1}.{j}" for s, b in enumerate(blocks) for j in range(b))),
            "stages": ("stem", "layer1", "layer2", "layer3", "layer4")}


# Every architecture's transferable units in order (models/units.py builds them; a test checks the two
# agree): n counts them, the head is always new. Light enough for the Snakefile to import.
UNIT_NAMES = {
    "caffenet": {"blocks": LAYER_NAMES},
    "caffenet-small": {"blocks": LAYER_NAMES},
    "resnet18": _resnet_units((2, 2, 2, 2)),
    "resnet50": _resnet_units((3, 4, 6, 3)),
    "resnet-small": _resnet_units((1, 1, 1, 1)),
    "vit_b_16": {"blocks": ("embed", *(f"block{i}" for i in range(1, 13)))},
    "vit-small": {"blocks": ("embed", *(f"block{i}" for i in range(1, 5)))},
}


# A ViT's patch side: its crop must be a multiple of it
VIT_PATCH = {"vit_b_16": 16, "vit-small": 4}


def unit_names(net: dict) -> tuple[str, ...]:
    """The transferable units of the config's ``net`` section, in order."""
    from .settings import setting

    arch, units = net.get("arch", "caffenet"), setting({"net": net}, "net", "units")
    if arch not in UNIT_NAMES:
        raise ValueError(f"net.arch: unknown {arch!r} (allowed: {', '.join(UNIT_NAMES)})")
    if units not in UNIT_NAMES[arch]:
        raise ValueError(f"net.units: {arch} has no {units!r} units (allowed: {', '.join(UNIT_NAMES[arch])})")
    return UNIT_NAMES[arch][units]


@dataclass(frozen=True)
class Treatment:
    """One treatment, defined once: what a net of it copies, from where, and what then trains. The net-name
    grammar, the plan, the config check, the trainer, the tables and the figures' styles read this.

    ``source``: where the copied weights come from: "" (nothing: trained from scratch), "self" (the target
    half's own base net), "other" (the other half's base net), "random" (nothing copied: units 1..n keep
    their random initialisation, frozen). ``copies``: "" (nothing), "units" (units 1..n; the head and the
    units above n re-initialised) or "all" (every unit and the head: the net is the base net trained on).
    ``fine_tuned``: the copied units train (the paper's "+"), or stay frozen. ``colour``/``marker``: its
    style in every figure; ``label``: its legend text."""

    key: str
    label: str
    source: str
    copies: str
    fine_tuned: bool
    colour: str  # marker fill (Figure 2, top)
    mid: str  # its lines' error bars and training curves
    dark: str  # the paper's dashed lines
    marker: str  # in Figure 2's top panel
    line_marker: str  # on its line of means
    text: str
    paper: bool = True  # one of the paper's treatments (False: a control this pipeline adds)
    fig2: tuple[float, float] | None = None  # Figure 2's top panel: marker size, x offset from n (None: not in it)

    @property
    def per_cell(self) -> bool:
        """One net per (split, target half), not one per n: a reference for every n."""
        return self.copies != "units"

    @property
    def has_source(self) -> bool:
        return self.source in ("self", "other")


TREATMENT_TABLE: tuple[Treatment, ...] = (
    Treatment("base", "base{t}", "", "", False, "w", "k", "k", "o", "o", "trained from scratch on its half",
              fig2=(14, 0.0)),
    Treatment("BnB", "selffer BnB", "self", "units", False, "b", "b", "b", "o", "o",
              "units 1..n copied from its own half's base net and frozen; the rest re-initialised and trained",
              fig2=(14, -0.25)),
    Treatment("BnB+", "selffer BnB$^+$", "self", "units", True, "#aaaaff", "#7070ff", "#5555cc", "o", "P",
              "as BnB, with the copied units fine-tuned", fig2=(14, -0.09)),
    Treatment("AnB", "transfer AnB", "other", "units", False, "r", "r", "r", "D", "D",
              "units 1..n copied from the other half's base net and frozen; the rest re-initialised and trained",
              fig2=(12, 0.09)),
    Treatment("AnB+", "transfer AnB$^+$", "other", "units", True, "#ffaaaa", "#ff6f6f", "#cc5555", "D", "P",
              "as AnB, with the copied units fine-tuned", fig2=(12, 0.27)),
    Treatment("base+", "base{t}$^+$: base{t} trained on", "self", "all", True, "#bbbbbb", "#737373", "#555555", "s",
              "s",
              "the base net copied whole (every unit and the head) and trained once more with the fine-tuned "
              "nets' schedule: extra training alone, the control of every fine-tuned treatment", paper=False,
              fig2=(11, 0.24)),
    Treatment("random", "random filters", "random", "units", False, "#aaaa00", "#aaaa00", "#aaaa00", "v", "v",
              "units 1..n left at their random initialisation and frozen; the rest trained"),
)
TREATMENT = {t.key: t for t in TREATMENT_TABLE}
TREATMENTS = tuple(TREATMENT)
# what an experiment block of random splits may ask for: every treatment that copies from a base net
TRANSFER_TREATMENTS = tuple(t.key for t in TREATMENT_TABLE if t.has_source)
# Figure 2's legend: the paper's transfer treatments
PAPER_TRANSFER_TREATMENTS = tuple(t for t in TRANSFER_TREATMENTS if TREATMENT[t].paper)


# The net-name grammar, written once: parse_net reads it, the Snakefile's wildcard constraints use it.
# ``base{T}`` and ``base{T}_ft`` (nothing copied; everything copied), ``{S}{n}{T}`` and ``{S}{n}{T}_ft``
# (units 1..n from S's base net: S = T the selffer, S = R random filters). n has one or two digits
# (ResNet-50 has 17 units: A12B).
NET_PATTERN = r"base(?P<base>[A-Z])(?P<bft>_ft)?|(?P<src>[A-Z])(?P<n>[1-9][0-9]?)(?P<tgt>[A-Z])(?P<ft>_ft)?"
NET_WILDCARD = re.sub(r"\(\?P<\w+>", "(?:", NET_PATTERN)
BASE_NET_WILDCARD = "base[A-Z]"  # the nets trained from scratch: the only ones that copy nothing
_NET_RE = re.compile(f"^(?:{NET_PATTERN})$")


@dataclass(frozen=True)
class NetName:
    """A parsed net name. ``source`` is the half the copied weights come from ("" for a net trained from
    scratch, "R" for random frozen filters); ``treatment`` the key of its row in TREATMENT_TABLE."""

    name: str
    target: str
    n: int = 0
    source: str = ""
    finetune: bool = False
    treatment: str = "base"

    @property
    def spec(self) -> Treatment:
        return TREATMENT[self.treatment]

    @property
    def is_base(self) -> bool:
        """Trained from scratch: the reference of its cell and the source of others."""
        return self.treatment == "base"

    @property
    def is_random(self) -> bool:
        return self.spec.source == "random"

    @property
    def frozen(self) -> int:
        """How many units stay frozen (the first ``frozen``)."""
        return 0 if self.spec.fine_tuned or not self.spec.copies else self.n


def _treatment_of(source: str, copies: str, fine_tuned: bool, name: str) -> str:
    for t in TREATMENT_TABLE:
        if (t.source, t.copies, t.fine_tuned) == (source, copies, fine_tuned):
            return t.key
    what = {"random": "random-filter nets (R)", "self": "nets copying their own half", "": "nets"}.get(source,
                                                                                                    "nets")
    raise ValueError(f"{name!r}: no treatment has {what} with {'every unit' if copies == 'all' else 'units 1..n'}"
                     f" {'fine-tuned' if fine_tuned else 'frozen'} (treatments: {', '.join(TREATMENTS)})")


def parse_net(name: str) -> NetName:
    m = _NET_RE.match(name)
    if not m:
        raise ValueError(
            f"not a net name: {name!r} (expected baseT, baseT_ft, SnT, SnT_ft or RnT, e.g. baseB, A3B, A3B_ft, R2A)"
        )
    if m["base"]:
        ft = bool(m["bft"])
        t = _treatment_of("self" if ft else "", "all" if ft else "", ft, name)
        return NetName(name, target=m["base"], source=m["base"] if ft else "", finetune=ft, treatment=t)
    src, tgt, ft = m["src"], m["tgt"], bool(m["ft"])
    role = "random" if src == "R" else "self" if src == tgt else "other"
    t = _treatment_of(role, "units", ft, name)
    return NetName(name, target=tgt, n=int(m["n"]), source=src, finetune=ft, treatment=t)


def net_name(target: str, n: int = 0, source: str = "", finetune: bool = False) -> str:
    if n == 0:
        return f"base{target}" + ("_ft" if finetune else "")
    return f"{source}{n}{target}" + ("_ft" if finetune else "")


def treatment_net(treatment: str, target: str, other: str, n: int = 0) -> str:
    """The name of the net of ``treatment`` on half ``target`` (``other``: the other half), at ``n``."""
    t = TREATMENT[treatment]
    if t.copies == "all":
        return net_name(target, 0, target, True)
    if not t.copies:
        return net_name(target)
    source = {"self": target, "other": other, "random": "R"}[t.source]
    return net_name(target, n, source, t.fine_tuned)


_REPLICATE_RE = re.compile(r"^(?P<split>[A-Za-z0-9_-]+)(?:\.s(?P<r>[1-9][0-9]*))?$")
SPLIT_WILDCARD = r"[A-Za-z0-9_-]+(?:\.s[1-9][0-9]*)?"


def replicate_split(split: str, r: int) -> str:
    """The run name of training-seed replicate ``r`` of ``split``: the split itself for r = 0, else
    ``{split}.s{r}``. A replicate trains on the same classes with other seeds (initialisation, data order)."""
    return split if r == 0 else f"{split}.s{int(r)}"


def parse_replicate(run: str) -> tuple[str, int]:
    """(split, replicate) of a run name: ``natman.s2`` -> ("natman", 2), ``rand0`` -> ("rand0", 0)."""
    m = _REPLICATE_RE.match(run)
    if not m:
        raise ValueError(f"not a split name: {run!r} (expected a name of letters, digits, _ or -, "
                         f"optionally followed by .s<replicate>)")
    return m["split"], int(m["r"] or 0)


def base_split(run: str) -> str:
    """The configured split a run name belongs to (its manifest's name)."""
    return parse_replicate(run)[0]


PREP_PATTERN = r"warp(?P<size>\d+)(?:-(?P<resize>bicubic|imagemagick))?(?:-jpeg(?P<quality>\d+))?"
PREP_WILDCARD = re.sub(r"\(\?P<\w+>", "(?:", PREP_PATTERN)


def prep_name(size: int, resize: str = "fast", fmt: str = "raw", quality: int = 90) -> str:
    """Preprocessing id, one shard set per setting: every image warped to size x size (the paper: 256) by
    ``resize``, stored as ``fmt``. The defaults add nothing (``warp20``); ``warp256-imagemagick-jpeg90`` is a
    full decode with ImageMagick's filters, stored as JPEG at quality 90. Changing any of them writes a new
    shard set (and trains on it); the old one stays where it was."""
    if resize not in RESIZES:
        raise ValueError(f"preprocess.resize: {resize!r} is not one of {', '.join(RESIZES)}")
    if fmt not in SHARD_FORMATS:
        raise ValueError(f"preprocess.format: {fmt!r} is not one of {', '.join(SHARD_FORMATS)}")
    return (f"warp{int(size)}" + ("" if resize == "fast" else f"-{resize}")
            + (f"-jpeg{int(quality)}" if fmt == "jpeg" else ""))


def prep_from_config(prep: dict) -> str:
    """The preprocessing id of a config's ``preprocess`` section."""
    from .settings import setting

    c = {"preprocess": prep}
    return prep_name(prep["size"], setting(c, "preprocess", "resize"), setting(c, "preprocess", "format"),
                     setting(c, "preprocess", "jpeg_quality"))


def parse_prep(name: str) -> dict:
    """``prep_name``'s inverse: {"size", "resize", "format", "quality"}."""
    m = re.fullmatch(PREP_PATTERN, name)
    if not m:
        raise ValueError(f"not a preprocessing id: {name!r} (expected e.g. warp256, warp256-imagemagick-jpeg90)")
    q = m["quality"]
    return {"size": int(m["size"]), "resize": m["resize"] or "fast", "format": "jpeg" if q else "raw",
            "quality": int(q) if q else 90}


# how sources and targets name the config's own data root (the others: their ``datasets`` key)
MAIN_DATASET = "main"


def tree(dataset: str = "") -> str:
    """Where one data root's results live: results/ for the config's own, results/datasets/{dataset}/ for
    a further one (``dataset`` may be the wildcard "{dataset}")."""
    return f"{RESULTS}/datasets/{dataset}" if dataset else RESULTS


def demo_dir(dataset: str = "") -> str:
    return f"{tree(dataset)}/demo_data"


DEMO_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz")


def demo_files(dataset: str = "") -> list[str]:
    return [f"{demo_dir(dataset)}/{f}" for f in DEMO_FILES]


def catalog(dataset: str = "") -> str:
    return f"{tree(dataset)}/ingest/catalog.csv"


def images(dataset: str = "") -> str:
    return f"{tree(dataset)}/ingest/images.csv"


def raw_identity(digest: str, dataset: str = "") -> str:
    """The file named by the content digest of an image-folder or extracted-tree data root: an input of
    ingest, so that a change of the data's content reruns it (data/rawfiles.py)."""
    return f"{tree(dataset)}/ingest/raw/{digest}.sha256"


def raw_cache(dataset: str = "") -> str:
    """The stat cache of that digest (read and written while planning; no job reads it)."""
    return f"{tree(dataset)}/ingest/raw/.raw_files.cache.json"


def split_manifest(split: str, dataset: str = "") -> str:
    return f"{tree(dataset)}/splits/{split}.json"


def shard_part(prep: str, k: int | str, dataset: str = "") -> str:
    return f"{tree(dataset)}/shards/{prep}/part{k}"


def shard_index(prep: str, dataset: str = "") -> str:
    return f"{tree(dataset)}/shards/{prep}/index.json"


def shard_rejects(prep: str, dataset: str = "") -> str:
    return f"{tree(dataset)}/shards/{prep}/rejects.csv"


def _runs(dataset: str, via: str) -> str:
    """The folder of a dataset's runs: its own nets, or those copying from cross source ``via``."""
    return f"{tree(dataset)}/transfer/{via}" if via else f"{tree(dataset)}/nets"


def net_dir(split: str, net: str, dataset: str = "", via: str = "") -> str:
    return f"{_runs(dataset, via)}/{split}/{net}"


def net_file(split: str, net: str, what: str, dataset: str = "", via: str = "") -> str:
    return f"{net_dir(split, net, dataset, via)}/{what}"


@dataclass(frozen=True)
class NetLocation:
    """Where a net's files sit: its dataset ("" the config's own), its cross source ("" none), run, name."""

    dataset: str
    via: str
    run: str
    net: str


def locate_net_file(path: str) -> NetLocation:
    """The inverse of ``net_file``: results/[datasets/{d}/](nets|transfer/{source})/{run}/{net}/{what}."""
    parts = str(path).replace("\\", "/").split("/")
    if len(parts) < 3:
        raise ValueError(f"not a net's file: {path!r} (expected .../nets/RUN/NET/FILE)")
    run, net = parts[-3], parts[-2]
    parse_net(net)  # a ValueError naming the name if the path is not a net's file
    parse_replicate(run)
    via = parts[-4] if len(parts) >= 5 and parts[-5] == "transfer" else ""
    rest = parts[:-5] if via else parts[:-4]
    dataset = rest[-1] if len(rest) >= 2 and rest[-2] == "datasets" else ""
    return NetLocation(dataset, via, run, net)


def parse_net_file(path: str) -> tuple[str, str]:
    """(run, net) of a file ``.../nets/{run}/{net}/{what}``: the inverse of ``net_file``."""
    loc = locate_net_file(path)
    return loc.run, loc.net


def checkpoint(split: str, net: str, dataset: str = "", via: str = "") -> str:
    sub = f"transfer/{via}/" if via else ""
    return f"{tree(dataset)}/ckpt/{sub}{split}/{net}/last.pt"


def source_model(source: str) -> str:
    """A checkpoint file brought as a cross source, mapped onto the config's net (rule import_source)."""
    return f"{RESULTS}/sources/{source}/model.pt"


def table(name: str) -> str:
    return f"{RESULTS}/tables/{name}"


def figure(name: str) -> str:
    return f"{RESULTS}/figures/{name}"


def cross_table(name: str) -> str:
    """The cross experiment's tables (experiment.cross): results/tables/cross/."""
    return table(f"cross/{name}")


def cross_figure(name: str) -> str:
    return figure(f"cross/{name}")


def benchmark(path: str) -> str:
    """The benchmark (time, memory, I/O; Snakemake's ``benchmark:``) of the job that writes ``path``:
    benchmarks/ mirrors results/ as logs/ does."""
    rel = path[len(RESULTS) + 1 :] if path.startswith(RESULTS + "/") else path
    return f"{BENCHMARKS}/{rel.rstrip('/')}.tsv"


def log(path: str) -> str:
    """The log of the job that writes ``path``: logs/ mirrors results/."""
    rel = path[len(RESULTS) + 1 :] if path.startswith(RESULTS + "/") else path
    return f"{LOGS}/{rel.rstrip('/')}.log"
