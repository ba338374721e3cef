"""The Snakemake commands that messages advise, with the run's own configuration.

A command printed as "rebuild it with: snakemake --force <file>" and run as printed on a run made with
``--configfile configs/paper.yaml`` would plan the default configuration instead: generate the demo data,
rewrite the catalog, the split manifests, the shards and the forced net with the demo's. So the workflow
hands every job the ``snakemake`` invocation of its own run, ``--configfile``/``--config`` included
(``$TRANSFERABLE_RERUN``, set in the shell prefix of every job by workflow/rules/common.smk), and every
advised command starts with it. A command run outside the pipeline (no such variable) advises a command
with a placeholder that the shell refuses, never one that silently runs another configuration.
"""

from __future__ import annotations

import json
import os
import shlex

ENV = "TRANSFERABLE_RERUN"
PLACEHOLDER = "snakemake --cores all <the run's --configfile/--config>"


def run_invocation(configfiles, overrides: dict | None) -> str:
    """``snakemake --cores all`` with the run's config files and ``--config`` values, shell-quoted."""
    args = ["snakemake", "--cores", "all"]
    for f in configfiles or ():
        args += ["--configfile", str(f)]
    if overrides:
        args.append("--config")
        for key, value in overrides.items():
            text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
            args.append(f"{key}={text}")
    return shlex.join(args)


def snakemake_command(*args: str) -> str:
    """The command to advise: this run's invocation (or the placeholder) followed by ``args``."""
    return " ".join([os.environ.get(ENV) or PLACEHOLDER, *(shlex.quote(str(a)) for a in args)])
