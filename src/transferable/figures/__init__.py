"""Tables and figures from the run files, and the paper's published numbers (no torch here)."""

from .paper import PAPER_TABLE1, load_paper_networks, paper_line_means
from .tables import (
    RUN_COLUMNS,
    line_means,
    load_history,
    load_runs,
    natman_means,
    paper_comparison,
    paper_runs,
    random_filter_means,
    read_runs_csv,
    relative_top1,
    table1,
    write_paper_comparison,
    write_runs_csv,
)

__all__ = [
    "PAPER_TABLE1", "RUN_COLUMNS", "line_means", "load_history", "load_paper_networks", "load_runs",
    "natman_means", "paper_comparison", "paper_line_means", "paper_runs", "random_filter_means",
    "read_runs_csv", "relative_top1", "table1", "write_paper_comparison",
    "write_runs_csv",
]
