# Transfer between datasets (experiment.cross, docs/cross.md): checkpoint files mapped onto the units, the
# per-unit similarity of each (source, target), and the profile tables, verdicts and figures. The nets
# themselves train in the rules of workflow/rules/train.smk (the transfer/{source}/ trees).


rule import_source:
    input:
        checkpoint=lambda w: crossplan.sources(config)[w.source].checkpoint,
        code=code("sources"),
    output:
        paths.source_model("{source}"),
    log:
        paths.log(paths.source_model("{source}")),
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        net=json.dumps(config["net"], sort_keys=True),
        size=config["preprocess"]["size"],
        mean=lambda w: ",".join(
            str(v) for v in crossplan.sources(config)[w.source].mean
        ),
    shell:
        "transferable import-source --checkpoint {input.checkpoint:q} --net {params.net:q} "
        "--size {params.size} --mean {params.mean:q} --out {output:q} > {log:q} 2>&1"


rule cross_similarity:
    input:
        source=lambda w: crossplan.sources(config)[w.source].model(),
        bases=lambda w: crossplan.target_bases(config, CROSS_TARGETS[w.target]),
        manifest=lambda w: paths.split_manifest(
            CROSS_TARGETS[w.target].split, CROSS_TARGETS[w.target].dataset
        ),
        shards=lambda w: paths.shard_index(PREP, CROSS_TARGETS[w.target].dataset),
        code=code("similarity"),
    output:
        paths.cross_table("similarity/{source}_to_{target}.csv"),
    log:
        paths.log(paths.cross_table("similarity/{source}_to_{target}.csv")),
    benchmark:
        paths.benchmark(paths.cross_table("similarity/{source}_to_{target}.csv"))
    wildcard_constraints:
        target="|".join(re.escape(t) for t in CROSS_TARGETS) or "(?!)",
    priority: 50
    conda:
        "../../envs/train.yaml"
    threads: max(1, res("train_threads"))
    resources:
        mem_mb=lambda w, attempt: res("similarity_mem_mb") * attempt,
        runtime=lambda w, attempt: res("similarity_runtime_min") * attempt,
    params:
        sim=json.dumps(config["experiment"].get("similarity") or {}, sort_keys=True),
        half=lambda w: CROSS_TARGETS[w.target].half,
    shell:
        "transferable cross-similarity --source {input.source:q} --bases {input.bases:q} "
        "--manifest {input.manifest:q} --half {params.half:q} --shards {input.shards:q} "
        "--params {params.sim:q} --threads {threads} --names {wildcards.source:q} {wildcards.target:q} "
        "--out {output:q} > {log:q} 2>&1"


rule cross_report:
    input:
        metrics=net_outputs(crossplan.cross_nets(config)),
        similarity=[
            paths.cross_table(f"similarity/{crossplan.pair_stem(s, t)}.csv")
            for s, t in crossplan.pairs(config)
            if CROSS_SIM
        ],
        sources=[n.file("metrics.json") for n in crossplan.source_nets(config)],
        code=code("cross"),
    output:
        runs=paths.cross_table("runs.csv"),
        effects=paths.cross_table("effects.csv"),
        summary=paths.cross_table("summary.csv"),
        markdown=paths.cross_table("effects.md"),
        figures=[
            paths.cross_figure(f"{crossplan.pair_stem(s, t)}.pdf")
            for s, t in crossplan.pairs(config)
        ]
        + (
            [paths.cross_figure("grid.pdf")]
            if len(crossplan.pairs(config)) > 1
            else []
        ),
        pngs=[
            report(
                paths.cross_figure(f"{crossplan.pair_stem(s, t)}.png"),
                caption="../report/cross.rst",
                category="Cross-dataset transfer",
            )
            for s, t in crossplan.pairs(config)
        ],
    log:
        paths.log(paths.cross_table("effects.csv")),
    benchmark:
        paths.benchmark(paths.cross_table("effects.csv"))
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        verdicts=json.dumps(config.get("verdicts") or {}, sort_keys=True),
        figures=lambda w, output: os.path.dirname(output.figures[0]),
        sources=" ".join(
            shlex.quote(f"{name}={s.net.file('metrics.json')}")
            for name, s in crossplan.sources(config).items()
            if s.net is not None
        ),
    shell:
        "transferable cross-report --metrics {input.metrics:q} --similarity {input.similarity:q} "
        "--verdicts {params.verdicts:q} --runs {output.runs:q} --effects {output.effects:q} "
        "--summary {output.summary:q} --markdown {output.markdown:q} --figures {params.figures:q} "
        "--source-metrics {params.sources} > {log:q} 2>&1"
