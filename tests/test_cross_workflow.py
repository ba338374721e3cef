"""The cross experiment end to end (issue 25), on a micro design held by conftest's ResNet family run (beside
the micro design of the config's own data): two sources (a net trained here on the
config's own data, and a torchvision-format checkpoint file), one generated target dataset of another kind
(negatives), then reruns: a changed target reruns only that target's work, a changed source only what
copies from it; the target's own nets never depend on a source."""

import json
import re

import pandas as pd
import pytest
import torch
import yaml
from conftest import run_snakemake
from test_workflow import planned

from transferable import crossplan


@pytest.fixture
def cross_done(resnet_done):
    """conftest's ResNet family run, which holds the micro cross design (conftest.resnet_config)."""
    return resnet_done, resnet_done / "configs/resnet.yaml"


def _plan(wd, cfg_path, edit, sources=False):
    """{rule: jobs} of a dry run after ``edit``; with ``sources``, also the set of transfer/<source>/ folders
    whose nets would be retrained."""
    c = yaml.safe_load(cfg_path.read_text())
    edit(c)
    out = wd / "configs/edited.yaml"
    out.write_text(yaml.safe_dump(c))
    proc = run_snakemake(["-n", "--cores", "2", "--configfile", str(out)], wd)
    if not sources:
        return planned(proc)
    outputs = re.findall(r"^\s*output: (.*)$", proc.stdout, re.M)
    return planned(proc), {m for o in outputs for m in re.findall(r"/transfer/([\w-]+)/", o)}


def _together(jobs: dict) -> set[str]:
    """The shared-stream jobs of a plan: their groups (folder, run, half), from the rule names."""
    return {k.removeprefix("train_together_") for k in jobs if k.startswith("train_together_")}


@pytest.mark.slow
def test_cross_run_ends_with_tables_verdicts_and_figures(cross_done):
    wd, cfg_path = cross_done
    res = wd / "results"
    runs = pd.read_csv(res / "tables/cross/runs.csv", keep_default_na=False)
    # per replicate: base, R1A, R3A (own, shared by both sources); per source X1A, X3A, X3A_ft
    assert len(runs) == 2 * (3 + 2 * 3)
    assert set(runs.source) == {"", "here", "file"} and set(runs.target) == {"neg"}
    assert set(runs.treatment) == {"base", "random", "AnB", "AnB+"}
    eff = pd.read_csv(res / "tables/cross/effects.csv")
    assert set(eff.source) == {"here", "file"} and len(eff) == 2 * (2 + 1 + 2)  # AnB x2, AnB+ x1, random x2
    summary = pd.read_csv(res / "tables/cross/summary.csv")
    assert len(summary) == 2 and summary.answer.str.len().min() > 20
    for s in ("here", "file"):
        assert (res / f"figures/cross/{s}_to_neg.pdf").stat().st_size > 1000
    assert (res / "figures/cross/grid.pdf").is_file()
    sim = pd.read_csv(res / f"tables/cross/similarity/file_to_neg.csv")
    assert list(sim.n) == [1, 2, 3, 4, 5] and sim.cka.between(-0.01, 1.01).all() and sim.bases.eq(2).all()
    # the checkpoint was mapped onto the units: the imported source holds its tensors under "model."
    src = torch.load(res / "sources/file/model.pt", weights_only=True)
    ck = torch.load(wd / "rs.pth", weights_only=True)
    assert torch.equal(src["state_dict"]["model.layer2.0.conv1.weight"], ck["layer2.0.conv1.weight"])
    # a frozen transfer's units 1..3 are the source's, bit for bit; its head is new
    x3 = torch.load(res / "datasets/neg/transfer/file/all/X3A/model.pt", weights_only=True)["state_dict"]
    assert torch.equal(x3["model.layer2.0.conv1.weight"], ck["layer2.0.conv1.weight"])
    assert not torch.equal(x3["model.layer3.0.conv1.weight"], ck["layer3.0.conv1.weight"])
    m = json.loads((res / "datasets/neg/transfer/here/all.s1/X1A/metrics.json").read_text())
    assert m["provenance"]["source_model"] == "results/nets/all/baseA/model.pt"


@pytest.mark.slow
def test_nothing_changed_nothing_to_do(cross_done):
    wd, cfg = cross_done
    assert _plan(wd, cfg, lambda c: None) == {}


