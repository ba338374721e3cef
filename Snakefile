# transferable: Yosinski et al. (2014), "How transferable are features in deep neural networks?"
#
#   raw data --ingest--> catalog + image index --shard--> preprocessed shards (shared by every split)
#                                 \--split--> class-split manifests
#   manifests + shards --train--> base nets --train--> transfer / selffer / fine-tuned nets
#   every net's metrics.json --> runs.csv, Figure 2, Figure 3, Table 1
#
# Every path the rules read or write (results/, logs/, benchmarks/) and the net-name grammar are defined
# once, in src/transferable/paths.py (its docstring lists the layout).

# The workflow runs the code of THIS checkout, whichever Snakemake runs it and whatever is installed: its
# src/ comes first on the import path here and in every job (PYTHONPATH, workflow/rules/common.smk).
import os
import sys

from snakemake.utils import min_version

min_version("9.0")

sys.path.insert(0, os.path.join(workflow.basedir, "src"))

# config.yaml is the demo; `--configfile configs/X.yaml` REPLACES it (no silent merging of two designs).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/splits.smk"
include: "workflow/rules/shards.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/similarity.smk"
include: "workflow/rules/cross.smk"


check_report_has_a_run()


rule all:
    default_target: True
    input:
        final_targets(),
