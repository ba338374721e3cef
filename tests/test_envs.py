"""The conda files in envs/ and the pip pins agree with each other and with pyproject's dependencies."""

import re
import shutil
import subprocess
import tomllib

import pytest
import yaml
from conftest import ROOT

FAMILIES = {"data": set(), "train": {"torch", "torchvision"}, "figures": {"matplotlib", "seaborn"}}


def _constraints():
    pins = {}
    for line in (ROOT / "envs/constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def _env(name):
    deps = yaml.safe_load((ROOT / f"envs/{name}.yaml").read_text())["dependencies"]
    pins = {}
    for d in deps:
        items = d["pip"] if isinstance(d, dict) else [d]
        for item in items:
            m = re.match(r"^([A-Za-z0-9_.-]+)\s*={1,2}\s*([^\s#]+)", item.split("#")[0].strip())
            if m and m.group(1) != "python":
                pins[m.group(1).lower()] = m.group(2)
    return pins


def _names(reqs):
    return {re.split(r"[<>=!\[ ]", r)[0].lower() for r in reqs}


def test_every_conda_pin_matches_constraints():
    pins = _constraints()
    for fam in FAMILIES:
        for name, version in _env(fam).items():
            assert pins.get(name) == version, f"envs/{fam}.yaml pins {name}={version}, constraints say {pins.get(name)}"


def test_each_family_has_what_the_package_needs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = _names(project["dependencies"])
    extras = project["optional-dependencies"]
    for fam, extra_names in FAMILIES.items():
        need = base | (_names(extras[fam]) if fam in extras else set())
        assert need <= set(_env(fam)), f"envs/{fam}.yaml lacks {sorted(need - set(_env(fam)))}"
        assert extra_names <= need


def test_every_dependency_is_pinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = _names(project["dependencies"])
    for key in ("train", "figures", "workflow", "test"):
        names |= _names(project["optional-dependencies"][key])
    assert names <= set(_constraints()), f"not pinned in envs/constraints.txt: {sorted(names - set(_constraints()))}"


def test_every_rule_names_an_existing_env():
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().is_file(), f"{smk.name}: {env} does not exist"


def test_setup_on_a_full_disk_stops_before_installing(tmp_path):
    """`make setup` names the folder and the space it needs instead of failing half-way through pip."""
    if shutil.which("make") is None:
        pytest.skip("no make")
    venv = tmp_path / "venv"
    r = subprocess.run(["make", "-s", "setup", f"VENV={venv}", "NEED_MB=999999999"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert f"MB free on the disk of {venv}" in r.stderr and "needs about 999999999 MB" in r.stderr
    assert not venv.exists()


@pytest.mark.subprocess
def test_use_conda_parses_and_plans(workdir):
    """`--use-conda` reads the workflow and builds the DAG (the f-string in shell.prefix once broke the
    parse with a NameError). Where conda is absent Snakemake stops after that, at `conda info`."""
    from conftest import run_snakemake

    proc = run_snakemake(["-n", "--use-conda", "--cores", "1", "--configfile", "configs/micro.yaml"], workdir,
                         check=False)
    out = proc.stdout + proc.stderr
    assert "Building DAG of jobs" in out and "NameError" not in out and "SyntaxError" not in out, out[-2000:]
    if shutil.which("conda"):
        assert proc.returncode == 0, out[-2000:]
