# Class-split manifests. They depend on the catalog only: changing a split never touches the shards.

for _tree in TREES:

    rule:
        name:
            rule_name("split_manifest", _tree)
        input:
            catalog=paths.catalog(_tree),
            code=code("splits"),
        output:
            paths.split_manifest("{split}", _tree),
        log:
            paths.log(paths.split_manifest("{split}", _tree)),
        benchmark:
            paths.benchmark(paths.split_manifest("{split}", _tree))
        wildcard_constraints:
            split=r"[A-Za-z0-9_-]+",  # replicates ({split}.s{r}) share their split's manifest
        conda:
            "../../envs/data.yaml"
        threads: 1
        resources:
            mem_mb=500,
            runtime=5,
        params:
            spec=lambda w: json.dumps(view(w)["splits"][w.split], sort_keys=True),
        shell:
            "transferable split manifest --name {wildcards.split:q} --params {params.spec:q} "
            "--catalog {input.catalog:q} --out {output:q} > {log:q} 2>&1"

    inherit_site_settings(rule_name("split_manifest", _tree), "split_manifest")
