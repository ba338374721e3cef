"""The whole DAG on configs/micro.yaml, and what each target plans (dry runs)."""

import re

import pandas as pd
import pytest
import yaml
from conftest import run_snakemake

from transferable.figures.effects import CLAIMS, VERDICTS

MICRO = ["--configfile", "configs/micro.yaml"]


def planned(proc):
    """{rule: count} from a dry run's job table."""
    table = proc.stdout.split("Job stats:")[1].split("Reasons:")[0] if "Job stats:" in proc.stdout else ""
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", table, re.M) if m[0] != "total"}


def planned_nets(proc):
    return sorted(set(re.findall(r"results/nets/([\w.-]+/\w+)/metrics.json", proc.stdout)))


def _demo_one_job_per_net(workdir):
    """config.yaml with resources.shared_stream off: each target then plans exactly the nets it draws."""
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["resources"]["shared_stream"] = False
    (workdir / "configs/demo_alone.yaml").write_text(yaml.safe_dump(cfg))
    return ["--configfile", "configs/demo_alone.yaml"]


@pytest.mark.subprocess
def test_default_config_plans_the_replicated_design(workdir):
    jobs = planned(run_snakemake(["-n", "--cores", "2"], workdir))
    # base nets alone (6 random splits x 2, natman x 4 seeds x 2, all x 2 seeds, and the similarity
    # analysis's seed floor: rand0.s1's 2), the rest in one job per (split or replicate, target half):
    # 6 random (target B) + 8 natman + 2 all
    assert jobs["train"] == 24 and sum(v for k, v in jobs.items() if k.startswith("train_together_")) == 16
    assert jobs["shard_part"] == 2 and jobs["split_manifest"] == 8 and jobs["effects"] == 1
    alone = planned(run_snakemake(["-n", "--cores", "2", *_demo_one_job_per_net(workdir)], workdir))
    assert alone["train"] == 84 + 4 * 10 + 2 * 5 + 2


@pytest.mark.subprocess
def test_fig2_plans_what_its_readings_need(workdir):
    """Figure 2's numbered readings are effects.csv's verdicts, adjusted over every claim: it waits for
    effects.csv (so for every net of the design), but draws and plans no other figure."""
    proc = run_snakemake(["-n", "--cores", "2", "results/figures/fig2.pdf", *_demo_one_job_per_net(workdir)],
                         workdir)
    jobs = planned(proc)
    assert jobs["effects"] == 1 and jobs["train"] == 84 + 4 * 10 + 2 * 5
    assert "fig3" not in jobs and "claims_figure" not in jobs and "similarity" not in jobs


@pytest.mark.subprocess
def test_fig3_plans_no_selffer_or_finetuned_nets(workdir):
    nets = planned_nets(run_snakemake(["-n", "--cores", "2", "results/figures/fig3.pdf",
                                       *_demo_one_job_per_net(workdir)], workdir))
    rand = [n.split("/")[1] for n in nets if n.startswith("rand0/")]
    # the demo's random splits have target B only, at n = 1, 3, 5, 7
    assert sorted(rand) == sorted([f"A{n}B" for n in (1, 3, 5, 7)] + ["baseA", "baseB"])
    assert len([n for n in nets if n.startswith("natman/")]) == 2 + 2 * 4
    assert len([n for n in nets if n.startswith("natman.s3/")]) == 2 + 2 * 4  # the fourth seed
    assert len([n for n in nets if n.startswith("all.s1/")]) == 1 + 4  # its base net and R1A, R3A, R5A, R7A


@pytest.mark.subprocess
def test_paper_config_plans_every_net(workdir, tmp_path):
    root = tmp_path / "imagenet"
    root.mkdir()
    jobs = planned(run_snakemake(["-n", "--configfile", "configs/paper.yaml", "--config", f"data_root={root}"], workdir))
    # 4 splits x (2 base + 2 targets x 4 treatments x 7) + natman (2 + 14) + random filters (1 + 7)
    # + rand0.s1's two base nets: the similarity analysis's seed floor
    assert jobs["train"] == 4 * 58 + 16 + 8 + 2 and jobs["shard_part"] == 100 and jobs["split_manifest"] == 6
    # experiment.similarity at paper scale: one job, with its resources, planned with the rest
    assert jobs["similarity"] == 1 and jobs["similarity_figure"] == 1


