# Preprocessed shards, written once per preprocessing setting (the prep id encodes it) and shared by
# every split and net. Each part is a block of classes, so parts run as independent jobs.

PARTS = config["preprocess"].get("parts", 2)


rule shard_part:
    input:
        images=paths.images(),
        code=code("shards"),
    output:
        directory(paths.shard_part("{prep}", "{k}")),
    params:
        size=lambda w: int(w.prep[len("warp") :]),
        parts=PARTS,
        on_corrupt=config["data"].get("on_corrupt", "error"),
    conda:
        "../../envs/data.yaml"
    log:
        paths.log(paths.shard_part("{prep}", "{k}")),
    threads: 1
    resources:
        mem_mb=lambda w, attempt: RES.get("shard_mem_mb", 2000) * attempt,
        runtime=240,
    shell:
        "transferable shard --images {input.images:q} --part {wildcards.k:q} --parts {params.parts:q} "
        "--size {params.size:q} --on-corrupt {params.on_corrupt:q} --out {output:q} > {log:q} 2>&1"


rule shard_index:
    input:
        parts=lambda w: [paths.shard_part(w.prep, k) for k in range(PARTS)],
        code=code("shards"),
    output:
        index=paths.shard_index("{prep}"),
        rejects=f"{paths.RESULTS}/shards/{{prep}}/rejects.csv",
    params:
        size=lambda w: int(w.prep[len("warp") :]),
    conda:
        "../../envs/data.yaml"
    log:
        paths.log(paths.shard_index("{prep}")),
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    shell:
        "transferable shard-index --parts {input.parts:q} --size {params.size:q} --out {output.index:q} "
        "--rejects {output.rejects:q} > {log:q} 2>&1"
