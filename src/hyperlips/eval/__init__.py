"""Evaluation and benchmarks: sync scores (LSE-C/LSE-D with the public SyncNet, our expert's confidence), image,
colour and stability metrics against the original video, Markdown/JSON reports, and ``hyperlips bench``.

Entry points: :func:`evaluate_pair` (one clip), :func:`run_protocol` (self-reconstruction / cross-audio over a
folder), :func:`write_clip_report` / :func:`write_batch_report`, :func:`run_bench`. See docs/evaluation.md.
"""

from .bench import run_bench
from .pair import ClipResult, evaluate_pair
from .protocols import pair_folders, run_protocol
from .report import write_batch_report, write_clip_report
from .sync_score import SyncResult, expert_score, lse_score

__all__ = [
    "ClipResult",
    "SyncResult",
    "evaluate_pair",
    "expert_score",
    "lse_score",
    "pair_folders",
    "run_bench",
    "run_protocol",
    "write_batch_report",
    "write_clip_report",
]
