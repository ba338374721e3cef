"""Tables and figures from the run files, and the paper's published numbers (no torch here): tables.py (the
runs table, line means, Table 1), effects.py (claims, intervals, verdicts), plots.py (Figures 2 and 3),
cross.py (the cross experiment), paper.py (the published numbers), spec.py (which treatment each figure
shows). Nothing is imported here, so that the Snakefile reads spec.py without loading pandas."""
