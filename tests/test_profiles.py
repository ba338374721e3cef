"""The Snakemake profiles (profiles/slurm, profiles/local): they render and parse, use only real options, name
every rule of the workflow, plan the micro configuration, turn the site settings into sbatch resources, and
the local profile's GPU cap behaves as documented. Fast (seconds): no cluster, no training."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
import yte

from conftest import ROOT, VENV_BIN

SLURM = ROOT / "profiles" / "slurm" / "config.yaml"
LOCAL = ROOT / "profiles" / "local" / "config.yaml"
SITE_VARS = ("ACCOUNT", "PARTITION", "GPU_PARTITION", "GPU_MODEL", "GPU_CONSTRAINT", "QOS", "STATUS_COMMAND")
CPU_RULES = {"demo_data", "raw_identity", "ingest", "shard_part", "shard_index", "split_manifest",
             "runs_table", "fig2", "fig3", "table1", "paper_comparison", "effects", "claims_figure",
             "training_curves", "table_html", "similarity", "similarity_figure",
             "import_source", "cross_similarity", "cross_report"}
CROSS_RULES = {"import_source", "cross_similarity", "cross_report"}
# Requests the configuration sets (resources.*): the profile leaves them to it.
FROM_CONFIG = {"train": {"gpu", "mem_mb", "runtime"}, "shard_part": {"mem_mb"}, "similarity": {"mem_mb", "runtime"},
               "cross_similarity": {"mem_mb", "runtime"}}


@pytest.fixture
def clean_env(monkeypatch):
    """No site settings or GPU hints from the caller's environment."""
    for name in list(os.environ):
        if name.startswith("TRANSFERABLE_SLURM_") or name in ("TRANSFERABLE_GPUS", "CUDA_VISIBLE_DEVICES"):
            monkeypatch.delenv(name)
    return monkeypatch


def render(path: Path) -> dict:
    """The profile as Snakemake reads it: a YTE template rendered with the current os.environ."""
    with open(path) as f:
        return yte.process_yaml(f, require_use_yte=True)


