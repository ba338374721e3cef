# Class-split manifests. They depend on the catalog only: changing a split never touches the shards.


rule split_manifest:
    input:
        catalog=paths.catalog(),
        code=code("splits"),
    output:
        paths.split_manifest("{split}"),
    log:
        paths.log(paths.split_manifest("{split}")),
    benchmark:
        paths.benchmark(paths.split_manifest("{split}"))
    wildcard_constraints:
        split=r"[A-Za-z0-9_-]+",  # replicates ({split}.s{r}) share their split's manifest
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        spec=lambda w: json.dumps(config["splits"][w.split], sort_keys=True),
    shell:
        "transferable split manifest --name {wildcards.split:q} --params {params.spec:q} "
        "--catalog {input.catalog:q} --out {output:q} > {log:q} 2>&1"
