# Aggregates. Each target asks the plan for exactly the nets it draws.


# the net's unit names (x tick labels; the claims' layer ranges): CaffeNet's layers, or a ResNet's or ViT's units
UNITS = ",".join(paths.unit_names(config["net"]))
# how claims become verdicts (config verdicts: alpha, margin, plateau_gain), numbers only
VERDICT_OPTIONS = " ".join(
    f"--{k.replace('_', '-')} {float(plan.setting(config, 'verdicts', k))!r}"
    for k in ("alpha", "margin", "plateau_gain")
)


rule runs_table:
    input:
        metrics=net_outputs(plan.figure_nets(config, "all")),
        code=code("figures"),
    output:
        paths.table("runs.csv"),
    log:
        paths.log(paths.table("runs.csv")),
    benchmark:
        paths.benchmark(paths.table("runs.csv"))
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "transferable runs --metrics {input.metrics:q} --out {output:q} > {log:q} 2>&1"


# Figure 2's numbered readings are the verdicts of effects.csv (one family of claims), so it waits for them.
rule fig2:
    input:
        metrics=net_outputs(plan.figure_nets(config, "fig2")),
        effects=paths.table("effects.csv"),
        code=code("figures"),
    output:
        pdf=paths.figure("fig2.pdf"),
        png=report(
            paths.figure("fig2.png"), caption="../report/fig2.rst", category="Figures"
        ),
    log:
        paths.log(paths.figure("fig2.pdf")),
    benchmark:
        paths.benchmark(paths.figure("fig2.pdf"))
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        paper=paper_flag(),
        units=UNITS,
    shell:
        "transferable figure fig2 --metrics {input.metrics:q} --out {output.pdf:q} {params.paper:q} "
        "--units {params.units:q} --effects {input.effects:q} > {log:q} 2>&1"


rule fig3:
    input:
        metrics=net_outputs(plan.figure_nets(config, "fig3")),
        code=code("figures"),
    output:
        pdf=paths.figure("fig3.pdf"),
        png=report(
            paths.figure("fig3.png"), caption="../report/fig3.rst", category="Figures"
        ),
    log:
        paths.log(paths.figure("fig3.pdf")),
    benchmark:
        paths.benchmark(paths.figure("fig3.pdf"))
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        paper=paper_flag(),
        units=UNITS,
    shell:
        "transferable figure fig3 --metrics {input.metrics:q} --out {output.pdf:q} {params.paper:q} "
        "--units {params.units:q} > {log:q} 2>&1"


rule table1:
    input:
        metrics=net_outputs(plan.figure_nets(config, "table1")),
        code=code("figures"),
    output:
        csv=paths.table("table1.csv"),
        md=paths.table("table1.md"),
    log:
        paths.log(paths.table("table1.csv")),
    benchmark:
        paths.benchmark(paths.table("table1.csv"))
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "transferable table1 --metrics {input.metrics:q} --out {output.csv:q} --markdown {output.md:q} > {log:q} 2>&1"


rule paper_comparison:
    input:
        metrics=net_outputs(plan.figure_nets(config, "all")),
        code=code("figures"),
    output:
        paths.table("paper_comparison.csv"),
    log:
        paths.log(paths.table("paper_comparison.csv")),
    benchmark:
        paths.benchmark(paths.table("paper_comparison.csv"))
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "transferable compare --metrics {input.metrics:q} --out {output:q} > {log:q} 2>&1"


rule effects:
    input:
        metrics=net_outputs(plan.figure_nets(config, "all")),
        code=code("figures"),
    output:
        csv=paths.table("effects.csv"),
        md=paths.table("effects.md"),
    log:
        paths.log(paths.table("effects.csv")),
    benchmark:
        paths.benchmark(paths.table("effects.csv"))
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        units=UNITS,
        verdicts=VERDICT_OPTIONS,
    shell:
        "transferable effects --metrics {input.metrics:q} --out {output.csv:q} --markdown {output.md:q} "
        "--units {params.units:q} {params.verdicts} > {log:q} 2>&1"


rule claims_figure:
    input:
        metrics=net_outputs(plan.figure_nets(config, "all")),
        effects=paths.table("effects.csv"),
        code=code("figures"),
    output:
        pdf=paths.figure("claims.pdf"),
        png=report(
            paths.figure("claims.png"),
            caption="../report/claims.rst",
            category="Figures",
        ),
    log:
        paths.log(paths.figure("claims.pdf")),
    benchmark:
        paths.benchmark(paths.figure("claims.pdf"))
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        units=UNITS,
    shell:
        "transferable figure claims --metrics {input.metrics:q} --out {output.pdf:q} --units {params.units:q} "
        "--effects {input.effects:q} "
        "> {log:q} 2>&1"


rule training_curves:
    input:
        metrics=lambda w: net_outputs(
            [
                n
                for n in plan.figure_nets(config, "all")
                if paths.base_split(n.split) == w.split
            ]
        ),
        code=code("figures"),
    output:
        pdf=paths.figure("curves_{split}.pdf"),
        png=report(
            paths.figure("curves_{split}.png"),
            caption="../report/curves.rst",
            category="Training curves",
            labels={"split": "{split}"},
        ),
    log:
        paths.log(paths.figure("curves_{split}.pdf")),
    benchmark:
        paths.benchmark(paths.figure("curves_{split}.pdf"))
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        title=lambda w: f"split {w.split}",
    shell:
        "transferable curves --metrics {input.metrics:q} --out {output.pdf:q} --title {params.title:q} "
        "> {log:q} 2>&1"


# A table of results/tables/ as HTML, shown in the report (a CSV there is only a download).
rule table_html:
    input:
        csv=paths.table("{name}.csv"),
        code=code("figures"),
    output:
        report(
            paths.table("{name}.html"),
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "{name}"},
        ),
    log:
        paths.log(paths.table("{name}.html")),
    benchmark:
        paths.benchmark(paths.table("{name}.html"))
    wildcard_constraints:
        name="|".join(REPORT_TABLES),
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "transferable html-table --csv {input.csv:q} --out {output:q} > {log:q} 2>&1"
