# Preprocessed shards, written once per preprocessing setting (the prep id encodes it) and shared by
# every split and net. Each part is a block of classes, so parts run as independent jobs.


PARTS = {d: shard_parts(d) for d in ["", *DATASETS]}


for _tree in TREES:

    rule:
        name:
            rule_name("shard_part", _tree)
        input:
            images=paths.images(_tree),
            code=code("shards"),
        output:
            directory(paths.shard_part("{prep}", "{k}", _tree)),
        log:
            paths.log(paths.shard_part("{prep}", "{k}", _tree)),
        benchmark:
            paths.benchmark(paths.shard_part("{prep}", "{k}", _tree))
        conda:
            "../../envs/data.yaml"
        threads: 1
        resources:
            mem_mb=lambda w, attempt: res("shard_mem_mb") * attempt,
            runtime=240,
        params:
            size=lambda w: paths.parse_prep(w.prep)["size"],
            resize=lambda w: paths.parse_prep(w.prep)["resize"],
            fmt=lambda w: paths.parse_prep(w.prep)["format"],
            quality=lambda w: paths.parse_prep(w.prep)["quality"],
            parts=parts_of,
            on_corrupt=lambda w: plan.setting(view(w), "data", "on_corrupt"),
            exif=plan.setting(config, "preprocess", "exif_orientation"),
        shell:
            "transferable shard --images {input.images:q} --part {wildcards.k:q} --parts {params.parts:q} "
            "--size {params.size:q} --resize {params.resize:q} --format {params.fmt:q} --quality {params.quality:q} "
            "--on-corrupt {params.on_corrupt:q} --exif {params.exif:q} --out {output:q} > {log:q} 2>&1"

    rule:
        name:
            rule_name("shard_index", _tree)
        input:
            parts=lambda w: [
                paths.shard_part(w.prep, k, getattr(w, "dataset", ""))
                for k in range(parts_of(w))
            ],
            code=code("shards"),
        output:
            index=paths.shard_index("{prep}", _tree),
            rejects=paths.shard_rejects("{prep}", _tree),
        log:
            paths.log(paths.shard_index("{prep}", _tree)),
        benchmark:
            paths.benchmark(paths.shard_index("{prep}", _tree))
        conda:
            "../../envs/data.yaml"
        threads: 1
        resources:
            mem_mb=500,
            runtime=10,
        params:
            size=lambda w: paths.parse_prep(w.prep)["size"],
        shell:
            "transferable shard-index --parts {input.parts:q} --size {params.size:q} --out {output.index:q} "
            "--rejects {output.rejects:q} > {log:q} 2>&1"

    inherit_site_settings(rule_name("shard_part", _tree), "shard_part")
    inherit_site_settings(rule_name("shard_index", _tree), "shard_index")
