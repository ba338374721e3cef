# Raw data: the generated demo dataset, or the user's copy; then the catalog and image index.


rule demo_data:
    input:
        code=code("demo"),
    output:
        paths.demo_files(),
    log:
        paths.log(paths.demo_dir()),
    benchmark:
        paths.benchmark(paths.demo_dir())
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        demo=lambda w: json.dumps(config.get("demo", {}), sort_keys=True),
        out=lambda w, output: os.path.dirname(output[0]),
    shell:
        "transferable demo-data --out {params.out:q} --params {params.demo:q} > {log:q} 2>&1"


rule raw_identity:
    output:
        paths.raw_identity("{digest}"),
    log:
        paths.log(paths.raw_identity("{digest}")),
    wildcard_constraints:
        digest="[0-9a-f]{64}",
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    params:
        root=data_root(),
        fmt=plan.setting(config, "data", "format"),
        cache=paths.raw_cache(),
    shell:
        "transferable raw-identity --root={params.root:q} --format {params.fmt:q} --cache {params.cache:q} "
        "--digest {wildcards.digest:q} --out {output:q} > {log:q} 2>&1"


rule ingest:
    input:
        raw=ingest_inputs,
        code=code("ingest"),
    output:
        catalog=paths.catalog(),
        images=paths.images(),
    log:
        paths.log(paths.catalog()),
    benchmark:
        paths.benchmark(paths.catalog())
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        root=data_root(),
        fmt=plan.setting(config, "data", "format"),
    shell:
        "transferable ingest --root={params.root:q} --format {params.fmt:q} "
        "--catalog {output.catalog:q} --images {output.images:q} > {log:q} 2>&1"
