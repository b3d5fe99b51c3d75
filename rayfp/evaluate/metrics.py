"""The meta metrics of one target's pick (docs/evaluation.md §6): improvement, fraction
improved, regret, percentile and weighted Kendall τ. Used by the protocol and by the exact
random baseline alike."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import weightedtau


def regret_score(p: float, oracle: float) -> float:
    """1 - (o - p) / (1 - p), stored inverted (higher = better); o = 1 scores 0 for every p."""
    if oracle == 1.0 or p == 1.0:
        return 0.0
    return 1.0 - (oracle - p) / (1.0 - min(oracle, p))


def percentile_ranks(values: np.ndarray) -> np.ndarray:
    """pandas rank(method='average', pct=True): average 1-based rank / n."""
    return pd.Series(values).rank(method="average", pct=True).to_numpy()


def top_meta_scores(selected: np.ndarray, pool: np.ndarray, baseline: float, mode: str
                    ) -> dict[str, float]:
    """selected: outcomes of the top-k sources, in rank order; pool: outcomes of all valid
    sources. Returns delta, gain, regret, rank for the k-shot outcome."""
    oracle = float(np.nanmax(pool))
    ranks = pd.Series(pool).rank(method="average", pct=True)
    pool_index = {v: ranks[i] for i, v in enumerate(pool)}  # equal values share a rank
    if mode == "best":
        scored = np.array([np.max(selected)])
        rank = max(pool_index[v] for v in selected)
    else:
        scored = np.asarray(selected, dtype=float)
        rank = float(np.mean([pool_index[v] for v in selected]))
    return {
        "delta": float(np.mean(scored - baseline)),
        "gain": float(np.mean(scored > baseline)),
        "regret": float(np.mean([regret_score(float(p), oracle) for p in scored])),
        "rank": float(rank),
    }


def weighted_tau(affinities: np.ndarray, outcomes: np.ndarray) -> float:
    """scipy's weightedtau (hyperbolic, additive, rank=True) with NaN pairs dropped; NaN when
    either vector is constant."""
    keep = ~(np.isnan(affinities) | np.isnan(outcomes))
    x, y = affinities[keep], outcomes[keep]
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(weightedtau(x, y)[0])
