"""What this job may use on its host: the memory available (whether a set of images is held in memory or
read from its memory maps) and its CPUs (SLURM's binding and cgroup cpusets included)."""

from __future__ import annotations

import os


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def job_cpus(env=None) -> int:
    """The CPUs this job may use: its CPU affinity (what SLURM's task binding and cgroup cpusets leave it),
    at most ``SLURM_CPUS_PER_TASK``."""
    env = os.environ if env is None else env
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    per_task = env.get("SLURM_CPUS_PER_TASK", "")
    return max(1, min(n, int(per_task)) if per_task.isdigit() else n)
