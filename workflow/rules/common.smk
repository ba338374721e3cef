# Config validation, the experiment plan and input functions. Pure path and plan logic lives in
# src/transferable/{paths,plan}.py, where unit tests call it.
import functools
import glob
import re
import json
import shlex
import sys

from snakemake.resources import Resources
from snakemake.settings.types import DeploymentMethod

from transferable import advice, attempts, crossplan, paths, plan, provenance
from transferable.figures.spec import FIGURES, REFERENCE


def check_config():
    """Everything that can be wrong with the config, found before any job starts (crossplan.check_config)."""
    try:
        crossplan.check_config(
            config,
            os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml"),
            overrides=workflow.config_settings.config,  # --config values only
            checkpoints=workflow.is_main_process,
        )
    except plan.ConfigError as e:
        raise WorkflowError(f"config: {e}")


@functools.cache
def known_num_classes(dataset=""):
    """A data root's class count before any job ("": the config's own; a name: one of ``datasets``)."""
    return plan.known_num_classes(crossplan.dataset_config(config, dataset))


check_config()

# The data roots: the config's own (results/) and, with ``datasets``, further ones
# (results/datasets/{dataset}/). Every data and training rule is written once and instantiated for each
# tree: its plain name for the config's own data, ``<name>_dataset`` with a {dataset} wildcard for the others.
DATASETS = crossplan.datasets(config)
TREES = [""] + (["{dataset}"] if DATASETS else [])


def rule_name(name, tree):
    return f"{name}_dataset" if tree else name


def view(wildcards):
    """The config of the wildcards' dataset (crossplan.dataset_config): its data, demo and splits."""
    return crossplan.dataset_config(config, getattr(wildcards, "dataset", ""))


# Every job runs `transferable <verb>` = workflow/bin/transferable, which is `python -m transferable` with this
# checkout's src/ first on PYTHONPATH, so the jobs run the same code the workflow parsed and declares as
# inputs, whatever is installed. The python is the one running Snakemake (its environment has the
# third-party packages), or under --use-conda the conda environment's (envs/*.yaml: third-party only).
# The run's own invocation, for the commands messages advise: computed from the command line of the main
# process and inherited by every job's environment (a job's own Snakemake runs with other options).
if workflow.is_main_process or not os.environ.get(advice.ENV):
    os.environ[advice.ENV] = advice.run_invocation(
        workflow.config_settings.configfiles,
        workflow.config_settings.config,
        advice.kept_flags(sys.argv[1:]) if workflow.is_main_process else [],
    )
RERUN = os.environ[advice.ENV]
SRC = os.path.join(workflow.basedir, "src")
_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
_PREFIX = (
    "set -euo pipefail; "
    f"export PYTHONPATH={shlex.quote(SRC)}${{PYTHONPATH:+:$PYTHONPATH}}; "
    f"export TRANSFERABLE_PYTHON={shlex.quote('python' if _CONDA else sys.executable)}; "
    f"export PATH={shlex.quote(os.path.join(workflow.basedir, 'workflow/bin'))}:$PATH; "
    # the commands a job's messages advise carry this run's own --configfile/--config and placement (advice.py)
    f"export {advice.ENV}={shlex.quote(RERUN)}; "
)
# shell.prefix is itself formatted by Snakemake: its literal braces are doubled once more
shell.prefix(_PREFIX.replace("{", "{{").replace("}", "}}"))


# The package modules each stage runs (transferable.provenance.stage_code: its entry modules and all they
# import, read from the sources), as inputs: editing one reruns that stage and what follows, nothing else. Snakemake compares contents, so a mere touch reruns nothing.
# They are named relative to the working directory (src/transferable/... in a checkout), so a finished run
# stays finished when the checkout is moved or cloned again at the same commit.
def code(stage):
    return [
        os.path.relpath(f)
        for f in provenance.stage_files(stage, os.path.join(SRC, "transferable"))
    ]


PREP = paths.prep_from_config(config["preprocess"])
RES = config.get("resources", {})


def res(key):
    """resources.<key>, or the schema's default."""
    return plan.setting(config, "resources", key)


wildcard_constraints:
    dataset="|".join(re.escape(d) for d in DATASETS) or "(?!)",
    source="|".join(re.escape(s) for s in crossplan.sources(config)) or "(?!)",
    split=paths.SPLIT_WILDCARD,
    net=paths.NET_WILDCARD,
    prep=paths.PREP_WILDCARD,
    k=r"\d+",


def train_device():
    """resources.device for the training jobs. With device auto, the trainer follows the GPUs the job is
    granted (--gpus {resources.gpu}): none, the CPU; one or more, a GPU or an error saying why not.
    """
    return res("device")


