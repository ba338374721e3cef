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


# options of the run's own command line that say WHERE and HOW its jobs run: kept in an advised command,
# so that a command printed by a job of a SLURM run submits to SLURM, not to the login node
KEPT_OPTIONS = ("--profile", "--workflow-profile", "--executor", "-e", "--software-deployment-method", "--sdm",
                "--directory", "-d", "--cores", "-c", "--jobs", "-j")
KEPT_FLAGS = ("--use-conda", "--use-apptainer", "--use-singularity")


def kept_flags(argv: list[str]) -> list[str]:
    """The options of a Snakemake command line (``argv`` without the program) in ``KEPT_OPTIONS`` and
    ``KEPT_FLAGS``, with their values."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        name = a.split("=", 1)[0]
        if a in KEPT_FLAGS:
            out.append(a)
        elif name in KEPT_OPTIONS:
            out.append(a)
            if "=" not in a and i + 1 < len(argv):
                out.append(argv[i + 1])
                i += 1
        i += 1
    return out


def run_invocation(configfiles, overrides: dict | None, flags: list[str] | None = None) -> str:
    """``snakemake`` with the run's own placement options (``flags``: profile, executor, cores...; without
    any, ``--cores all``), config files and ``--config`` values, shell-quoted."""
    flags = list(flags or [])
    places = {f.split("=", 1)[0] for f in flags} & {"--profile", "--executor", "-e", "--cores", "-c", "--jobs", "-j"}
    args = ["snakemake", *(flags if places else ["--cores", "all", *flags])]
    for f in configfiles or ():
        args += ["--configfile", str(f)]
    if overrides:
        args.append("--config")
        for key, value in overrides.items():
            text = "" if value is None else json.dumps(value) if isinstance(value, (dict, list)) else str(value)
            args.append(f"{key}={text}")
    return shlex.join(args)


def snakemake_command(*args: str) -> str:
    """The command to advise: this run's invocation (or the placeholder) followed by ``args``."""
    return " ".join([os.environ.get(ENV) or PLACEHOLDER, *(shlex.quote(str(a)) for a in args)])
