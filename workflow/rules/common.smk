# Config validation, the experiment plan and input functions. Pure path and plan logic lives in
# src/transferable/{paths,plan}.py, where unit tests call it.
import json

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

import transferable
from transferable import paths, plan


def known_num_classes():
    """The number of classes, known before any job runs: the demo's from its config, a data root's from
    its devkit or train/ folders (never from an earlier run's catalog, which may be another dataset's)."""
    if config["data"]["source"] == "demo":
        return 2 * config.get("demo", {}).get("classes_per_family", 20)
    from transferable.data.ilsvrc import count_classes

    return count_classes(config["data"]["root"], config["data"].get("format", "auto"))


def check_config():
    """Everything that can be wrong with the config, found before any job starts."""
    validate(config, "../schemas/config.schema.yaml")  # types, allowed values, unknown keys; fills defaults
    if config.get("data_root"):  # `--config data_root=/path/to/imagenet`
        config["data"].update(source="path", root=str(config["data_root"]))
    if config["data"]["source"] == "path":
        root = config["data"].get("root")
        if not root:
            raise WorkflowError("config: data.root is required when data.source is 'path' (--config data_root=...)")
        if not os.path.isdir(root):
            raise WorkflowError(f"config: data.root {root!r} does not exist or is not a directory")
    try:
        plan.check(config, known_num_classes())
    except plan.ConfigError as e:
        raise WorkflowError(f"config: {e}")


check_config()

# Every rule runs the `transferable` command. Under --use-conda the envs/*.yaml environments carry the
# third-party packages only (Snakemake copies env files, so they cannot pip-install this checkout), so
# `transferable` becomes a shell function that runs the package from the workflow's own src/.
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    shell.prefix(
        f"set -euo pipefail; export PYTHONPATH={workflow.basedir}/src${{PYTHONPATH:+:$PYTHONPATH}}; "
        'transferable() { python -m transferable "$@"; }; '
    )

# The package modules each stage runs, as inputs: editing one reruns that stage and what follows, nothing
# else (cli.py only dispatches and is not listed). Snakemake compares contents, so a mere touch reruns
# nothing. TRANSFERABLE_CODE_DIR points elsewhere (the tests use it to edit a copy).
_PKG = os.environ.get("TRANSFERABLE_CODE_DIR") or os.path.dirname(transferable.__file__)
STAGE_CODE = {
    "demo": ["data/demo.py"],
    "ingest": ["data/ilsvrc.py"],
    "splits": ["data/splits.py"],
    "shards": ["data/shards.py"],
    "train": ["train/loop.py", "train/devices.py", "transfer.py", "models/caffenet.py", "data/loader.py"],
    "figures": [
        "figures/tables.py",
        "figures/effects.py",
        "figures/plots.py",
        "figures/paper.py",
        "figures/paper_networks.csv",
    ],
}


def code(stage):
    return [os.path.join(_PKG, f) for f in STAGE_CODE[stage]]


PREP = paths.prep_name(config["preprocess"]["size"])
RES = config.get("resources", {})

wildcard_constraints:
    split=paths.SPLIT_WILDCARD,
    net=r"base[A-Z]|[A-Z][1-7][A-Z](_ft)?",
    prep=r"warp\d+",
    k=r"\d+",


def data_root():
    return paths.demo_dir() if config["data"]["source"] == "demo" else config["data"]["root"]


def net_outputs(nets, what="metrics.json"):
    return [paths.net_file(n.split, n.name, what) for n in nets]


def final_targets():
    exp = config["experiment"]
    out = [paths.table("runs.csv"), paths.table("paper_comparison.csv"), paths.table("effects.csv"),
           paths.figure("claims.pdf")]
    if exp.get("random_splits"):
        out += [paths.figure("fig2.pdf"), paths.table("table1.csv")]
    if exp.get("natman") or exp.get("random_filters"):
        out.append(paths.figure("fig3.pdf"))
    out += [paths.figure(f"curves_{s}.pdf") for s in plan.used_splits(config)]
    return out


def paper_flag():
    """Whether Figures 2 and 3 draw the paper's ImageNet means: ``figures.paper_lines``; ``auto`` draws
    them only for a 1000-class dataset read from a data root (ImageNet), never on the demo's classes."""
    mode = config.get("figures", {}).get("paper_lines", "auto")
    if mode == "auto":
        mode = "always" if config["data"]["source"] == "path" and known_num_classes() == 1000 else "never"
    return "--paper" if mode == "always" else "--no-paper"


def train_params_of(split):
    """Everything that changes a net's result: a change reruns exactly the nets (and what depends on them)."""
    return json.dumps(
        {
            "net": config["net"],
            "train": config["train"],
            "metric": config.get("metric", {}),
            "split_kind": plan.split_kind(config, split),
        },
        sort_keys=True,
    )


def manifest_of(wildcards):
    """A replicate (``{split}.s{r}``) trains on its split's classes."""
    return paths.split_manifest(paths.base_split(wildcards.split))


def train_params(wildcards):
    return train_params_of(wildcards.split)


def source_model(wildcards):
    src = plan.source_of(plan.Net(wildcards.split, wildcards.net))
    return [paths.net_file(src.split, src.name, "model.pt")] if src else []


def ingest_inputs(wildcards):
    """The raw files ingest reads, so that a replaced archive reruns everything after it."""
    if config["data"]["source"] == "demo":
        return paths.demo_files()
    root = config["data"]["root"]
    official = [os.path.join(root, f) for f in paths.DEMO_FILES]
    return [f for f in official if os.path.isfile(f)]