def snakemake_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRANSFERABLE_SLURM_") and k not in ("TRANSFERABLE_GPUS", "CUDA_VISIBLE_DEVICES")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def snakemake(args, cwd, env, timeout=300):
    proc = subprocess.run([str(VENV_BIN / "snakemake"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def dry_run_jobs(output: str) -> list[tuple[str, dict]]:
    """(rule, resources) of every job a `snakemake -n` printed."""
    jobs, rule = [], None
    for line in output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if m:
            rule = m.group(1)
        elif rule and line.strip().startswith("resources:"):
            res = dict(kv.split("=", 1) for kv in line.strip()[len("resources:"):].strip().split(", ") if "=" in kv)
            jobs.append((rule, res))
            rule = None
    return jobs


def option_names() -> set[str]:
    """Every long option of this Snakemake, executor plugins' included (what profile keys may be)."""
    from snakemake.cli import get_argument_parser

    parser = get_argument_parser()
    return {s[2:] for action in parser._actions for s in action.option_strings if s.startswith("--")}


# ---- both profiles ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [SLURM, LOCAL], ids=["slurm", "local"])
def test_profile_renders_to_known_options(path, clean_env):
    text = path.read_text()
    assert text.startswith("__use_yte__: true\n"), "Snakemake renders a profile as YTE only with this first key"
    yaml.safe_load(text)  # plain YAML too
    profile = render(path)
    unknown = set(profile) - option_names()
    assert not unknown, f"{path.name}: not Snakemake options: {sorted(unknown)}"


@pytest.mark.parametrize("path", [SLURM, LOCAL], ids=["slurm", "local"])
def test_every_key_is_commented(path):
    """Each top-level key, and each entry of set-resources, groups and group-components, has a comment line
    above it (or one for a block of such lines) or at its end."""
    lines = path.read_text().splitlines()
    section = None
    for i, line in enumerate(lines):
        m = re.match(r"^( {0,2})([?\w][^:]*):", line)
        if not m or line.lstrip().startswith("#") or m.group(2) in ("__use_yte__", "__definitions__"):
            continue
        indent = len(m.group(1))
        if indent == 0:
            section = m.group(2)
        elif section not in ("set-resources", "groups", "group-components"):
            continue
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        same_block = indent == 2 and re.match(r"^  \w+: \S", prev) and re.match(r"^  \w+: \S", line)
        assert "#" in line or prev.lstrip().startswith("#") or same_block, f"{path.name}:{i + 1}: no comment: {line}"


# ---- profiles/slurm -----------------------------------------------------------------------------------------


@pytest.mark.subprocess
def test_slurm_profile_names_every_rule(workdir):
    rc, out = snakemake(["--list-rules", "--configfile", "configs/micro.yaml"], workdir, snakemake_env())
    assert rc == 0, out
    rules = set(out.split()) - {"all"}
    profile = yaml.safe_load(SLURM.read_text())
    assert set(profile["set-resources"]) == rules, "every rule has its resources in profiles/slurm, and no others"
    assert rules == CPU_RULES | {"train"}, "a new rule: add it to CPU_RULES here and to the profile"
    groups = profile["groups"]
    assert set(groups) <= rules and "train" not in groups, "training jobs are never bundled"
    assert set(groups.values()) == set(profile["group-components"])
    for rule, keys in FROM_CONFIG.items():
        assert not keys & set(profile["set-resources"][rule]), f"{rule}: {keys} come from the configuration"


@pytest.mark.subprocess
def test_slurm_profile_requests(workdir, clean_env):
    """A dry run with the profile: what each job would ask SLURM for on its first attempt."""
    gpu = ["--config", "resources={train_gpus: 1}"]  # micro's nets train on the CPU; here they ask for a GPU
    rc, plain = snakemake(["-n", "--cores", "1", "--configfile", "configs/micro.yaml", *gpu], workdir,
                          snakemake_env())
    assert rc == 0, plain
    declared = {}
    for rule, res in dry_run_jobs(plain):
        declared[rule] = res
    rc, out = snakemake(["-n", "--profile", "profiles/slurm", "--configfile", "configs/micro.yaml", *gpu], workdir,
                        snakemake_env())
    assert rc == 0, out
    jobs = dry_run_jobs(out)
    # demo data: no folder root; no experiment.cross
    assert {r for r, _ in jobs} == CPU_RULES - {"raw_identity", *CROSS_RULES} | {"train", "all"}
    assert sum(r == "train" for r, _ in jobs) == 13
    for rule, res in jobs:
        if rule == "all":
            continue
        assert res["group_slot"] == "1"
        for key in FROM_CONFIG.get(rule, ()):  # e.g. configs/micro.yaml resources.train_mem_mb
            assert res[key] == declared[rule][key], (rule, key)
        if rule == "train":
            assert (res["gpu"], res["mem_mb"], res["runtime"]) == ("1", "1000", "10")
            assert res["cpus_per_gpu"] == "1" and res["slurm_extra"] == "--signal=TERM@120 --open-mode=append"
        else:
            # first attempt: at least what the rule itself declares
            assert int(res["mem_mb"]) >= int(declared[rule]["mem_mb"]), rule
            assert int(res["runtime"]) >= int(declared[rule]["runtime"]), rule
        assert not {"slurm_partition", "slurm_account", "qos", "gpu_model", "constraint"} & set(res), \
            "no site settings given: the profile must not invent any"


@pytest.mark.subprocess
def test_slurm_profile_plans_without_slurm_installed(workdir, tmp_path):
    """The CI runner has no SLURM: the plugin must still load and a dry run plan the micro configuration."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool in ("which", "bash", "sh", "env"):  # the plugin probes for sinfo/sacct/squeue with `which`
        if shutil.which(tool):
            (bin_ / tool).symlink_to(shutil.which(tool))
    env = snakemake_env(PATH=f"{VENV_BIN}{os.pathsep}{bin_}")
    assert not shutil.which("sinfo", path=env["PATH"])
    rc, out = snakemake(["-n", "--profile", "profiles/slurm", "--configfile", "configs/micro.yaml"], workdir, env)
    assert rc == 0, out
    assert re.search(r"^train\s+13$", out, re.M), out[-2000:]


def test_slurm_site_settings(clean_env):
    header = SLURM.read_text().split("__definitions__")[0]
    for name in SITE_VARS:
        assert f"TRANSFERABLE_SLURM_{name}" in header, f"site setting {name} is not documented at the top"
    profile = render(SLURM)
    assert "slurm-status-command" not in profile
    assert "slurm_partition" not in profile["default-resources"]
    for name, value in [("ACCOUNT", "proj123"), ("PARTITION", "cpu-short"), ("GPU_PARTITION", "gpu"),
                        ("GPU_MODEL", "a100"), ("GPU_CONSTRAINT", "a100|h100"), ("QOS", "normal"),
                        ("STATUS_COMMAND", "squeue")]:
        clean_env.setenv(f"TRANSFERABLE_SLURM_{name}", f" {value} ")
    profile = render(SLURM)
    assert profile["slurm-status-command"] == "squeue"
    res = profile["set-resources"]
    q = repr  # resource values are Python expressions: strings come quoted
    expected_cpu = {"slurm_partition": q("cpu-short"), "slurm_account": q("proj123"), "qos": q("normal")}
    assert {k: profile["default-resources"][k] for k in expected_cpu} == expected_cpu
    for rule in CPU_RULES:
        assert {k: res[rule].get(k) for k in expected_cpu} == expected_cpu, rule
        assert "gpu_model" not in res[rule] and "constraint" not in res[rule]
    assert res["train"]["slurm_partition"] == q("gpu")
    assert res["train"]["gpu_model"] == q("a100") and res["train"]["constraint"] == q("a100|h100")
    assert res["train"]["slurm_account"] == q("proj123") and res["train"]["qos"] == q("normal")
    clean_env.delenv("TRANSFERABLE_SLURM_GPU_PARTITION")
    assert render(SLURM)["set-resources"]["train"]["slurm_partition"] == q("cpu-short")


@pytest.mark.subprocess
def test_slurm_site_settings_reach_the_jobs(workdir, clean_env):
    env = snakemake_env(TRANSFERABLE_SLURM_ACCOUNT="proj123", TRANSFERABLE_SLURM_GPU_PARTITION="gpu-a100",
                        TRANSFERABLE_SLURM_GPU_MODEL="a100")
    gpu = ["--config", "resources={train_gpus: 1}"]  # micro's nets train on the CPU; here they ask for a GPU
    rc, out = snakemake(["-n", "--profile", "profiles/slurm", "--configfile", "configs/micro.yaml", *gpu], workdir,
                        env)
    assert rc == 0, out
    for rule, res in dry_run_jobs(out):
        if rule == "all":
            continue
        assert res["slurm_account"] == "proj123"
        assert res.get("slurm_partition") == ("gpu-a100" if rule == "train" else None), rule
        assert res.get("gpu_model") == ("a100" if rule == "train" else None), rule
    # jobs that ask for no GPU get no GPU model: the executor would send sbatch --gpus=a100:0
    rc, out = snakemake(["-n", "--profile", "profiles/slurm", "--configfile", "configs/micro.yaml"], workdir, env)
    assert rc == 0, out
    train = [res for rule, res in dry_run_jobs(out) if rule == "train"]
    assert len(train) == 13 and all(res["gpu"] == "0" and "gpu_model" not in res for res in train), train[0]


@pytest.mark.subprocess
def test_shared_stream_jobs_get_what_the_profile_gives_train(workdir, clean_env):
    """resources.shared_stream trains each half's nets in one job of a rule named train_together_<split>_<half>,
    which the profile cannot name: it must still get the GPU partition and model, --cpus-per-gpu and the
    SIGTERM before its time limit (without it a timed-out group loses everything since its last
    checkpoint), and keep its own time (its nets' times added up)."""
    env = snakemake_env(TRANSFERABLE_SLURM_GPU_PARTITION="gpu-a100", TRANSFERABLE_SLURM_GPU_MODEL="a100")
    cfg = ["--configfile", "configs/micro.yaml", "--config", "resources={train_gpus: 1, shared_stream: true}"]
    rc, out = snakemake(["-n", "--profile", "profiles/slurm", *cfg], workdir, env)
    assert rc == 0, out
    jobs = dry_run_jobs(out)
    together = [(r, res) for r, res in jobs if r.startswith("train_together_")]
    assert len(together) == 4 and sum(r == "train" for r, _ in jobs) == 5, sorted(r for r, _ in jobs)  # 5 base nets
    for rule, res in together + [(r, res) for r, res in jobs if r == "train"]:
        assert res["cpus_per_gpu"] == "1" and res["slurm_extra"] == "--signal=TERM@120 --open-mode=append", rule
        assert res["slurm_partition"] == "gpu-a100" and res["gpu_model"] == "a100" and res["gpu"] == "1", rule
    runtimes = sorted(int(res["runtime"]) for _, res in together)
    assert runtimes == [10, 10, 10, 50], runtimes  # micro: 10 min per net; rand0's half B group has 5 nets
    # a setting given for the group's own rule wins over the one inherited from train (--set-resources on the
    # command line replaces the profile's whole set-resources)
    rc, out = snakemake(["-n", "--profile", "profiles/slurm", *cfg, "--set-resources", "train:cpus_per_gpu=2",
                         "train:slurm_partition='gpu-x'", "train_together_rand0_B:cpus_per_gpu=3"], workdir, env)
    assert rc == 0, out
    got = {r: res for r, res in dry_run_jobs(out)}
    assert got["train_together_rand0_B"]["cpus_per_gpu"] == "3" and got["train_together_natman_A"]["cpus_per_gpu"] == "2"
    assert got["train_together_rand0_B"]["slurm_partition"] == "gpu-x"  # the rest still inherited, key by key


def test_cluster_scripts_are_valid_bash():
    for script in ("start.sh", "stop.sh"):
        path = ROOT / "tests" / "cluster" / script
        assert os.access(path, os.X_OK), f"{script} is not executable"
        subprocess.run(["bash", "-n", str(path)], check=True)
    conf = (ROOT / "tests" / "cluster" / "slurm.conf").read_text()
    assert conf.startswith("# transferable test cluster"), "stop.sh --purge recognises its own slurm.conf by it"
    assert int(re.search(r"^MinJobAge=(\d+)", conf, re.M).group(1)) >= 3 * 40, \
        "squeue status polling needs MinJobAge >= 3 x --slurm-init-seconds-before-status-checks (default 40)"


# ---- profiles/local -----------------------------------------------------------------------------------------


def test_local_profile_counts_gpus(clean_env):
    devices = len([p for p in Path("/dev").glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name)])
    assert render(LOCAL)["resources"]["gpu"] == devices
    for cvd, k in [("0,1", 2), ("3", 1), ("", 0), ("-1", 0), ("0,-1,1", 1), ("GPU-8f3c,GPU-1a2b", 2)]:
        clean_env.setenv("CUDA_VISIBLE_DEVICES", cvd)
        assert render(LOCAL)["resources"]["gpu"] == k, cvd
    clean_env.setenv("TRANSFERABLE_GPUS", "3")
    assert render(LOCAL)["resources"]["gpu"] == 3
    profile = render(LOCAL)
    assert profile["cores"] == "all" and set(profile["resources"]) == {"gpu"}


TOY = '''
rule all:
    input: expand("out/{i}.txt", i=range(3))

rule gpu_job:
    output: "out/{i}.txt"
    resources: gpu=1, mem_mb=100
    shell: "date +%s.%N > {output}; sleep 1; date +%s.%N >> {output}"
'''


def _intervals(d: Path) -> list[tuple[float, float]]:
    return sorted(tuple(map(float, p.read_text().split())) for p in (d / "out").glob("*.txt"))


@pytest.mark.parametrize("gpus", [0, 1])
@pytest.mark.subprocess
def test_local_profile_gpu_cap(tmp_path, gpus):
    """Three jobs asking for gpu=1 each: with K = 1 they run one at a time; with K = 0 (no GPU) they still
    run, side by side on the cores, instead of waiting forever."""
    (tmp_path / "Snakefile").write_text(TOY)
    env = snakemake_env(TRANSFERABLE_GPUS=str(gpus))
    rc, out = snakemake(["--profile", str(LOCAL.parent)], tmp_path, env, timeout=120)
    assert rc == 0, out
    assert f'gpu=Resource("gpu", {gpus})' in out
    spans = _intervals(tmp_path)
    assert len(spans) == 3
    overlap = any(b[0] < a[1] for a, b in zip(spans, spans[1:]))
    assert overlap == (gpus == 0 and (os.cpu_count() or 1) > 1)


@pytest.mark.subprocess
def test_a_further_data_roots_rules_get_their_base_rules_site_settings(workdir, clean_env):
    """experiment.cross (issue 25): ingest_dataset, shard_part_dataset, train_dataset and the cross groups
    are instances of rules a profile names; what a profile or --set-resources gives those rules reaches
    them (here a partition per rule), and a setting given for the instance itself wins."""
    rc, out = snakemake(["-n", "--profile", "profiles/slurm", "--configfile", "configs/demo-cross.yaml",
                         "--config", "resources={train_gpus: 1}", "--set-resources",
                         "ingest:slurm_partition='data-x'", "shard_part:slurm_partition='shard-x'",
                         "demo_data:slurm_partition='data-x'", "demo_data_dataset:slurm_partition='own-x'",
                         "train:slurm_partition='gpu-x'"], workdir, snakemake_env())
    assert rc == 0, out
    part = {}
    for rule, res in dry_run_jobs(out):
        part.setdefault(rule, res.get("slurm_partition"))
    assert part["ingest"] == part["ingest_dataset"] == "data-x", part  # demo_data and ingest: one SLURM group
    assert part["shard_part"] == part["shard_part_dataset"] == "shard-x"
    assert part["demo_data"] == "data-x" and part["demo_data_dataset"] == "own-x"
    cross_groups = [r for r in part if r.startswith("train_together_negative_")]
    assert cross_groups and all(part[r] == "gpu-x" for r in ["train", "train_dataset", *cross_groups]), part
