# Preprocessed shards, written once per preprocessing setting (the prep id encodes it) and shared by
# every split and net. Each part is a block of classes, so parts run as independent jobs.

PARTS = plan.shard_parts(config, known_num_classes())
if PARTS < plan.setting(config, "preprocess", "parts") and workflow.is_main_process:
    print(
        f"config: preprocess.parts {config['preprocess']['parts']} is more than the {PARTS} classes of the "
        f"data: using {PARTS} shard jobs",
        file=sys.stderr,
    )


rule shard_part:
    input:
        images=paths.images(),
        code=code("shards"),
    output:
        directory(paths.shard_part("{prep}", "{k}")),
    log:
        paths.log(paths.shard_part("{prep}", "{k}")),
    benchmark:
        paths.benchmark(paths.shard_part("{prep}", "{k}"))
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
        parts=PARTS,
        on_corrupt=plan.setting(config, "data", "on_corrupt"),
        exif=plan.setting(config, "preprocess", "exif_orientation"),
    shell:
        "transferable shard --images {input.images:q} --part {wildcards.k:q} --parts {params.parts:q} "
        "--size {params.size:q} --resize {params.resize:q} --format {params.fmt:q} --quality {params.quality:q} "
        "--on-corrupt {params.on_corrupt:q} --exif {params.exif:q} --out {output:q} > {log:q} 2>&1"


rule shard_index:
    input:
        parts=lambda w: [paths.shard_part(w.prep, k) for k in range(PARTS)],
        code=code("shards"),
    output:
        index=paths.shard_index("{prep}"),
        rejects=f"{paths.RESULTS}/shards/{{prep}}/rejects.csv",
    log:
        paths.log(paths.shard_index("{prep}")),
    benchmark:
        paths.benchmark(paths.shard_index("{prep}"))
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
