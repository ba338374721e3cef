"""``transferable <verb>``: the one command-line entry point; every Snakemake rule calls one verb.

Each verb also works by hand, without Snakemake (see ``transferable <verb> --help``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import __version__


def _log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def _json(s: str) -> dict:
    try:
        return json.loads(s)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--params is not valid JSON: {e}") from e


def cmd_demo_data(a):
    from .data import demo

    summary = demo.generate(a.out, **_json(a.params))
    _log(f"demo dataset in {a.out}: {json.dumps({k: v for k, v in summary.items() if k != 'families'})}")


def cmd_ingest(a):
    from . import atomic
    from .data.ilsvrc import ingest

    t = time.time()
    cat, images = ingest(a.root, a.format, log=_log)
    # tests only: a window after ingest read the data and before it writes (a change now is not in them)
    hold = os.environ.get("TRANSFERABLE_TEST_HOLD_INGEST")
    if hold:
        Path(hold + ".waiting").touch()
        while os.path.exists(hold):
            time.sleep(0.05)
    atomic.write_text(a.images, images.to_csv(index=False))
    atomic.write_text(a.catalog, cat.to_csv(index=False))
    _log(f"ingested {a.root}: {len(cat)} classes, {int((images.subset == 'train').sum())} train and "
         f"{int((images.subset == 'val').sum())} val images in {time.time() - t:.1f} s")


def cmd_raw_identity(a):
    from .data import rawfiles

    rawfiles.write_identity(a.root, a.out, a.digest, a.cache, a.format, log=_log)
    _log(f"{a.root}: {Path(a.out).read_text().strip()}")


def cmd_split_manifest(a):
    from . import atomic
    from .data.splits import make_manifest

    cat = atomic.read_csv(a.catalog, keep_default_na=False)
    man = make_manifest(a.name, _json(a.params), cat)
    atomic.write_text(a.out, json.dumps(man, indent=1))
    _log(f"split {a.name}: " + ", ".join(f"{h} {len(v['classes'])} classes" for h, v in man["halves"].items()))


def cmd_split_random(a):
    from .data.splits import random_halves

    half_a, half_b = random_halves(a.num_classes, a.seed)
    print(json.dumps(half_b if a.half == "B" else half_a))


def cmd_shard(a):
    import signal

    from .data.shards import write_part

    # SIGTERM (a time limit, scancel) unwinds like an error: the part's temporary folder is removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    r = write_part(a.images, a.part, a.parts, a.size, a.out, a.on_corrupt, log=_log, exif=a.exif, resize=a.resize,
                   fmt=a.format, quality=a.quality)
    _log(f"part {a.part}: {r['images']} images, {r['rejects']} rejected, {r['seconds']:.1f} s")


def cmd_shard_index(a):
    from .data.shards import write_index

    idx = write_index(a.parts, a.size, a.out, a.rejects)
    _log(f"shard index: {idx['num_classes']} classes")


def cmd_train(a):
    from .train import train_net

    train_net(split=a.split, net=a.net, manifest=a.manifest, shards_index=a.shards, out_dir=a.out_dir,
              ckpt=a.ckpt, cfg=_with_checkpoint(_json(a.params), a.checkpoint), source_model=a.source_model,
              device=a.device, threads=a.threads, compile_model=bool(a.compile), gpus=a.gpus, mem_mb=a.mem_mb,
              stage_dir=_stage_dir(a), log=_log)


def _stage_dir(a) -> str | None:
    """The rule's resources.stage_dir, else the site's $TRANSFERABLE_STAGE_DIR (a node's local scratch)."""
    return a.stage_dir or os.environ.get("TRANSFERABLE_STAGE_DIR") or None


def cmd_train_group(a):
    from .train.loop import train_nets

    nets = a.nets.split(",")
    sources = dict(kv.split("=", 1) for kv in a.sources.split(",")) if a.sources else {}
    train_nets(split=a.split, nets=nets, manifest=a.manifest, shards_index=a.shards,
               out_dirs={n: f"{a.out_root}/{n}" for n in nets}, ckpt=a.ckpt,
               cfg=_with_checkpoint(_json(a.params), a.checkpoint),
               source_models=sources, device=a.device, threads=a.threads, compile_model=bool(a.compile),
               gpus=a.gpus, mem_mb=a.mem_mb, stage_dir=_stage_dir(a), log=_log)


def cmd_runs(a):
    from .figures import tables

    df = tables.load_runs(a.metrics)
    tables.write_runs_csv(df, a.out)
    _log(f"{a.out}: {len(df)} nets")


def cmd_figure(a):
    from .figures import plots, tables

    df = tables.load_runs(a.metrics)
    units = a.units.split(",") if a.units else None
    eff = None
    if a.effects:  # the verdicts effects.csv holds (the same family and settings as effects.md)
        from . import atomic

        eff = atomic.read_csv(a.effects, keep_default_na=False, na_values=[""])
    if a.which == "fig2":
        plots.fig2(df, a.out, paper=a.paper, units=units, eff=eff)
    elif a.which == "fig3":
        plots.fig3(df, a.out, paper=a.paper, units=units)
    elif a.which == "claims":
        plots.claims_figure(df, a.out, eff=eff, units=units)
    _log(f"wrote {a.out}")


def cmd_html_table(a):
    from . import atomic
    from .figures import tables

    df = atomic.read_csv(a.csv, keep_default_na=False, na_values=[""])
    atomic.write_text(a.out, tables.html_table(df, a.title or Path(a.csv).name))
    _log(f"wrote {a.out} ({len(df)} rows)")


def cmd_similarity(a):
    import torch

    from . import atomic
    from .paths import base_split, parse_net_file
    from .similarity import analyse

    torch.set_num_threads(max(1, a.threads))
    models = {parse_net_file(path): path for path in a.models}
    manifests = {Path(m).stem: m for m in a.manifests}
    missing = sorted({base_split(r) for r, _ in models} - set(manifests))
    if missing:
        raise ValueError(f"similarity: no manifest given for split(s) {missing}")
    sim, probes = analyse(models, manifests, a.shards, _json(a.params), log=_log)
    atomic.write_csv(sim, a.out)
    atomic.write_csv(probes, a.probes)
    _log(f"wrote {a.out} ({len(sim)} rows) and {a.probes} ({len(probes)} rows)")


def cmd_similarity_figure(a):
    import pandas as pd

    from . import atomic
    from .figures import plots, tables

    runs = tables.load_runs(a.metrics)
    sim = atomic.read_csv(a.similarity)
    probes = atomic.read_csv(a.probes)
    by_layer = plots.similarity_figure(sim, probes, runs, a.out)
    atomic.write_csv(by_layer, a.table)
    _log(f"wrote {a.out} and {a.table}")


def cmd_import_source(a):
    from .sources import import_source

    mean = tuple(float(v) for v in a.mean.split(","))
    info = import_source(a.checkpoint, _json(a.net), a.size, a.out, mean_rgb=mean)
    _log(f"{a.checkpoint} -> {a.out}: {info}")


def cmd_cross_similarity(a):
    import torch

    from . import atomic
    from .similarity import cross_profile

    torch.set_num_threads(max(1, a.threads))
    source, target = a.names
    df = cross_profile(a.source, a.bases, a.manifest, a.half, a.shards, _json(a.params), log=_log)
    df.insert(0, "target", target)
    df.insert(0, "source", source)
    atomic.write_csv(df, a.out)
    _log(f"wrote {a.out} ({len(df)} rows)")


def cmd_cross_report(a):
    import pandas as pd

    from . import atomic, crossplan
    from .figures import cross, tables

    runs = tables.cross_runs(a.metrics)
    atomic.write_csv(runs, a.runs)
    sim = pd.concat([atomic.read_csv(f) for f in a.similarity]) if a.similarity else None
    v = {**{"alpha": cross.ALPHA, "margin": cross.MARGIN, "plateau_gain": cross.PLATEAU_GAIN}, **_json(a.verdicts)}
    eff = cross.cross_effects(runs, alpha=v["alpha"], margin=v["margin"], plateau_gain=v["plateau_gain"])
    summary = cross.cross_summary(eff)
    atomic.write_csv(eff, a.effects)
    atomic.write_csv(summary, a.summary)
    named = dict(kv.split("=", 1) for kv in a.source_metrics)
    src = pd.concat([tables.load_runs([p]).assign(source=n) for n, p in named.items()]) if named else None
    atomic.write_text(a.markdown, cross.cross_markdown(eff, summary, v["alpha"], src, v["plateau_gain"]))
    for line in cross.adequacy(eff, src, v["plateau_gain"]):
        _log(line)
    pairs = summary[["source", "target"]].itertuples(index=False)
    for source, target in pairs:
        cross.profile_figure(runs, eff, sim, source, target,
                             os.path.join(a.figures, f"{crossplan.pair_stem(source, target)}.pdf"))
    if len(summary) > 1:
        cross.grid_figure(runs, eff, os.path.join(a.figures, "grid.pdf"))
    for line in summary["answer"]:
        _log(line)


def _cross_parsers(sub) -> None:
    """The cross experiment's verbs (experiment.cross, docs/cross.md)."""
    s = sub.add_parser("import-source", help="map a checkpoint file (a torchvision state_dict, or a model.pt of this "
                                             "pipeline) onto the config's net: a cross source")
    s.add_argument("--checkpoint", required=True, help="the file (read with weights_only: no code runs)")
    s.add_argument("--net", required=True, help="JSON: the config's net section")
    s.add_argument("--size", type=int, required=True, help="preprocess.size: the side of the mean image")
    s.add_argument("--mean", default="123.675,116.28,103.53", help="the checkpoint's per-channel input mean, 0..255")
    s.add_argument("--out", required=True, help="output: results/sources/<name>/model.pt")
    s.set_defaults(func=cmd_import_source)

    s = sub.add_parser("cross-similarity", help="per-unit CKA (source vs the target's base nets) and linear probes "
                                                "of the source's features on the target")
    s.add_argument("--source", required=True, help="the source's model.pt")
    s.add_argument("--bases", nargs="+", required=True, help="the target's base nets (model.pt, one per replicate)")
    s.add_argument("--manifest", required=True, help="the target split's manifest")
    s.add_argument("--half", required=True, help="the target half")
    s.add_argument("--shards", required=True, help="the target dataset's shard index.json")
    s.add_argument("--params", required=True, help="JSON: the config's experiment.similarity section")
    s.add_argument("--names", nargs=2, required=True, metavar=("SOURCE", "TARGET"), help="the pair's names")
    s.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    s.add_argument("--out", required=True, help="output CSV")
    s.set_defaults(func=cmd_cross_similarity)

    s = sub.add_parser("cross-report", help="the cross experiment's runs, paired effects with verdicts, the deepest "
                                            "n without loss, and one profile figure per (source, target)")
    s.add_argument("--metrics", nargs="+", required=True,
                   help="metrics.json of every target net (results/datasets/<t>/{nets,transfer/<s>}/RUN/NET/)")
    s.add_argument("--similarity", nargs="*", default=[], help="the cross-similarity CSVs")
    s.add_argument("--source-metrics", nargs="*", default=[], metavar="NAME=PATH",
                   help="metrics.json of each source trained here (whether it was trained enough is reported)")
    s.add_argument("--verdicts", default="{}", help="JSON: the config's verdicts section (alpha, margin, plateau_gain)")
    s.add_argument("--runs", required=True, help="output: runs.csv")
    s.add_argument("--effects", required=True, help="output: effects.csv")
    s.add_argument("--summary", required=True, help="output: summary.csv")
    s.add_argument("--markdown", required=True, help="output: effects.md")
    s.add_argument("--figures", required=True, help="output folder of the profile figures")
    s.set_defaults(func=cmd_cross_report)


def cmd_curves(a):
    from .figures import plots

    plots.training_curves(a.metrics, a.out, title=a.title)
    _log(f"wrote {a.out}")


def cmd_table1(a):
    from . import atomic
    from .figures import effects, tables

    if a.authors_nets:  # the authors' own per-net results, shipped with the package
        df = tables.paper_runs()
    elif a.metrics:
        df = tables.load_runs(a.metrics)
    else:
        raise ValueError("table1: give --metrics FILES or --authors-nets")
    t1 = effects.table1_three_ways(df)
    if a.out:
        atomic.write_csv(t1, a.out)
    md = effects.table1_markdown(t1)
    if a.markdown:
        atomic.write_text(a.markdown, md)
    if not (a.out or a.markdown):
        print(md)
    _log(f"Table 1 of {len(df)} nets" + (f": wrote {a.out} {a.markdown or ''}" if a.out or a.markdown else ""))


def cmd_effects(a):
    from . import atomic
    from .figures import effects, tables

    df = tables.load_runs(a.metrics)
    opts = dict(margin=a.margin, alpha=a.alpha, plateau_gain=a.plateau_gain)
    eff = effects.effects_with_paper(df, units=len(a.units.split(",")) if a.units else 7, **opts)
    ad = effects.adequacy(df, eff, a.plateau_gain, a.margin, a.alpha)
    atomic.write_csv(eff, a.out)
    if a.markdown:
        atomic.write_text(a.markdown, effects.effects_markdown(eff, ad, a.alpha))
    _log(f"training adequacy: {'adequate' if ad.ok else 'NOT adequate: ' + ad.reason}")
    claims = eff[eff["scope"] == "claim"]
    for _, r in claims.iterrows():
        _log(f"{r['claim']:<38} n={r['layers']:<4} {r['verdict']:<13} {100 * r['estimate']:+.2f} pp "
             f"[{100 * r['ci_lo']:+.2f}, {100 * r['ci_hi']:+.2f}] ({r['units']} units, p adj. {r['p_adjusted']:.3g})")
    _log(f"wrote {a.out}")


def cmd_compare(a):
    from .figures import tables

    df = tables.load_runs(a.metrics)
    cmp = tables.paper_comparison(df)
    tables.write_paper_comparison(cmp, a.out)
    _log(f"wrote {a.out} ({len(cmp)} rows)")


def cmd_bench(a):
    from .tools import bench

    bench.run(a.which, a.workdir, small=a.small, device=a.device, shared_stream=a.shared_stream,
              compile_model=not a.no_compile)


def cmd_smoke(a):
    from .tools import smoke

    if not smoke.run(a.device, a.workdir):
        raise SystemExit(1)


def cmd_job_resources(a):
    from .tools.bench import job_resources

    for row in job_resources(a.benchmarks):
        print(json.dumps(row))


def cmd_describe_net(a):
    from .models.caffenet import CaffeNet, param_counts, spec_from_config

    net = {"arch": a.arch, "crop": a.crop or (227 if a.arch == "caffenet" else 32)}
    if a.widths:
        net["widths"] = [int(w) for w in a.widths.split(",")]
    print(json.dumps(param_counts(CaffeNet(spec_from_config(net, a.outputs)))))


class _Version(argparse.Action):
    """``--version``: asks git only when given (every rule runs this CLI)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from .provenance import code_version

        v = code_version()
        where = f"git {v['git'][:12]}{' with local changes' if v['dirty'] else ''}" if v["git"] else "not a git checkout"
        print(f"transferable {__version__} ({where}; from {v['package_dir']})")
        parser.exit()


def _training_options(s: argparse.ArgumentParser, ckpt_help: str) -> None:
    """The options `train` and `train-group` share: the run, its data, its checkpoint, where it runs."""
    s.add_argument("--split", required=True, help="run name: a split, or a replicate SPLIT.sR")
    s.add_argument("--manifest", required=True, help="the split's manifest JSON")
    s.add_argument("--shards", required=True, help="shard index.json")
    s.add_argument("--ckpt", required=True, help=ckpt_help)
    s.add_argument("--params", required=True, help="JSON with the net, train and metric config sections")
    s.add_argument("--device", default="auto",
                   help="auto (with --gpus 0: the CPU; with --gpus N >= 1: a GPU or an error saying why CUDA is "
                        "unusable; without --gpus: CUDA if usable, else the CPU), cpu, cuda, cuda:N")
    s.add_argument("--gpus", type=int, default=None,
                   help="GPUs granted to this job (the rules pass their resources.gpu)")
    s.add_argument("--mem-mb", type=int, default=None,
                   help="memory granted to this job, MB (the rules pass their resources.mem_mb): a bound on what "
                        "it loads into memory, beside the cgroup's and SLURM's limits")
    s.add_argument("--stage-dir", default="",
                   help="node-local folder to copy a half too large for the job's memory to, instead of reading "
                        "it from the shard folder every epoch (resources.stage_dir; empty: $TRANSFERABLE_STAGE_DIR "
                        "if set, else off)")
    s.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    s.add_argument("--compile", type=int, choices=[0, 1], default=0,
                   help="1: torch.compile each net (GPU: faster after warm-up)")
    s.add_argument("--checkpoint", default=None, metavar="EVERY:MINUTES",
                   help="train.checkpoint_every and train.checkpoint_minutes (they change no result, so the "
                        "rules pass them here and not in --params)")


def _with_checkpoint(cfg: dict, spec: str | None) -> dict:
    """--params with --checkpoint EVERY:MINUTES put into its train section."""
    if spec:
        try:
            every, minutes = spec.split(":")
            cfg["train"].update(checkpoint_every=int(every), checkpoint_minutes=float(minutes))
        except ValueError as e:
            raise SystemExit(f"--checkpoint: expected EVERY:MINUTES (e.g. 0:10), got {spec!r}") from e
    return cfg


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="transferable", description=__doc__.splitlines()[0])
    p.add_argument("--version", action=_Version, nargs=0, help="the package version and the git commit it runs from")
    sub = p.add_subparsers(dest="verb", required=True, help="one step of the pipeline (each rule runs one)")

    s = sub.add_parser("demo-data", help="generate the embedded demo dataset (official ILSVRC2012 files)")
    s.add_argument("--out", required=True, help="folder to write the three official-format files into")
    s.add_argument("--params", default="{}", help="JSON: the config's demo section")
    s.set_defaults(func=cmd_demo_data)

    s = sub.add_parser("ingest", help="index raw data: class catalog + image index")
    s.add_argument("--root", required=True,
                   help="data root: the official tars, an extracted tree, or an image-folder tree")
    s.add_argument("--format", default="auto", choices=["auto", "tars", "tree", "folder"],
                   help="layout of the root (auto: detected)")
    s.add_argument("--catalog", required=True, help="output: class catalog CSV")
    s.add_argument("--images", required=True, help="output: image index CSV")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("raw-identity", help="write the identity file of a tree/folder data root, named by the "
                                            "digest the plan computed, if its files still give that digest")
    s.add_argument("--root", required=True, help="data root: an extracted tree or an image-folder tree")
    s.add_argument("--format", default="auto", choices=["auto", "tree", "folder"],
                   help="layout of the root (auto: detected)")
    s.add_argument("--cache", required=True, help="the digest's stat cache (results/ingest/raw/.raw_files.cache.json)")
    s.add_argument("--digest", required=True, help="the digest the plan computed (the output's name)")
    s.add_argument("--out", required=True, help="output: results/ingest/raw/<digest>.sha256")
    s.set_defaults(func=cmd_raw_identity)

    s = sub.add_parser("split", help="class splits")
    ss = s.add_subparsers(dest="how", required=True, help="random: the authors' halves; manifest: one configured split")
    r = ss.add_parser("random", help="print half A (or B) of the authors' random split as a JSON list")
    r.add_argument("--num-classes", type=int, required=True, help="number of classes of the dataset")
    r.add_argument("--seed", type=int, required=True, help="the split's seed (the authors': 0, 1, ...)")
    r.add_argument("--half", choices=["A", "B"], default="A", help="which half to print")
    r.set_defaults(func=cmd_split_random)
    m = ss.add_parser("manifest", help="write the manifest of one configured split")
    m.add_argument("--name", required=True, help="the split's name in the config")
    m.add_argument("--params", required=True, help="JSON: the split's config entry")
    m.add_argument("--catalog", required=True, help="class catalog CSV (from ingest)")
    m.add_argument("--out", required=True, help="output: the manifest JSON")
    m.set_defaults(func=cmd_split_manifest)

    s = sub.add_parser("shard", help="write one part of the preprocessed shards")
    s.add_argument("--images", required=True, help="image index CSV (from ingest)")
    s.add_argument("--part", type=int, required=True, help="which part to write, 0-based")
    s.add_argument("--parts", type=int, required=True, help="number of parts (blocks of whole classes)")
    s.add_argument("--size", type=int, required=True, help="warp every image to SIZE x SIZE (paper: 256)")
    s.add_argument("--on-corrupt", choices=["error", "skip"], default="error",
                   help="an image that cannot be decoded stops the job (error) or is recorded in rejects.csv (skip)")
    s.add_argument("--exif", choices=["ignore", "apply"], default="ignore",
                   help="EXIF orientation: ignore it as the authors' ImageMagick convert does, or apply it")
    s.add_argument("--resize", choices=["fast", "bicubic", "imagemagick"], default="fast",
                   help="decode and filter (preprocess.resize): DCT-domain pre-shrink + bicubic, full decode + "
                        "bicubic, or full decode + ImageMagick's default filters (the authors')")
    s.add_argument("--format", choices=["raw", "jpeg"], default="raw",
                   help="store uint8 pixels (raw) or JPEG files decoded while training (jpeg)")
    s.add_argument("--quality", type=int, default=90, help="JPEG quality of --format jpeg, 1..100")
    s.add_argument("--out", required=True, help="output folder of the part (written atomically)")
    s.set_defaults(func=cmd_shard)

    s = sub.add_parser("shard-index", help="join shard parts into an index")
    s.add_argument("--parts", nargs="+", required=True, help="the part folders")
    s.add_argument("--size", type=int, required=True, help="the parts' image size")
    s.add_argument("--out", required=True, help="output: index.json")
    s.add_argument("--rejects", required=True, help="output: all parts' rejected images, CSV")
    s.set_defaults(func=cmd_shard_index)

    s = sub.add_parser("train", help="train one net (base, transfer, selffer, fine-tuned or random-filter)")
    s.add_argument("--net", required=True, help="baseT, SnT, SnT_ft or RnT, e.g. baseB, A3B, A3B_ft, R2A")
    s.add_argument("--source-model", default=None, help="model.pt of the base net whose layers are copied")
    s.add_argument("--out-dir", required=True, help="output folder: model.pt, history.csv, metrics.json")
    _training_options(s, "in-progress checkpoint (resumed if it was written for this very run)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("train-group", help="train several nets of one target half on one stream of batches")
    s.add_argument("--nets", required=True, help="comma-separated net names, all with the same target half")
    s.add_argument("--sources", default="", help="comma-separated NET=path/to/source/model.pt")
    s.add_argument("--out-root", required=True, help="each net writes to OUT_ROOT/NET/")
    _training_options(s, "the group's in-progress checkpoint")
    s.set_defaults(func=cmd_train_group)

    s = sub.add_parser("runs", help="collect metrics.json files into runs.csv")
    s.add_argument("--metrics", nargs="+", required=True, help="metrics.json files")
    s.add_argument("--out", required=True, help="output: runs.csv")
    s.set_defaults(func=cmd_runs)

    s = sub.add_parser("figure", help="draw Figure 2, Figure 3 or the claims figure (PDF and a PNG copy)")
    s.add_argument("which", choices=["fig2", "fig3", "claims"], help="fig2, fig3 or claims")
    s.add_argument("--metrics", nargs="+", required=True, help="metrics.json files of the nets to draw")
    s.add_argument("--out", required=True, help="output PDF (a PNG is written beside it)")
    s.add_argument("--paper", action=argparse.BooleanOptionalAction, default=False,
                   help="draw the paper's ImageNet means beside ours (meaningful on ImageNet only)")
    s.add_argument("--units", default=None, help="the net's unit names, comma-separated (default: CaffeNet's)")
    s.add_argument("--effects", default=None, help="effects.csv: its verdicts decide the readings of fig2 and "
                                                   "the claims figure (default: computed from --metrics)")
    s.set_defaults(func=cmd_figure)

    s = sub.add_parser("effects", help="every claim of the paper as a paired effect with a 95%% CI and a verdict")
    s.add_argument("--metrics", nargs="+", required=True, help="metrics.json files of every net")
    s.add_argument("--out", required=True, help="output: effects.csv")
    s.add_argument("--markdown", default=None, help="also write the verdicts as Markdown here")
    s.add_argument("--units", default=None, help="the net's unit names, comma-separated (default: CaffeNet's): "
                                                 "the claims' layer ranges at the same relative depth")
    s.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate of the verdicts (verdicts.alpha)")
    s.add_argument("--margin", type=float, default=0.01, help="equivalence margin, top-1 units (verdicts.margin)")
    s.add_argument("--plateau-gain", type=float, default=0.01,
                   help="largest median last-quarter top-1 gain of base nets at a plateau (verdicts.plateau_gain)")
    s.set_defaults(func=cmd_effects)

    s = sub.add_parser("html-table", help="a CSV table as an HTML page (the report shows HTML, not CSV)")
    s.add_argument("--csv", required=True, help="the table")
    s.add_argument("--out", required=True, help="output: the HTML page")
    s.add_argument("--title", default="", help="page title (default: the CSV's file name)")
    s.set_defaults(func=cmd_html_table)

    s = sub.add_parser("similarity", help="per-layer linear CKA between nets, and linear probes (CSV tables)")
    s.add_argument("--models", nargs="+", required=True, help="model.pt files (results/nets/RUN/NET/model.pt)")
    s.add_argument("--manifests", nargs="+", required=True, help="the manifests of their splits")
    s.add_argument("--shards", required=True, help="shard index.json")
    s.add_argument("--params", required=True, help="JSON: the config's experiment.similarity section")
    s.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    s.add_argument("--out", required=True, help="output: similarity.csv")
    s.add_argument("--probes", required=True, help="output: probes.csv")
    s.set_defaults(func=cmd_similarity)

    s = sub.add_parser("similarity-figure", help="CKA and probes by layer beside the AnB transfer loss")
    s.add_argument("--similarity", required=True, help="similarity.csv")
    s.add_argument("--probes", required=True, help="probes.csv")
    s.add_argument("--metrics", nargs="+", required=True, help="metrics.json of the random-split nets")
    s.add_argument("--out", required=True, help="output PDF (a PNG is written beside it)")
    s.add_argument("--table", required=True, help="output: the by-layer summary with the correlation, CSV")
    s.set_defaults(func=cmd_similarity_figure)

    _cross_parsers(sub)

    s = sub.add_parser("curves", help="training curves of a set of nets (PDF and a PNG copy)")
    s.add_argument("--metrics", nargs="+", required=True, help="metrics.json files (their history.csv is read)")
    s.add_argument("--out", required=True, help="output PDF (a PNG is written beside it)")
    s.add_argument("--title", default="", help="figure title")
    s.set_defaults(func=cmd_curves)

    s = sub.add_parser("table1", help="Table 1 three ways: pooled as the paper, paired, and on the authors' nets")
    s.add_argument("--metrics", nargs="+", default=None, help="metrics.json files of the random-split nets")
    s.add_argument("--authors-nets", action="store_true",
                   help="of the authors' own 112 random-split nets (parsed from their logs) instead of --metrics")
    s.add_argument("--out", default=None, help="CSV (default: print the Markdown)")
    s.add_argument("--markdown", default=None, help="also write Table 1 as Markdown here")
    s.set_defaults(func=cmd_table1)

    s = sub.add_parser("compare", help="our line means beside the paper's, per treatment and n")
    s.add_argument("--metrics", nargs="+", required=True, help="metrics.json files of every net")
    s.add_argument("--out", required=True, help="output: paper_comparison.csv")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("smoke", help="before a cluster campaign, on one node: kill + resume, GPU locks, the "
                                     "training step (minutes; JSON lines, exit 1 on a failure)")
    s.add_argument("--device", default="auto", help="auto (CUDA if visible), cpu")
    s.add_argument("--workdir", default=None, help="scratch folder (kept); default: a temp folder")
    s.set_defaults(func=cmd_smoke)

    s = sub.add_parser("bench", help="benchmarks against plain baselines (JSON lines)")
    s.add_argument("which", choices=["shards", "loader", "mmap", "step", "stream", "all", "dag", "gpu", "rawfiles", "ingest", "jpeg", "eval"],
                   help="which benchmark (all = the CPU ones: shards, loader, mmap, step, stream)")
    s.add_argument("--workdir", default=None, help="scratch folder, kept (default: a temp folder, removed at the end)")
    s.add_argument("--small", action="store_true", help="tiny sizes: seconds, for smoke tests")
    s.add_argument("--device", default=None, help="gpu benchmark: cuda (default) or cpu; jpeg benchmark: cuda adds nvJPEG's decode rate")
    s.add_argument("--shared-stream", action="store_true",
                   help="dag benchmark only: resources.shared_stream on, as the demo ships (default: one job per net)")
    s.add_argument("--no-compile", action="store_true", help="gpu benchmark only: skip the torch.compile run")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("job-resources", help="per rule: jobs, wall time and peak memory of a finished run")
    s.add_argument("--benchmarks", default="benchmarks", help="the run's benchmarks/ folder")
    s.set_defaults(func=cmd_job_resources)

    s = sub.add_parser("describe-net", help="per-layer parameter counts as JSON")
    s.add_argument("arch", choices=["caffenet", "caffenet-small"],
                   help="caffenet (the paper's) or caffenet-small (the demo's)")
    s.add_argument("--outputs", type=int, default=1000, help="fc8 width")
    s.add_argument("--crop", type=int, default=None,
                   help="input side (default: 227 for caffenet, 32 for caffenet-small)")
    s.add_argument("--widths", default=None, help="7 comma-separated widths (conv1..5, fc6, fc7)")
    s.set_defaults(func=cmd_describe_net)
    return p


# The thread pools of numpy's BLAS and OpenMP, as Snakemake sets them for a job's shell command: a verb run
# by hand with --threads N gets the same (an explicit setting wins). Unset, OpenBLAS starts one thread per
# core beside torch's, and the similarity job's probes ran 30 times slower on 2 cores.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        for var in THREAD_VARS:  # before numpy is imported: the commands import it
            os.environ.setdefault(var, str(args.threads))
    try:
        args.func(args)
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        print(f"transferable {args.verb}: error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
