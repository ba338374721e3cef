"""Bad configuration fails before any job starts, naming the key and what is allowed.

The checks run in-process (plan.check_config, what the Snakefile calls while it parses); one dry run shows
that Snakemake stops on them before any job."""

import copy

import pytest
import yaml
from conftest import ROOT, run_snakemake

from transferable import paths, plan

MICRO = yaml.safe_load((ROOT / "configs/micro.yaml").read_text())
SCHEMA = str(ROOT / "workflow/schemas/config.schema.yaml")


def _check(cfg):
    """None when the config passes, else the message."""
    try:
        plan.check_config(copy.deepcopy(cfg), SCHEMA)
    except plan.ConfigError as e:
        return str(e)
    return None


def _edit(fn):
    cfg = copy.deepcopy(MICRO)
    fn(cfg)
    return cfg


def _natman_ranges(a, b):
    return lambda c: c["splits"].update(nm={"kind": "ranges", "halves": {"A": {"ranges": a}, "B": {"ranges": b}}})


def _resnet(c):
    """The micro config on resnet-small (a valid unit-network config, before each case's one change)."""
    c["net"] = {"arch": "resnet-small", "crop": 16, "outputs": "all"}
    c["train"]["optimizer"] = "sgd"


CASES = [
    ("unknown top-level key", lambda c: c.update(trian={"lr": 1}), "trian"),
    ("unknown nested key", lambda c: c["train"].update(learning_rate=0.1), "learning_rate"),
    ("wrong type", lambda c: c["train"].update(batch_size="big"), "train.batch_size"),
    ("n outside 1..7", lambda c: c["experiment"]["random_splits"].update(layers=[1, 8]), "8"),
    ("unknown treatment", lambda c: c["experiment"]["random_splits"].update(treatments=["CnD"]), "CnD"),
    ("missing split", lambda c: c["experiment"]["random_splits"].update(splits=["rand9"]), "rand9"),
    ("random filters on a half split", lambda c: c["experiment"]["random_filters"].update(split="rand0"), "random_filters"),
    ("natman target that is no half", lambda c: c["experiment"]["natman"].update(targets=["C"]), "experiment.natman.targets"),
    ("path source without root", lambda c: c["data"].update(source="path"), "data.root"),
    ("missing data root", lambda c: c["data"].update(source="path", root="/nonexistent/imagenet"), "/nonexistent/imagenet"),
    ("class range beyond the dataset", _natman_ranges("0-1", "2-9"), "splits.nm.halves.B.ranges"),
    ("unknown architecture", lambda c: c["net"].update(arch="resnet"), "arch"),
    # issue 16: each of these crashed mid-pipeline or gave a meaningless score
    ("empty half", _natman_ranges("", "2-3"), "splits.nm.halves.A.ranges: the half has no classes"),
    ("half of one class", _natman_ranges("0", "2-3"), "splits.nm.halves.A.ranges: the half has one class"),
    ("crop larger than the warped size", lambda c: c["net"].update(crop=40), "net.crop"),
    ("split name outside the pattern", lambda c: c["splits"].update({"my split!": {"kind": "all"}}), "names may use"),
    # issue 27: names are data, never grammar or options
    ("a split name that is an option", lambda c: c["splits"].update({"-rf": {"kind": "all"}}), "do not begin with -"),
    ("a half named R (random filters)", lambda c: c["splits"].update(nm={"kind": "ranges", "halves": {
        "R": {"ranges": "0-1"}, "A": {"ranges": "2-3"}}}), "splits.nm.halves: 'R' does not match"),
    ("lower-case halves", lambda c: c["splits"].update(nm={"kind": "ranges", "halves": {
        "a": {"ranges": "0-1"}, "b": {"ranges": "2-3"}}}), "a half is named by one capital letter other than R"),
    ("more best evaluations than evaluations", lambda c: c["metric"].update(best_k=3), "metric.best_k"),
    ("batch larger than a half", lambda c: c["train"].update(batch_size=17), "train.batch_size: 17"),
    ("warm-up longer than the run", lambda c: c["train"].update(warmup_iter=4), "train.warmup_iter"),
    ("fewer outputs than classes", lambda c: c["net"].update(outputs=2), "net.outputs"),
    # issue 14: the preprocessing choices
    ("JPEG quality below 1", lambda c: c["preprocess"].update(format="jpeg", jpeg_quality=0), "preprocess.jpeg_quality"),
    ("JPEG quality above 100", lambda c: c["preprocess"].update(jpeg_quality=101), "preprocess.jpeg_quality"),
    ("unknown resize filter", lambda c: c["preprocess"].update(resize="lanczos5"), "preprocess.resize"),
    ("unknown shard format", lambda c: c["preprocess"].update(format="png"), "preprocess.format"),
    ("unknown demo size model", lambda c: c.setdefault("demo", {}).update(sizes="huge"), "demo.sizes"),
    # issue 12: architectures as ordered units
    ("n beyond the architecture's units", lambda c: (_resnet(c), c["experiment"]["random_splits"].update(layers=[6])),
     "outside the allowed 1..5 (resnet-small has 5 transferable units)"),
    ("Caffe's solver on a ResNet", lambda c: (_resnet(c), c["train"].update(optimizer="caffe_sgd")), "train.optimizer"),
    ("CaffeNet widths on a ResNet", lambda c: (_resnet(c), c["net"].update(widths=[4] * 7)), "net.widths"),
    ("stages of a ViT", lambda c: (_resnet(c), c["net"].update(arch="vit-small", units="stages")), "net.units"),
    ("ViT crop not a multiple of its patch", lambda c: (_resnet(c), c["net"].update(arch="vit-small", crop=14)),
     "net.crop: 14"),
]