@pytest.mark.subprocess
def test_unit_network_configs_plan(workdir, tmp_path):
    """Issue 12: configs/imagenet-resnet50.yaml (5 stages) plans its 134 nets on a data root; the demo
    configurations on a ResNet and a ViT plan the demo's design at n = 1..5 (the CaffeNet demo's 202 nets
    had n = 1..7: 142 here)."""
    root = tmp_path / "imagenet"
    root.mkdir()
    jobs = planned(run_snakemake(["-n", "--configfile", "configs/imagenet-resnet50.yaml", "--config",
                                  f"data_root={root}"], workdir))
    # 2 splits x (2 base + 2 targets x 4 treatments x 5) + natman 3 seeds x (2 + 10) + random 2 seeds x (1 + 5),
    # and the similarity analysis's noise floor: rand0's base nets once more (issue 24)
    assert jobs["train"] == 2 * 42 + 3 * 12 + 2 * 6 + 2
    assert jobs["similarity"] == 1
    from transferable.data import demo

    inet = tmp_path / "inet1000"  # a 1000-class data root in the official layout: "ImageNet" to the plan
    demo.generate(inet, classes_per_family=500, train_per_class=1, val_per_class=1, min_side=8, max_side=8)
    for config, flag in (("paper", " --paper"), ("imagenet-resnet50", "--no-paper")):
        printed = run_snakemake(["-n", "-p", "--configfile", f"configs/{config}.yaml", "--config",
                                 f"data_root={inet}", "--until", "fig2"], workdir).stdout
        assert flag in printed  # CaffeNet's published numbers beside CaffeNet only
    for name, units in (("demo-resnet", "stem,layer1.0,layer2.0,layer3.0,layer4.0"),
                        ("demo-vit", "embed,block1,block2,block3,block4")):
        out = run_snakemake(["-n", "-p", "--configfile", f"configs/{name}.yaml"], workdir).stdout
        assert "A5B" in out and "A6B" not in out
        assert f"--units {units} " in out


@pytest.mark.subprocess
def test_paper_lines_only_on_imagenet(workdir, tmp_path):
    """The figures draw the paper's ImageNet means only for a 1000-class data root, or when asked."""
    demo = run_snakemake(["-n", "-p", "--configfile", "configs/micro.yaml"], workdir).stdout
    assert "figure fig2" in demo and "--no-paper" in demo and " --paper" not in demo
    asked = run_snakemake(["-n", "-p", "--configfile", "configs/micro.yaml", "--config",
                           "figures={'paper_lines': 'always'}"], workdir).stdout
    assert " --paper" in asked


@pytest.mark.subprocess
def test_paper_config_without_data_root_fails_before_any_job(workdir):
    proc = run_snakemake(["-n", "--configfile", "configs/paper.yaml"], workdir, check=False)
    assert proc.returncode != 0 and "data.root is required" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_micro_config_runs_the_whole_dag(micro_done):
    """conftest.micro_done ran it with a Snakemake whose environment lacks the package."""
    workdir = micro_done
    for f in ("figures/fig2.pdf", "figures/fig2.png", "figures/fig3.pdf", "figures/fig3.png",
              "tables/runs.csv", "tables/table1.csv", "tables/table1.md", "tables/paper_comparison.csv",
              "tables/effects.csv", "tables/effects.md", "figures/claims.pdf", "figures/claims.png",
              "figures/similarity.pdf", "figures/similarity.png", "tables/similarity.csv", "tables/probes.csv",
              "tables/similarity_by_layer.csv"):
        assert (workdir / "results" / f).stat().st_size > 0, f
    runs = pd.read_csv(workdir / "results/tables/runs.csv")
    assert len(runs) == 13
    assert set(runs.treatment) == {"base", "BnB", "BnB+", "AnB", "AnB+", "base+", "random"}
    assert runs.top1.between(0, 1).all() and (runs.evals == 2).all()
    assert not list((workdir / "results/ckpt").rglob("*.pt"))  # finished runs leave no checkpoint
    # every panel is compared with the paper, not only Figure 2's
    cmp = pd.read_csv(workdir / "results/tables/paper_comparison.csv", keep_default_na=False, na_values=[""])
    for panel in ("fig2", "natman", "random"):
        assert (cmp.loc[(cmp["panel"] == panel) & (cmp["paper_count"] > 0) & (cmp["n"] <= 1), "count"] > 0).all(), panel
    eff = pd.read_csv(workdir / "results/tables/effects.csv")
    claims = eff[eff["scope"] == "claim"]
    assert set(claims["claim"]) == {c.key for c in CLAIMS}
    assert set(claims["verdict"]) <= set(VERDICTS)
    # one split and one target half, n = 1 only: one unit per claim, no interval, nothing is resolved
    # (a claim comparing two kinds of unit, "X vs Y", counts the units of both sides: one each)
    most = claims["unit"].str.contains(" vs ").map({True: 2, False: 1})
    assert (claims["verdict"] == "no interval").all() and (claims["units"] <= most).all()
    assert (claims["paper_verdict"] != "").all()
    sim = pd.read_csv(workdir / "results/tables/similarity.csv")
    assert set(sim["kind"]) == {"A_vs_B", "finetuned_vs_base"} and sim["cka"].between(-0.5, 1.0001).all()
    assert len(pd.read_csv(workdir / "results/tables/probes.csv")) == 2 * 2 * 7  # 2 targets x 2 nets x 7 layers
    t1 = pd.read_csv(workdir / "results/tables/table1.csv")
    assert set(t1["method"]) == {"pooled", "paired", "authors_nets_pooled", "authors_nets_paired"}
    again = run_snakemake(MICRO + ["--cores", "2"], workdir)
    assert "Nothing to be done" in again.stdout + again.stderr


