"""Scoring task selectors against measured transfer outcomes, exactly as the paper does
(docs/evaluation.md). Pure pandas/numpy; no Ray, no torch.

The names below load their module on first use (PEP 562), so `rayfp.evaluate.names` and the CLI
parser stay free of pandas and scipy."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PAPER_SELECTORS": "rayfp.evaluate.names", "SCENARIOS": "rayfp.evaluate.names",
    "PaperData": "rayfp.evaluate.data", "read_selector_matrix": "rayfp.evaluate.data",
    "EvalConfig": "rayfp.evaluate.protocol", "Protocol": "rayfp.evaluate.protocol",
    "evaluate": "rayfp.evaluate.protocol", "aggregate": "rayfp.evaluate.report",
    "format_tables": "rayfp.evaluate.report", "win_rates": "rayfp.evaluate.report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rayfp.evaluate' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
