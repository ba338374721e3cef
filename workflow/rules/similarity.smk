# Why features transfer (experiment.similarity): per-layer linear CKA between nets and linear probes,
# from forward passes of nets already trained, beside the AnB transfer loss.

SIM_NETS = plan.similarity_nets(config)


rule similarity:
    input:
        models=net_outputs(SIM_NETS, "model.pt"),
        manifests=sorted(
            {paths.split_manifest(paths.base_split(n.split)) for n in SIM_NETS}
        ),
        shards=paths.shard_index(PREP),
        code=code("similarity"),
    output:
        sim=paths.table("similarity.csv"),
        probes=paths.table("probes.csv"),
    log:
        paths.log(paths.table("similarity.csv")),
    benchmark:
        paths.benchmark(paths.table("similarity.csv"))
    # the longest job after training: started as soon as its nets exist, the figures run beside it
    priority: 50
    conda:
        "../../envs/train.yaml"
    threads: max(1, res("train_threads"))
    resources:
        mem_mb=lambda w, attempt: res("similarity_mem_mb") * attempt,
        runtime=lambda w, attempt: res("similarity_runtime_min") * attempt,
    params:
        sim=json.dumps(config["experiment"].get("similarity") or {}, sort_keys=True),
    shell:
        "transferable similarity --models {input.models:q} --manifests {input.manifests:q} "
        "--shards {input.shards:q} --params {params.sim:q} --threads {threads} --out {output.sim:q} "
        "--probes {output.probes:q} > {log:q} 2>&1"


rule similarity_figure:
    input:
        sim=paths.table("similarity.csv"),
        probes=paths.table("probes.csv"),
        metrics=net_outputs(
            [
                n
                for n in plan.random_split_nets(config)
                if n.parsed.treatment in (REFERENCE, FIGURES.similarity_transfer)
            ]
        ),
        code=code("figures"),
    output:
        pdf=paths.figure("similarity.pdf"),
        png=report(
            paths.figure("similarity.png"),
            caption="../report/similarity.rst",
            category="Figures",
        ),
        table=paths.table("similarity_by_layer.csv"),
    log:
        paths.log(paths.figure("similarity.pdf")),
    benchmark:
        paths.benchmark(paths.figure("similarity.pdf"))
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "transferable similarity-figure --similarity {input.sim:q} --probes {input.probes:q} "
        "--metrics {input.metrics:q} --out {output.pdf:q} --table {output.table:q} > {log:q} 2>&1"