@pytest.mark.parametrize("what, edit, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_config_is_refused_naming_the_key(what, edit, needle):
    msg = _check(_edit(edit))
    assert msg is not None, what
    assert needle in msg, f"{what}: message does not name {needle!r}: {msg}"


def test_micro_config_is_valid():
    assert _check(MICRO) is None


def test_a_report_before_the_run_says_what_to_run(workdir):
    """Issue 27, case 7: --report before any run ended in a traceback after one warning per file."""
    proc = run_snakemake(["--report", "r.html", "--configfile", "configs/micro.yaml"], workdir, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "--report: this run is not finished" in out, out[-2000:]
    assert "run it first: snakemake --cores all --configfile" in out and "micro.yaml" in out
    assert "Missing metadata" not in out and not (workdir / "results").exists()


def test_more_shard_parts_than_classes_is_clamped():
    cfg = _edit(lambda c: c["preprocess"].update(parts=50))
    assert _check(cfg) is None
    assert plan.shard_parts(cfg, plan.known_num_classes(cfg)) == 4


def test_bad_config_stops_snakemake_before_any_job(workdir):
    path = workdir / "bad.yaml"
    path.write_text(yaml.safe_dump(_edit(lambda c: c["net"].update(crop=40))))
    proc = run_snakemake(["-n", "--cores", "1", "--configfile", str(path)], workdir, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "config: net.crop: 40" in out, out[-2000:]
    assert "Traceback" not in out and not (workdir / "results").exists()
    path.write_text(yaml.safe_dump(_edit(lambda c: c["preprocess"].update(parts=50))))
    proc = run_snakemake(["-n", "--cores", "1", "--configfile", str(path)], workdir)
    assert "more than the 4 classes of the data: using 4 shard jobs" in proc.stderr + proc.stdout


def test_class_range_beyond_a_data_roots_classes(tmp_path):
    from PIL import Image

    root = tmp_path / "mydata"
    for subset in ("train", "val"):
        for cls in ("cat", "dog", "eel", "fox"):
            (root / subset / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / subset / cls / "0.png")
    cfg = _edit(_natman_ranges("0-1", "2-4"))
    cfg["data"] = {"source": "path", "root": str(root)}
    msg = _check(cfg)
    assert msg and "splits.nm.halves.B.ranges" in msg and "4 classes" in msg
    cfg["splits"]["nm"]["halves"]["B"]["ranges"] = "2-3"
    cfg["train"]["batch_size"] = 2  # one image per class: a half of 2 classes has 2
    assert _check(cfg) is None


def _schema_keys(node, path=""):
    """(dotted key, its schema) of every key the config may hold; <name> stands for a user's name."""
    for k, v in (node.get("properties") or {}).items():
        p = f"{path}.{k}" if path else k
        yield p, v
        yield from _schema_keys(v, p)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        yield from _schema_keys(extra, f"{path}.<name>")


def test_every_schema_key_is_described():
    schema = yaml.safe_load(open(SCHEMA))
    keys = list(_schema_keys(schema))
    assert len(keys) > 70
    assert [k for k, v in keys if not v.get("description")] == []


def test_every_cli_option_has_help_and_there_is_a_version():
    import argparse
    import subprocess
    import sys

    from transferable.cli import build_parser

    missing = []

    def walk(parser, where):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                if not a.help:
                    missing.append(f"{where} <{a.dest}>")
                for name, sub in a.choices.items():
                    walk(sub, f"{where} {name}")
            elif not isinstance(a, argparse._HelpAction) and not a.help:
                missing.append(f"{where} {'/'.join(a.option_strings) or a.dest}")

    walk(build_parser(), "transferable")
    assert missing == []
    out = subprocess.run([sys.executable, "-m", "transferable", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("transferable 0.1.0 (") and "transferable" in out.stdout


def test_nested_config_overrides_are_typed():
    """`--config 'train={lr: 0.02, max_iter: 6}'` reaches the config as strings (Snakemake reads nested
    values with YAML's BaseLoader); they are typed as YAML would type them, then validated."""
    cfg = copy.deepcopy(MICRO)
    over = {"train": {"lr": "0.02", "max_iter": "6", "deterministic": "true"},
            "experiment": {"random_splits": {"layers": ["1", "2"]}},
            "splits": {"nm": {"kind": "ranges", "halves": {"A": {"family": "'quoted'", "ranges": "0-1"},
                                                          "B": {"family": "on", "ranges": "2-3"}}}}}
    cfg["train"].update(over["train"])
    cfg["experiment"]["random_splits"]["layers"] = ["1", "2"]
    cfg["splits"]["nm"] = copy.deepcopy(over["splits"]["nm"])
    plan.check_config(cfg, SCHEMA, overrides=over)
    assert cfg["train"]["lr"] == 0.02 and cfg["train"]["max_iter"] == 6 and cfg["train"]["deterministic"] is True
    assert cfg["experiment"]["random_splits"]["layers"] == [1, 2]
    # strings stay strings: quotes kept, YAML 1.1 booleans (on, no, ...) not turned into booleans
    assert [cfg["splits"]["nm"]["halves"][h]["family"] for h in "AB"] == ["'quoted'", "on"]
    bad = copy.deepcopy(MICRO)
    bad["train"]["lr"] = "fast"
    with pytest.raises(plan.ConfigError, match="train.lr: 'fast' is not of type 'number'"):
        plan.check_config(bad, SCHEMA, overrides={"train": {"lr": "fast"}})


@pytest.mark.parametrize("arch", ["resnet-small", "vit-small", "resnet18", "resnet50", "vit_b_16"])
def test_unit_network_configs_pass(arch):
    def edit(c):
        _resnet(c)
        c["net"].update(arch=arch, crop=16)
        c["train"]["optimizer"] = "adamw" if arch.startswith("vit") else "sgd"
        c["experiment"]["random_splits"]["layers"] = [1, len(paths.unit_names(c["net"]))]
    assert _check(_edit(edit)) is None


def test_null_and_yaml_1_1_values_behave_as_documented():
    """Issue 27, case 5: `experiment.similarity: null` (the schema: "null or absent: off") is off, from a
    file and from --config; `lr: 1e-2` (a string to YAML 1.1) is a number; NaN and infinity are refused
    (NaN passes every JSON Schema bound)."""
    cfg = copy.deepcopy(MICRO)
    cfg["experiment"]["similarity"] = None  # as a config file gives it
    plan.check_config(cfg, SCHEMA)
    assert "similarity" not in cfg["experiment"]
    cfg = copy.deepcopy(MICRO)
    over = {"experiment": {"similarity": "null"}, "train": {"lr": "1e-2", "max_iter": "2E1"}}
    cfg["experiment"]["similarity"], cfg["train"]["lr"], cfg["train"]["max_iter"] = "null", "1e-2", "2E1"
    plan.check_config(cfg, SCHEMA, overrides=over)  # as --config gives it
    assert "similarity" not in cfg["experiment"] and cfg["train"]["lr"] == 0.01 and cfg["train"]["max_iter"] == 20
    file_cfg = _edit(lambda c: c["train"].update(lr="1e-2"))  # PyYAML reads `lr: 1e-2` in a file as a string
    assert _check(file_cfg) is None
    for bad in (float("nan"), float("inf")):
        msg = _check(_edit(lambda c: c["train"].update(lr=bad)))
        assert msg is not None and "train.lr" in msg and "finite" in msg, msg
    # only where the schema expects a number: a family name that looks like one stays a name
    cfg = _edit(lambda c: c["splits"].update(nm={"kind": "ranges", "halves": {
        "A": {"family": "1e5", "ranges": "0-1"}, "B": {"family": "2E3", "ranges": "2-3"}}}))
    over = {"splits": {"nm": copy.deepcopy(cfg["splits"]["nm"])}}
    plan.check_config(cfg, SCHEMA, overrides=over)
    assert [cfg["splits"]["nm"]["halves"][h]["family"] for h in "AB"] == ["1e5", "2E3"]


def test_names_read_back_as_text(tmp_path):
    """Issue 27, case 4: names that look like numbers, booleans or exponents stay what they were when a table
    of the pipeline is read back (a split 007, a family 1e5, a class folder true)."""
    import pandas as pd

    from transferable import atomic

    f = tmp_path / "t.csv"
    pd.DataFrame({"split": ["007", "1e5"], "net": ["baseA", "A1B"], "target_family": ["1e5", "nan"],
                  "wnid": ["true", "0012"], "top1": [0.5, 0.25]}).to_csv(f, index=False)
    df = atomic.read_csv(f, keep_default_na=False)
    assert df["split"].tolist() == ["007", "1e5"] and df["wnid"].tolist() == ["true", "0012"]
    assert df["target_family"].tolist() == ["1e5", "nan"] and df["top1"].tolist() == [0.5, 0.25]


def test_every_table_of_the_pipeline_is_read_through_the_text_aware_reader():
    """A new reader that calls pandas directly would turn names into numbers again."""
    import re

    direct = []
    for f in sorted((ROOT / "src/transferable").rglob("*.py")):
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"\bpd\.read_csv\(", line):
                direct.append(f"{f.relative_to(ROOT)}:{i}")
    allowed = {"src/transferable/atomic.py", "src/transferable/figures/paper.py", "src/transferable/tools/smoke.py",
               "src/transferable/figures/tables.py", "src/transferable/tools/bench.py"}  # ids typed there, or none read
    assert [d for d in direct if d.split(":")[0] not in allowed] == [], direct


def test_a_batch_larger_than_a_folder_roots_half_is_refused_before_ingest(tmp_path):
    """Issue 27, case 7: on an image folder the halves' training images are counted from the folders while
    the plan is checked, so the batch is refused before ingest and shards run (it was caught by the first
    training job)."""
    from PIL import Image

    root = tmp_path / "data"
    for subset in ("train", "val"):
        for i, cls in enumerate(("ant", "bee", "cat", "dog")):
            (root / subset / cls).mkdir(parents=True)
            for j in range(3 if subset == "train" else 1):
                Image.new("RGB", (8, 8), (i, j, 0)).save(root / subset / cls / f"{j}.png")
    (root / "train/ant/notes.txt").write_text("not an image")
    cfg = _edit(lambda c: c["data"].update(source="path", root=str(root)))
    cfg["splits"] = {"rand0": {"kind": "random", "seed": 0}}
    cfg["experiment"] = {"random_splits": {"splits": ["rand0"], "targets": ["B"], "layers": [1],
                                           "treatments": ["BnB", "AnB"]}}
    cfg["train"]["batch_size"] = 7  # a half: 2 classes x 3 images
    assert "train.batch_size: 7 is larger than the smallest half's 6 training images" in _check(cfg)
    cfg["train"]["batch_size"] = 6
    assert _check(cfg) is None


def test_the_treatments_are_written_once():
    """Issue 23: the treatments are one table (paths.TREATMENT_TABLE); the schema lists none (the config check
    reads the table), the plan, tables and figures derive their lists from it."""
    schema = yaml.safe_load(open(SCHEMA))
    item = schema["properties"]["experiment"]["properties"]["random_splits"]["properties"]["treatments"]["items"]
    from transferable.figures import plots, tables

    assert "enum" not in item
    assert paths.TRANSFER_TREATMENTS == plan.TREATMENTS == ("BnB", "BnB+", "AnB", "AnB+", "base+")
    assert tables.FIG2_TREATMENTS == ("BnB", "BnB+", "AnB", "AnB+")  # the paper's legend; base+ is a control
    assert tables.TREATMENTS == tuple(t.key for t in paths.TREATMENT_TABLE)
    # the reference copies nothing, the control everything: one row each
    from transferable.figures.spec import CONTROL, REFERENCE

    assert [t.key for t in paths.TREATMENT_TABLE if not t.copies] == [REFERENCE] == ["base"]
    assert [t.key for t in paths.TREATMENT_TABLE if t.copies == "all"] == [CONTROL] == ["base+"]
    assert set(plots.MARKERS) == {"base", *paths.TRANSFER_TREATMENTS}
    assert {k: (m["color"], m["marker"]) for k, m in plots.MARKERS.items()} == {
        k: (paths.TREATMENT[k].colour, paths.TREATMENT[k].marker) for k in plots.MARKERS}


def test_no_treatment_name_in_code_outside_the_table():
    """Issue 23's done-when as a test: outside the treatment table (paths.py) no module names a treatment as a
    string of its own. Figures and tables read which treatment goes where from figures/figures.yaml, the
    claims from paper_claims.yaml; the reference and the control are derived from the table (figures/spec.py:
    REFERENCE, CONTROL).
    Docstrings and the text of f-strings (captions, net names such as f"base{half}") are prose, not names;
    the Snakefile and the rules are searched for quoted names.
    "random" is also a split kind and a Treatment.source value, so it is not a name to look for."""
    import ast
    import re

    from transferable.figures.tables import SPLIT_KINDS

    names = set(paths.TREATMENTS) - set(SPLIT_KINDS)
    assert names == {"base", "BnB", "BnB+", "AnB", "AnB+", "base+"}
    found = []
    for py in sorted((ROOT / "src" / "transferable").rglob("*.py")):
        if py.name == "paths.py":
            continue
        tree = ast.parse(py.read_text())
        prose = {id(n.body[0].value) for n in ast.walk(tree)
                 if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                 and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        prose |= {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        found += [f"{py.relative_to(ROOT)}:{n.lineno} {n.value!r}" for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and n.value in names and id(n) not in prose]
    quoted = re.compile("[\"']({})[\"']".format("|".join(re.escape(n) for n in sorted(names))))
    for smk in [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]:
        found += [f"{smk.relative_to(ROOT)}:{i} {m[0]}" for i, line in enumerate(smk.read_text().splitlines(), 1)
                  for m in quoted.finditer(line)]
    assert not found, found


def test_a_treatment_outside_the_table_is_refused_naming_the_allowed_ones():
    msg = _check(_edit(lambda c: c["experiment"]["random_splits"].update(treatments=["BnB", "AnB++"])))
    assert "experiment.random_splits.treatments: ['AnB++'] unknown" in msg and "base+" in msg


def test_no_code_default_for_a_schema_key():
    """Issue 23: defaults live only in the schema. Outside settings.py no code reads a key of a config
    section with a default of its own (``tcfg.get("checkpoint_every", 10000)``; plan.py's
    ``demo.get("train_per_class", 100)`` disagreed with the schema's 200): it goes through settings.setting
    or the typed settings. A read is recognised by its receiver naming a config section."""
    import ast
    import re

    props = yaml.safe_load(open(SCHEMA))["properties"]
    with_default = {sec: {k for k, v in (p.get("properties") or {}).items() if "default" in v}
                    for sec, p in props.items()}
    receivers = {"tcfg": "train", "train": "train", "ncfg": "net", "net": "net", "demo": "demo", "prep": "preprocess",
                 "RES": "resources", **{f"cfg['{s}']": s for s in props}, **{f"config['{s}']": s for s in props}}  # as ast.unparse writes them

    def reads(text: str, name: str) -> list[str]:
        out = []
        for node in ast.walk(ast.parse(text)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                    and len(node.args) == 2 and isinstance(node.args[0], ast.Constant)):
                continue
            recv, key = ast.unparse(node.func.value), node.args[0].value
            sec = receivers.get(recv)
            if sec and key in with_default.get(sec, ()):
                out.append(f"{name}:{node.lineno} {recv}.get({key!r}, ...)")
        return out

    assert reads('tcfg.get("amp", True)\ncfg["demo"].get("train_per_class", 100)', "x") == [
        "x:1 tcfg.get('amp', ...)", "x:2 cfg['demo'].get('train_per_class', ...)"]
    found = []
    for f in sorted((ROOT / "src/transferable").rglob("*.py")):
        if f.name != "settings.py":
            found += reads(f.read_text(), f.name)
    for f in sorted((ROOT / "workflow/rules").glob("*.smk")):  # the same reads in the workflow, found as text
        for m in re.finditer(r'(RES|config\["(\w+)"\])\.get\("(\w+)", ', f.read_text()):
            sec = "resources" if m[1] == "RES" else m[2]
            if m[3] in with_default.get(sec, ()):
                found.append(f"{f.name}: {m[0]}")
    assert not found, found
    # the check finds what it is meant to find
    assert re.search(r'(RES|config\["(\w+)"\])\.get\("(\w+)", ', 'RES.get("train_gpus", 1)')


def test_setting_reads_the_config_or_the_schemas_default():
    from transferable.settings import RunSettings, Train, setting

    assert setting({"train": {"amp": False}}, "train", "amp") is False
    assert setting({}, "train", "checkpoint_every") == 10000 and setting({}, "demo", "train_per_class") == 200
    with pytest.raises(KeyError, match="train.lr: not in the config"):
        setting({}, "train", "lr")
    t = Train.from_dict(MICRO["train"])
    assert t.checkpoint_every == 2 and t.amp is True and t.eval_batch_size == 256  # the schema's defaults filled
    with pytest.raises(ValueError, match=r"train: unknown key\(s\) \['lrr'\]"):
        Train.from_dict(dict(MICRO["train"], lrr=1))
    with pytest.raises(ValueError, match=r"train: missing key\(s\) \['lr'\]"):
        Train.from_dict({k: v for k, v in MICRO["train"].items() if k != "lr"})
    run = RunSettings.from_dict({"net": MICRO["net"], "train": MICRO["train"], "metric": MICRO["metric"]})
    assert RunSettings.from_dict(run.as_dict()) == run  # what model.pt keeps builds the same settings
