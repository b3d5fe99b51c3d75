"""Scoring task selectors against measured transfer outcomes, exactly as the paper does
(../shared/paper-data/PROTOCOL.md). Pure pandas/numpy; no Ray, no torch."""

from rayfp.evaluate.data import PAPER_SELECTORS, SCENARIOS, PaperData, read_selector_matrix
from rayfp.evaluate.protocol import EvalConfig, Protocol, evaluate
from rayfp.evaluate.report import aggregate, format_tables, win_rates

__all__ = ["PAPER_SELECTORS", "SCENARIOS", "EvalConfig", "PaperData", "Protocol", "aggregate",
           "evaluate", "format_tables", "read_selector_matrix", "win_rates"]
