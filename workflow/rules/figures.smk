# Aggregates. Each target asks the plan for exactly the nets it draws.


rule runs_table:
    input:
        metrics=net_outputs(plan.figure_nets(config, "all")),
        code=code("figures"),
    output:
        paths.table("runs.csv"),
    conda:
        "../../envs/figures.yaml"
    log:
        paths.log(paths.table("runs.csv")),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "transferable runs --metrics {input.metrics:q} --out {output:q} > {log:q} 2>&1"


rule fig2:
    input:
        metrics=net_outputs(plan.figure_nets(config, "fig2")),
        code=code("figures"),
    output:
        pdf=report(paths.figure("fig2.pdf"), caption="../report/fig2.rst", category="Figures"),
        png=paths.figure("fig2.png"),
    params:
        paper=paper_flag(),
    conda:
        "../../envs/figures.yaml"
    log:
        paths.log(paths.figure("fig2.pdf")),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "transferable figure fig2 --metrics {input.metrics:q} --out {output.pdf:q} {params.paper:q} > {log:q} 2>&1"


rule fig3:
    input:
        metrics=net_outputs(plan.figure_nets(config, "fig3")),
        code=code("figures"),
    output:
        pdf=report(paths.figure("fig3.pdf"), caption="../report/fig3.rst", category="Figures"),
        png=paths.figure("fig3.png"),
    params:
        paper=paper_flag(),
    conda:
        "../../envs/figures.yaml"
    log:
        paths.log(paths.figure("fig3.pdf")),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "transferable figure fig3 --metrics {input.metrics:q} --out {output.pdf:q} {params.paper:q} > {log:q} 2>&1"


rule table1:
    input:
        metrics=net_outputs(plan.figure_nets(config, "table1")),
        code=code("figures"),
    output:
        csv=report(paths.table("table1.csv"), caption="../report/table1.rst", category="Tables"),
        md=paths.table("table1.md"),
    conda:
        "../../envs/figures.yaml"
    log:
        paths.log(paths.table("table1.csv")),
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
        report(paths.table("paper_comparison.csv"), caption="../report/comparison.rst", category="Tables"),
    conda:
        "../../envs/figures.yaml"
    log:
        paths.log(paths.table("paper_comparison.csv")),
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
        csv=report(paths.table("effects.csv"), caption="../report/effects.rst", category="Tables"),
        md=paths.table("effects.md"),
    conda:
        "../../envs/figures.yaml"
    log:
        paths.log(paths.table("effects.csv")),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "transferable effects --metrics {input.metrics:q} --out {output.csv:q} --markdown {output.md:q} > {log:q} 2>&1"


rule claims_figure:
    input:
        metrics=net_outputs(plan.figure_nets(config, "all")),
        code=code("figures"),
    output:
        pdf=paths.figure("claims.pdf"),
        png=report(paths.figure("claims.png"), caption="../report/claims.rst", category="Figures"),
    conda:
        "../../envs/figures.yaml"
    log:
        paths.log(paths.figure("claims.pdf")),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "transferable figure claims --metrics {input.metrics:q} --out {output.pdf:q} > {log:q} 2>&1"


rule training_curves:
    input:
        metrics=lambda w: net_outputs(
            [n for n in plan.figure_nets(config, "all") if paths.base_split(n.split) == w.split]
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
    params:
        title=lambda w: f"split {w.split}",
    conda:
        "../../envs/figures.yaml"
    log:
        paths.log(paths.figure("curves_{split}.pdf")),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "transferable curves --metrics {input.metrics:q} --out {output.pdf:q} --title {params.title:q} "
        "> {log:q} 2>&1"
