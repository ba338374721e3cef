# transferable: Yosinski et al. (2014), "How transferable are features in deep neural networks?"
#
#   raw data --ingest--> catalog + image index --shard--> preprocessed shards (shared by every split)
#                                 \--split--> class-split manifests
#   manifests + shards --train--> base nets --train--> transfer / selffer / fine-tuned nets
#   every net's metrics.json --> runs.csv, Figure 2, Figure 3, Table 1
#
# Path grammar (implemented in src/transferable/paths.py; logs/ mirrors results/):
#   results/demo_data/ILSVRC2012_*           generated demo dataset (official on-disk format)
#   results/ingest/{catalog,images}.csv
#   results/splits/{split}.json
#   results/shards/warp{size}/part{k}/, index.json, rejects.csv
#   results/nets/{split}/{net}/{model.pt,history.csv,metrics.json}
#   results/ckpt/{split}/{net}/last.pt       in-progress checkpoint, kept when a job fails
#   results/tables/{runs,table1,paper_comparison}.csv, results/figures/fig{2,3}.{pdf,png}

# config.yaml is the demo; `--configfile configs/X.yaml` REPLACES it (no silent merging of two designs).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"



include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/splits.smk"
include: "workflow/rules/shards.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        final_targets(),
    default_target: True
