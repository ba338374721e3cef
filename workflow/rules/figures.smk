# Aggregates. Each target asks the plan for exactly the nets it draws.


rule runs_table:
    input:
        net_outputs(plan.figure_nets(config, "all")),
    output:
        paths.table("runs.csv"),
    conda:
        "../../envs/figures.yaml"
    log:
        paths.log(paths.table("runs.csv")),
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "transferable runs --metrics {input} --out {output} > {log} 2>&1"


rule fig2:
    input:
        net_outputs(plan.figure_nets(config, "fig2")),
    output:
        pdf=report(paths.figure("fig2.pdf"), caption="../report/fig2.rst", category="Figures"),
        png=paths.figure("fig2.png"),
    conda:
        "../../envs/figures.yaml"
    log:
        paths.log(paths.figure("fig2.pdf")),
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "transferable figure fig2 --metrics {input} --out {output.pdf} > {log} 2>&1"


rule fig3:
    input:
        net_outputs(plan.figure_nets(config, "fig3")),
    output:
        pdf=report(paths.figure("fig3.pdf"), caption="../report/fig3.rst", category="Figures"),
        png=paths.figure("fig3.png"),
    conda:
        "../../envs/figures.yaml"
    log:
        paths.log(paths.figure("fig3.pdf")),
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "transferable figure fig3 --metrics {input} --out {output.pdf} > {log} 2>&1"


rule table1:
    input:
        net_outputs(plan.figure_nets(config, "table1")),
    output:
        csv=report(paths.table("table1.csv"), caption="../report/table1.rst", category="Tables"),
        md=paths.table("table1.md"),
    conda:
        "../../envs/figures.yaml"
    log:
        paths.log(paths.table("table1.csv")),
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "transferable table1 --metrics {input} --out {output.csv} --markdown {output.md} > {log} 2>&1"


rule paper_comparison:
    input:
        net_outputs(plan.figure_nets(config, "fig2")),
    output:
        report(paths.table("paper_comparison.csv"), caption="../report/comparison.rst", category="Tables"),
    conda:
        "../../envs/figures.yaml"
    log:
        paths.log(paths.table("paper_comparison.csv")),
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "transferable compare --metrics {input} --out {output} > {log} 2>&1"
