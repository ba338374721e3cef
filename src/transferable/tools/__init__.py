"""Operator tools, outside the pipeline's stages: no rule's job imports them, so they never count among a
stage's code (provenance) and editing them reruns nothing.

    bench.py   ``transferable bench ...``: each benchmark beside a plain baseline; ``job-resources``
    smoke.py   ``transferable smoke``: before a cluster campaign, kill + resume, GPU locks, feeding, the step
"""
