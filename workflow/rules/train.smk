# One job per net: base nets from scratch; transfer, selffer and fine-tuned nets from a base net's final
# weights; random-filter nets from their own random init. The checkpoint sits outside the outputs, so a
# killed or preempted job resumes when rerun.


rule train:
    input:
        manifest=paths.split_manifest("{split}"),
        shards=paths.shard_index(PREP),
        source=source_model,
        code=code("train"),
    output:
        model=paths.net_file("{split}", "{net}", "model.pt"),
        history=paths.net_file("{split}", "{net}", "history.csv"),
        metrics=paths.net_file("{split}", "{net}", "metrics.json"),
    params:
        cfg=train_params,
        ckpt=paths.checkpoint("{split}", "{net}"),
        source=lambda w, input: f"--source-model {input.source}" if input.source else "",
    conda:
        "../../envs/train.yaml"
    log:
        paths.log(paths.net_dir("{split}", "{net}")),
    threads: max(1, RES.get("train_threads", 1))
    resources:
        # device, threads and compile are not params: changing them must not rerun finished nets
        train_device=RES.get("device", "auto"),
        train_compile=int(RES.get("compile", False)),
        gpu=RES.get("train_gpus", 1),
        mem_mb=lambda w, attempt: RES.get("train_mem_mb", 4000) * attempt,  # a retry gets more
        runtime=lambda w, attempt: RES.get("train_runtime_min", 60) * attempt,
    shell:
        # exec: SIGTERM from SLURM reaches the trainer itself, which checkpoints before it exits
        "exec transferable train --split {wildcards.split} --net {wildcards.net} --manifest {input.manifest} "
        "--shards {input.shards} {params.source} --out-dir $(dirname {output.model}) --ckpt {params.ckpt} "
        "--device {resources.train_device} --threads {threads} --compile {resources.train_compile} "
        "--params '{params.cfg}' > {log} 2>&1"