def data_root(dataset=""):
    cfg = crossplan.dataset_config(config, dataset)
    return (
        paths.demo_dir(dataset)
        if cfg["data"]["source"] == "demo"
        else cfg["data"]["root"]
    )


def net_outputs(nets, what="metrics.json"):
    return [n.file(what) for n in nets]


def final_targets():
    exp = config["experiment"]
    out = cross_targets()  # workflow/rules/cross.smk
    if not plan.figure_nets(
        config, "all"
    ):  # a cross experiment alone: none of the paper's outputs
        return out
    out += [
        paths.table("runs.csv"),
        paths.table("paper_comparison.csv"),
        paths.table("effects.csv"),
        paths.figure("claims.pdf"),
    ]
    if exp.get("random_splits"):
        out += [paths.figure("fig2.pdf"), paths.table("table1.csv")]
    if exp.get("natman") or exp.get("random_filters"):
        out.append(paths.figure("fig3.pdf"))
    out += [paths.figure(f"curves_{s}.pdf") for s in plan.used_splits(config)]
    if plan.similarity_nets(config):
        out += [paths.figure("similarity.pdf"), paths.table("similarity_by_layer.csv")]
    out += [
        paths.table(f"{t}.html")
        for t in REPORT_TABLES
        if paths.table(f"{t}.csv") in out
    ]
    return out


# the tables shown in the report, as HTML (rule table_html)
REPORT_TABLES = ("effects", "table1", "runs", "paper_comparison", "similarity_by_layer")


def check_report_has_a_run():
    """`snakemake --report` before the run is finished: say which outputs are missing and the command that
    makes them (with this run's configuration), instead of Snakemake's warning per file and a traceback.
    """
    if not workflow.is_main_process or not any(
        a == "--report" or a.startswith("--report=") for a in sys.argv
    ):
        return
    missing = [f for f in final_targets() if not os.path.exists(f)]
    if missing:
        raise WorkflowError(
            f"--report: this run is not finished ({len(missing)} of its outputs missing, e.g. {missing[0]}); "
            f"run it first: {RERUN}"
        )


def paper_flag():
    """Whether Figures 2 and 3 draw the paper's ImageNet means: ``figures.paper_lines``; ``auto`` draws
    them only for CaffeNet on a 1000-class dataset read from a data root (ImageNet), never on the demo's
    classes or for another network.
    """
    mode = plan.setting(config, "figures", "paper_lines")
    # the paper's numbers are CaffeNet's on ImageNet: never beside another net's
    if mode == "auto":
        mode = (
            "always"
            if config["data"]["source"] == "path"
            and known_num_classes() == 1000
            and config["net"]["arch"] == "caffenet"
            else "never"
        )
    return "--paper" if mode == "always" else "--no-paper"


def train_params_of(split, dataset=""):
    """Everything that changes a net's result: a change reruns exactly the nets (and what depends on them)."""
    return json.dumps(
        {
            "net": config["net"],
            "train": provenance.result_train(config["train"]),
            "metric": config.get("metric", {}),
            "split_kind": plan.split_kind(
                crossplan.dataset_config(config, dataset), split
            ),
        },
        sort_keys=True,
    )


def train_checkpoint():
    """train.checkpoint_every:checkpoint_minutes for the jobs' --checkpoint: a resource, not a param,
    because when a run is saved changes no result (provenance.RESULT_NEUTRAL_TRAIN)."""
    t = config["train"]
    return f"{int(t.get('checkpoint_every', 10000))}:{float(t.get('checkpoint_minutes', 0))}"


def train_site_settings(name):
    """The resources a profile or --set-resources gives `train` also go to the shared-stream job ``name``,
    which a profile cannot name (the names depend on the configuration); in profiles/slurm, --cpus-per-gpu,
    the SIGTERM before the time limit, the GPU partition, account and model. The time is not inherited (a
    group's is its nets' times added up), and settings given for ``name`` itself win. A site's GPU model is
    dropped where the jobs ask for no GPU (resources.train_gpus: 0): the SLURM executor would send
    --gpus=<model>:0."""
    given = workflow.resource_settings.overwrite_resources
    job_rule = workflow.get_rule(name)
    if name != "train" and "train" in given:
        own = set(given.get(name, {}))  # already applied by Snakemake: kept, key by key
        inherited = Resources.from_mapping(given["train"])
        job_rule.resources.update(
            Resources(
                {k: v for k, v in inherited.items() if k != "runtime" and k not in own}
            )
        )
    if res("train_gpus") == 0 and job_rule.resources.get("gpu_model"):
        job_rule.resources.update(Resources.from_mapping({"gpu_model": None}))


def wanted_net(wildcards):
    """The planned net of a training job's wildcards (dataset and cross source where the rule has them)."""
    return plan.Net(
        wildcards.split,
        wildcards.net,
        getattr(wildcards, "dataset", ""),
        getattr(wildcards, "source", ""),
    )