def _micro_variant(workdir, name, **resources):
    import yaml

    cfg = yaml.safe_load((workdir / "configs/micro.yaml").read_text())
    assert cfg["net"]["dropout"] == 0.0  # frozen passes shared between nets are then exactly the nets' own
    cfg["resources"].update(resources)
    (workdir / f"configs/{name}.yaml").write_text(yaml.safe_dump(cfg))
    return ["--configfile", f"configs/{name}.yaml"]


@pytest.mark.subprocess
def test_shared_stream_plans_one_job_per_half(workdir):
    jobs = planned(run_snakemake(["-n", "--cores", "2", *_micro_variant(workdir, "shared", shared_stream=True)], workdir))
    assert jobs["train"] == 5  # the base nets: rand0 A, B; natman A, B; all A
    assert {k for k in jobs if k.startswith("train_together_")} == {
        "train_together_rand0_B", "train_together_natman_A", "train_together_natman_B", "train_together_all_A"}


@pytest.mark.slow
def test_shared_stream_trains_every_net_in_one_job_per_half(vit_done):
    """conftest's ViT family run, with resources.shared_stream: the nets of a (split, half) that copy from a
    base net trained in one job each, and every net of the design is there (that a net trained on a shared
    stream equals the net trained alone: tests/test_train.py, in process)."""
    out = (vit_done / "snakemake.out").read_text()
    ran = set(re.findall(r"^(?:local)?rule (train_together_\w+):", out, re.M))
    assert ran == {"train_together_rand0_B", "train_together_natman_A", "train_together_natman_B",
                   "train_together_all_A"}, ran
    runs = pd.read_csv(vit_done / "results/tables/runs.csv")
    assert len(runs) == 20 and runs["top1"].notna().all()


@pytest.mark.slow
def test_values_reaching_the_shell_are_quoted(workdir, demo_small, tmp_path):
    """A data root with a space and a command substitution in its name, and split families with quotes and
    `$(...)`, run as plain values: nothing is executed, and the manifest holds the names verbatim."""
    import shutil

    root = tmp_path / "my data $(touch PWNED_ROOT)"
    shutil.copytree(demo_small, root)
    cfg = yaml.safe_load((workdir / "configs/micro.yaml").read_text())
    cfg["data"] = {"source": "path", "root": str(root), "format": "auto", "on_corrupt": "error"}
    cfg.pop("demo")
    fams = {"A": "men's things", "B": "'$(touch PWNED_FAMILY)'"}
    cfg["splits"]["odd"] = {"kind": "ranges", "halves": {"A": {"family": fams["A"], "ranges": "0-2"},
                                                           "B": {"family": fams["B"], "ranges": "3-5"}}}
    (workdir / "configs/odd.yaml").write_text(yaml.safe_dump(cfg))
    run_snakemake(["results/splits/odd.json", "results/ingest/catalog.csv", "--cores", "1",
                   "--configfile", "configs/odd.yaml"], workdir)
    assert not list(workdir.rglob("PWNED*")) and not list(tmp_path.rglob("PWNED*"))
    import json

    man = json.loads((workdir / "results/splits/odd.json").read_text())
    assert {h: man["halves"][h]["family"] for h in "AB"} == fams
