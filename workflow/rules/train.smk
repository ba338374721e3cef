# One job per net: base nets from scratch; transfer, selffer and fine-tuned nets from a base net's final
# weights; random-filter nets from their own random init. The checkpoint sits outside the outputs, so a
# killed or preempted job resumes when rerun.


from types import SimpleNamespace

SHARED_STREAM = res("shared_stream")


# The training trees: the config's own nets, and with experiment.cross the nets copying from a cross source
# ({source}) and, with datasets, those of further data roots ({dataset}).
_SOURCES = ["{source}"] if crossplan.sources(config) else []
TRAIN_TREES = [(d, v) for d in TREES for v in ["", *_SOURCES]]


for _tree, _via in TRAIN_TREES:

    rule:
        name:
            train_rule_name(_tree, _via)
        input:
            manifest=manifest_of,
            shards=paths.shard_index(PREP, _tree),
            source=source_model,
            code=code("train"),
        output:
            model=paths.net_file("{split}", "{net}", "model.pt", _tree, _via),
            history=paths.net_file("{split}", "{net}", "history.csv", _tree, _via),
            metrics=paths.net_file("{split}", "{net}", "metrics.json", _tree, _via),
        log:
            paths.log(paths.net_dir("{split}", "{net}", _tree, _via)),
        benchmark:
            paths.benchmark(paths.net_dir("{split}", "{net}", _tree, _via))
        wildcard_constraints:
            # with resources.shared_stream, only base nets train alone (the others: rules train_together_*)
            net=(paths.BASE_NET_WILDCARD if SHARED_STREAM else paths.NET_WILDCARD),
        # with resources.shared_stream this rule trains only base nets: they unblock whole groups, so first
        priority: 100 if SHARED_STREAM else 0
        conda:
            "../../envs/train.yaml"
        threads: max(1, res("train_threads"))
        resources:
            # device, threads and compile are not params: changing them must not rerun finished nets
            train_device=train_device(),
            train_compile=int(res("compile")),
            train_checkpoint=train_checkpoint(),
            train_stage_dir=res("stage_dir"),
            gpu=res("train_gpus"),
            # a retry resumes from the checkpoint: the same time; more memory only after an out-of-memory end
            mem_mb=lambda w, attempt: attempts.retry_mem_mb(
                res("train_mem_mb"), attempt, wanted_checkpoint(w)
            ),
            runtime=res("train_runtime_min"),
        params:
            cfg=train_params,
            ckpt=wanted_checkpoint,
            out_dir=lambda w, output: os.path.dirname(output.model),
            source_flag=lambda w, input: "--source-model" if input.source else "",
        shell:
            # exec: SIGTERM from SLURM reaches the trainer itself, which checkpoints before it exits
            "exec transferable train --split={wildcards.split:q} --net {wildcards.net:q} --manifest {input.manifest:q} "
            "--shards {input.shards:q} {params.source_flag} {input.source:q} --out-dir {params.out_dir:q} "
            "--ckpt {params.ckpt:q} --device {resources.train_device:q} --gpus {resources.gpu} "
            "--mem-mb {resources.mem_mb} --stage-dir={resources.train_stage_dir:q} --threads {threads} "
            "--compile {resources.train_compile:q} --checkpoint {resources.train_checkpoint:q} "
            "--params {params.cfg:q} > {log:q} 2>&1"

    train_site_settings(train_rule_name(_tree, _via))


# resources.shared_stream: the non-base nets of each (split, target half) train in ONE job that reads
# and augments every batch once and shares frozen forward passes (identical results without dropout in
# the frozen layers; see docs/performance.md). The same for a further dataset's nets and for the nets
# copying from one cross source: one group per folder (dataset, source, run) and target half.
for _dataset, _via, _split, _target, _nets in stream_groups() if SHARED_STREAM else []:
    _members = [plan.Net(_split, n, _dataset, _via) for n in _nets]
    _src = {
        n.name: src
        for n in _members
        for src in source_model(
            SimpleNamespace(split=_split, net=n.name, dataset=_dataset, source=_via)
        )
    }
    _ckpt = paths.checkpoint(_split, f"together_{_target}", _dataset, _via)

    rule:
        name:
            crossplan.group_rule_name(_dataset, _via, _split, _target)
        input:
            manifest=paths.split_manifest(paths.base_split(_split), _dataset),
            shards=paths.shard_index(PREP, _dataset),
            source=sorted(set(_src.values())),
            code=code("train"),
        output:
            [
                n.file(f)
                for n in _members
                for f in ("model.pt", "history.csv", "metrics.json")
            ],
        log:
            paths.log(paths.net_dir(_split, f"together_{_target}", _dataset, _via)),
        benchmark:
            paths.benchmark(
                paths.net_dir(_split, f"together_{_target}", _dataset, _via)
            )
        # the longest groups first, so that short ones fill the cores at the end
        priority: len(_nets)
        conda:
            "../../envs/train.yaml"
        threads: max(1, res("train_threads"))
        resources:
            train_device=train_device(),
            train_compile=int(res("compile")),
            train_checkpoint=train_checkpoint(),
            train_stage_dir=res("stage_dir"),
            gpu=res("train_gpus"),
            mem_mb=lambda w, attempt, ckpt=_ckpt: attempts.retry_mem_mb(
                res("train_mem_mb"), attempt, ckpt
            ),
            runtime=res("train_runtime_min") * len(_nets),
        params:
            cfg=train_params_of(_split, _dataset),
            nets=",".join(_nets),
            sources=",".join(f"{n}={p}" for n, p in sorted(_src.items())),
            ckpt=_ckpt,
            split=_split,
            out_root=lambda w, output: os.path.dirname(os.path.dirname(output[0])),
        shell:
            "exec transferable train-group --split={params.split:q} --nets {params.nets:q} "
            "--manifest {input.manifest:q} --shards {input.shards:q} --sources={params.sources:q} "
            "--out-root {params.out_root:q} --ckpt {params.ckpt:q} --device {resources.train_device:q} "
            "--gpus {resources.gpu} --mem-mb {resources.mem_mb} --stage-dir={resources.train_stage_dir:q} "
            "--threads {threads} "
            "--compile {resources.train_compile:q} "
            "--checkpoint {resources.train_checkpoint:q} --params {params.cfg:q} > {log:q} 2>&1"

    train_site_settings(crossplan.group_rule_name(_dataset, _via, _split, _target))
