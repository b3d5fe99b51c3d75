"""The evaluation's names and choices (docs/evaluation.md), importable without pandas or scipy so that
`rayfp --help` stays fast."""

from __future__ import annotations

SCENARIOS = ("arch", "pretrain", "augmentation", "multi_task")  # the paper's order
SCENARIO_NAMES = {"arch": "Model Architecture", "pretrain": "Pretraining Data",
                  "augmentation": "Augmentation Policy", "multi_task": "Co-Training Data"}
OUTCOME_METRICS = ("BA", "AUROC")
SETTINGS = ("development", "validation")
# Printable name -> cache file stem (docs/evaluation.md §1).
PAPER_SELECTORS = {
    "bKLD (small)": "KLD-PP:NS-W:TS-100-BINS",
    "bKLD (large)": "KLD-PP:NS-1000-BINS",
    "Manual": "SEMANTIC",
    "FID": "FID",
    "VDNA": "VDNA-PP:NN-1000-BINS",
    "FED": "FED",
    "P2L": "KLD-PP:NN",
    "Sinkhorn": "MMD-geo-sinkhorn-0.01",
}
# "pandas2": parse numbers like the notebooks did (bit-exact ties, docs/evaluation.md §10);
# "exact": correctly rounded (pandas >= 3); they differ by 1 ulp in ~20 % of the cells.
FLOAT_PARSERS = ("pandas2", "exact")
MODES = ("best", "avg")
SEED_STRATEGIES = ("per-seed", "mean")
TOP_META_METRICS = ("delta", "gain", "regret", "rank")
META_METRICS = (*TOP_META_METRICS, "weightedtau")
