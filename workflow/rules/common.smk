# Config validation, the experiment plan and input functions. Pure path and plan logic lives in
# src/transferable/{paths,plan}.py, where unit tests call it.
import json

from snakemake.utils import validate

from transferable import paths, plan


validate(config, "../schemas/config.schema.yaml")
if config.get("data_root"):  # `--config data_root=/path/to/imagenet`
    config["data"].update(source="path", root=str(config["data_root"]))
try:
    plan.check(config)
except plan.ConfigError as e:
    raise WorkflowError(f"config: {e}")
if config["data"]["source"] == "path":
    _root = config["data"].get("root")
    if not _root:
        raise WorkflowError("config: data.root is required when data.source is 'path' (e.g. --config data_root=...)")
    if not os.path.isdir(_root):
        raise WorkflowError(f"config: data.root {_root!r} does not exist or is not a directory")

PREP = paths.prep_name(config["preprocess"]["size"])
RES = config.get("resources", {})

wildcard_constraints:
    split=r"[A-Za-z0-9_-]+",
    net=r"base[A-Z]|[A-Z][1-7][A-Z](_ft)?",
    prep=r"warp\d+",
    k=r"\d+",


def data_root():
    return paths.demo_dir() if config["data"]["source"] == "demo" else config["data"]["root"]


def net_outputs(nets, what="metrics.json"):
    return [paths.net_file(n.split, n.name, what) for n in nets]


def final_targets():
    exp = config["experiment"]
    out = [paths.table("runs.csv")]
    if exp.get("random_splits"):
        out += [paths.figure("fig2.pdf"), paths.table("table1.csv"), paths.table("paper_comparison.csv")]
    if exp.get("natman") or exp.get("random_filters"):
        out.append(paths.figure("fig3.pdf"))
    return out


def train_params(wildcards):
    """Everything that changes a net's result: a change reruns exactly the nets (and what depends on them)."""
    return json.dumps(
        {
            "net": config["net"],
            "train": config["train"],
            "metric": config.get("metric", {}),
            "split_kind": plan.split_kind(config, wildcards.split),
        },
        sort_keys=True,
    )


def source_model(wildcards):
    src = plan.source_of(plan.Net(wildcards.split, wildcards.net))
    return [paths.net_file(src.split, src.name, "model.pt")] if src else []