def wanted_checkpoint(wildcards):
    net = wanted_net(wildcards)
    return paths.checkpoint(net.split, net.name, net.dataset, net.via)


def inherit_site_settings(name, base):
    """The settings a profile or --set-resources gives rule ``base`` also go to ``name``, its instance for a
    further data root (``<base>_dataset``), which a profile does not name; settings given for ``name``
    itself win, key by key."""
    given = workflow.resource_settings.overwrite_resources
    if name == base or base not in given:
        return
    own = set(given.get(name, {}))
    inherited = Resources.from_mapping(given[base])
    workflow.get_rule(name).resources.update(
        Resources({k: v for k, v in inherited.items() if k not in own})
    )


def manifest_of(wildcards):
    """A replicate (``{split}.s{r}``) trains on its split's classes."""
    return paths.split_manifest(
        paths.base_split(wildcards.split), getattr(wildcards, "dataset", "")
    )


def train_params(wildcards):
    return train_params_of(wildcards.split, getattr(wildcards, "dataset", ""))


def source_model(wildcards):
    net = wanted_net(wildcards)
    if net.via:
        return [crossplan.source_model(config, net)]
    src = plan.source_of(net)
    return [paths.net_file(src.split, src.name, "model.pt", net.dataset)] if src else []


def ingest_inputs(wildcards):
    """The raw files ingest reads, so that a replaced archive reruns everything after it; for an extracted
    tree or an image folder, the file named by the digest of its files' content (raw_identity_file).
    """
    dataset = getattr(wildcards, "dataset", "")
    cfg = view(wildcards)
    if cfg["data"]["source"] == "demo":
        return paths.demo_files(dataset)
    root = cfg["data"]["root"]
    official = [os.path.join(root, f) for f in paths.DEMO_FILES]
    identity = raw_identity_file(dataset)
    return [f for f in official if os.path.isfile(f)] + ([identity] if identity else [])


@functools.cache
def raw_identity_file(dataset=""):
    """results/ingest/raw/<digest>.sha256 for a tree/folder data root (None otherwise), the digest computed
    while planning, by the main Snakemake process only, writing nothing a job reads (data/rawfiles.py); a
    job's own parse reuses the one identity file there (rule raw_identity keeps one)."""
    cfg = crossplan.dataset_config(config, dataset)
    if cfg["data"]["source"] != "path":
        return None
    from transferable.data import rawfiles

    if not workflow.is_main_process:
        found = sorted(
            glob.glob(paths.raw_identity("*", dataset)), key=os.path.getmtime
        )
        return found[-1] if found else None
    got = rawfiles.digest(
        cfg["data"]["root"],
        paths.raw_cache(dataset),
        plan.setting(cfg, "data", "format"),
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    return paths.raw_identity(got[0], dataset) if got else None


# ---- training trees and groups (workflow/rules/train.smk) ----


def train_rule_name(tree, via):
    return rule_name("train", tree) + ("_cross" if via else "")


def stream_groups():
    main = plan.stream_groups(config, crossplan.own_tree_nets(config, ""))
    groups = [("", "", split, target, nets) for split, target, nets in main]
    return groups + crossplan.stream_groups(config)


# ---- shards (workflow/rules/shards.smk) ----


def shard_parts(dataset=""):
    """preprocess.parts, clamped to the data root's classes (said once, by the main process)."""
    parts = plan.shard_parts(config, known_num_classes(dataset))
    if parts < plan.setting(config, "preprocess", "parts") and workflow.is_main_process:
        where = f"dataset {dataset}" if dataset else "data"
        print(
            f"config: preprocess.parts {config['preprocess']['parts']} is more than the {parts} classes of the "
            f"{where}: using {parts} shard jobs",
            file=sys.stderr,
        )
    return parts


def parts_of(wildcards):
    return PARTS[getattr(wildcards, "dataset", "")]


# ---- the cross experiment (workflow/rules/cross.smk) ----

CROSS_TARGETS = {t.name: t for t in crossplan.targets(config)}
CROSS_SIM = bool(crossplan.block(config) and crossplan.block(config)["similarity"])


def cross_targets():
    """What the cross experiment ends with (final_targets)."""
    if not CROSS_TARGETS:
        return []
    out = [
        paths.cross_table(f)
        for f in ("runs.csv", "effects.csv", "summary.csv", "effects.md")
    ]
    out += [
        paths.cross_figure(f"{crossplan.pair_stem(s, t)}.pdf")
        for s, t in crossplan.pairs(config)
    ]
    if len(crossplan.pairs(config)) > 1:
        out.append(paths.cross_figure("grid.pdf"))
    return out