@pytest.mark.slow
def test_a_changed_target_reruns_that_target_only(cross_done):
    """Another generated target: its data and every net trained on it rerun; the sources, the config's own
    data and the imported checkpoint do not."""
    wd, cfg = cross_done
    jobs, via = _plan(wd, cfg, lambda c: c["datasets"]["neg"]["demo"].update(seed=4), sources=True)
    assert {"demo_data", "ingest", "shard_part", "train", "import_source"}.isdisjoint(jobs), jobs
    assert jobs["demo_data_dataset"] == 1 and jobs["ingest_dataset"] == 1
    # per replicate (all, all.s1): its baseA alone; R1A and R3A in one job (own); per source X1A, X3A, X3A_ft
    # in one job (the run trains on shared streams: conftest.resnet_config)
    assert jobs["train_dataset"] == 2 and "train_dataset_cross" not in jobs and via == {"here", "file"}
    assert _together(jobs) == {f"neg_{f}_{r}_A" for f in ("own", "here", "file") for r in ("all", "all__s1")}
    assert jobs["cross_similarity"] == 2 and jobs["cross_report"] == 1


@pytest.mark.slow
def test_a_changed_source_reruns_only_what_copies_from_it(cross_done):
    """The config's own data changes: the source trained on it and the nets copying from it rerun, not the
    target's data, its own base and random-filter nets, or what copies from the checkpoint."""
    wd, cfg = cross_done
    jobs, via = _plan(wd, cfg, lambda c: c["demo"].update(seed=9), sources=True)
    # the config's own 20 nets, the source among them (baseA of the all-class split): its 5 base nets alone,
    # the others in one job per split and half; and the nets copying from "here", one job per replicate
    assert jobs["demo_data"] == 1 and jobs["train"] == 5
    assert {"demo_data_dataset", "ingest_dataset", "train_dataset", "import_source"}.isdisjoint(jobs), jobs
    assert _together(jobs) == {"rand0_B", "natman_A", "natman_B", "all_A", "neg_here_all_A", "neg_here_all__s1_A"}
    assert "train_dataset_cross" not in jobs and via == {"here"}
    assert jobs["cross_similarity"] == 1 and jobs["cross_report"] == 1


@pytest.mark.slow
def test_the_shared_stream_groups_one_folder_and_half(cross_done):
    """resources.shared_stream (the run's): the target's own random-filter nets and each source's transfers
    trained in one job per (folder, run, half), the base nets alone; without it, one job per net."""
    wd, cfg = cross_done
    log = (wd / "snakemake.out").read_text()
    ran = dict.fromkeys(re.findall(r"^Finished jobid: \d+ \(Rule: (train\w*)\)", log, re.M), 1)
    assert _together(ran) == {f"neg_{f}_{r}_A" for f in ("own", "here", "file") for r in ("all", "all__s1")} | {
        "rand0_B", "natman_A", "natman_B", "all_A"}
    jobs = _plan(wd, cfg, lambda c: c["resources"].update(shared_stream=False) or c["train"].update(lr=0.02))
    assert not _together(jobs), jobs
    # per net: the config's own 20; the target's 2 x (baseA, R1A, R3A); 2 x 2 sources x (X1A, X3A, X3A_ft)
    assert jobs["train"] == 20 and jobs["train_dataset"] == 6 and jobs["train_dataset_cross"] == 12


@pytest.mark.slow
def test_a_checkpoint_missing_a_key_fails_before_any_job(cross_done, tmp_path):
    wd, cfg = cross_done
    sd = torch.load(wd / "rs.pth", weights_only=True)
    del sd["layer3.0.bn2.running_var"]
    torch.save(sd, tmp_path / "broken.pth")
    c = yaml.safe_load(cfg.read_text())
    c["experiment"]["cross"]["sources"]["file"]["checkpoint"] = str(tmp_path / "broken.pth")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(c))
    proc = run_snakemake(["-n", "--cores", "2", "--configfile", str(bad)], wd, check=False)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "experiment.cross.sources.file" in err and "layer3.0.bn2.running_var" in err and "broken.pth" in err
    assert "Job stats" not in err
    assert crossplan.block(c)  # the config itself is well formed: only the file is wrong
