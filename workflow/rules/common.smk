# Config validation, the experiment plan and input functions. Pure path and plan logic lives in
# src/transferable/{paths,plan}.py, where unit tests call it.
import functools
import json
import sys

from snakemake.settings.types import DeploymentMethod

from transferable import paths, plan, provenance


def check_config():
    """Everything that can be wrong with the config, found before any job starts (plan.check_config)."""
    try:
        plan.check_config(config, os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml"))
    except plan.ConfigError as e:
        raise WorkflowError(f"config: {e}")


@functools.cache
def known_num_classes():
    return plan.known_num_classes(config)


check_config()

# Every rule runs the `transferable` command. Under --use-conda the envs/*.yaml environments carry the
# third-party packages only (Snakemake copies env files, so they cannot pip-install this checkout), so
# `transferable` becomes a shell function that runs the package from the workflow's own src/.
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    shell.prefix(
        f"set -euo pipefail; export PYTHONPATH={workflow.basedir}/src${{PYTHONPATH:+:$PYTHONPATH}}; "
        'transferable() { python -m transferable "$@"; }; '
    )

# The package modules each stage runs (transferable.provenance.STAGE_CODE), as inputs: editing one reruns
# that stage and what follows, nothing else. Snakemake compares contents, so a mere touch reruns nothing.
# TRANSFERABLE_CODE_DIR points elsewhere (the tests use it to edit a copy).
_PKG = os.environ.get("TRANSFERABLE_CODE_DIR") or None


def code(stage):
    return provenance.stage_files(stage, _PKG)


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
    """The raw files ingest reads, so that a replaced archive reruns everything after it; for an extracted
    tree or an image folder, the digest of its files' content (RAW_FINGERPRINT)."""
    if config["data"]["source"] == "demo":
        return paths.demo_files()
    root = config["data"]["root"]
    official = [os.path.join(root, f) for f in paths.DEMO_FILES]
    return [f for f in official if os.path.isfile(f)] + ([paths.raw_fingerprint()] if RAW_FINGERPRINT else [])


def _fingerprint_data_root():
    """Computed while the workflow is planned (by the main Snakemake process only; a job's own parse
    never does it) and rewritten only when a file ingest reads was added, removed or changed."""
    if config["data"]["source"] != "path":
        return False
    from transferable.data import rawfiles

    if not workflow.is_main_process:
        return os.path.isfile(paths.raw_fingerprint())
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    changed = rawfiles.fingerprint(config["data"]["root"], paths.raw_fingerprint(),
                                   config["data"].get("format", "auto"), log=log)
    if changed:
        log(f"{config['data']['root']}: its files changed since the last ingest (or were never fingerprinted): "
            f"{paths.raw_fingerprint()} rewritten")
    return changed is not None


RAW_FINGERPRINT = _fingerprint_data_root()
