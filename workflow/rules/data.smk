# Raw data: the generated demo dataset, or the user's copy; then the catalog and image index. Each rule is
# instantiated once per data-root tree (TREES, workflow/rules/common.smk).

for _tree in TREES:

    rule:
        name:
            rule_name("demo_data", _tree)
        input:
            code=code("demo"),
        output:
            paths.demo_files(_tree),
        log:
            paths.log(paths.demo_dir(_tree)),
        benchmark:
            paths.benchmark(paths.demo_dir(_tree))
        conda:
            "../../envs/data.yaml"
        threads: 1
        resources:
            mem_mb=1000,
            runtime=10,
        params:
            demo=lambda w: json.dumps(view(w).get("demo", {}), sort_keys=True),
            out=lambda w, output: os.path.dirname(output[0]),
        shell:
            "transferable demo-data --out {params.out:q} --params {params.demo:q} > {log:q} 2>&1"

    rule:
        name:
            rule_name("raw_identity", _tree)
        output:
            paths.raw_identity("{digest}", _tree),
        log:
            paths.log(paths.raw_identity("{digest}", _tree)),
        wildcard_constraints:
            digest="[0-9a-f]{64}",
        conda:
            "../../envs/data.yaml"
        threads: 1
        resources:
            mem_mb=1000,
            runtime=60,
        params:
            root=lambda w: data_root(getattr(w, "dataset", "")),
            fmt=lambda w: plan.setting(view(w), "data", "format"),
            cache=lambda w: paths.raw_cache(getattr(w, "dataset", "")),
        shell:
            "transferable raw-identity --root={params.root:q} --format {params.fmt:q} --cache {params.cache:q} "
            "--digest {wildcards.digest:q} --out {output:q} > {log:q} 2>&1"

    rule:
        name:
            rule_name("ingest", _tree)
        input:
            raw=ingest_inputs,
            code=code("ingest"),
        output:
            catalog=paths.catalog(_tree),
            images=paths.images(_tree),
        log:
            paths.log(paths.catalog(_tree)),
        benchmark:
            paths.benchmark(paths.catalog(_tree))
        conda:
            "../../envs/data.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=120,
        params:
            root=lambda w: data_root(getattr(w, "dataset", "")),
            fmt=lambda w: plan.setting(view(w), "data", "format"),
        shell:
            "transferable ingest --root={params.root:q} --format {params.fmt:q} "
            "--catalog {output.catalog:q} --images {output.images:q} > {log:q} 2>&1"

    inherit_site_settings(rule_name("demo_data", _tree), "demo_data")
    inherit_site_settings(rule_name("raw_identity", _tree), "raw_identity")
    inherit_site_settings(rule_name("ingest", _tree), "ingest")
