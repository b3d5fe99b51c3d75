"""The random selector, scored exactly: the expected meta metric when the k sources are a
uniformly random k-subset of the target's valid sources.

Every top-k meta metric is a function of one outcome (mode "best": of the best of the k; mode
"avg": averaged over the k), so its expectation has a closed form:
- "avg": the mean of the function over all valid sources (linearity);
- "best": the maximum of a random k-subset of n values is the i-th smallest (1-based, ties
  broken by position, which does not change the value) with probability C(i-1, k-1) / C(n, k).
weightedtau against random affinities has no closed form; it is a Monte Carlo mean with its
standard error."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import comb

from rayfp.evaluate.metrics import regret_score, weighted_tau

RANDOM_SELECTOR = "random"


def best_of_k_weights(n: int, k: int) -> np.ndarray:
    """P(the maximum of a uniform k-subset of n sorted values is the i-th), i = 1..n."""
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    i = np.arange(1, n + 1)
    return comb(i - 1, k - 1, exact=False) / comb(n, k, exact=False)


def per_outcome_scores(pool: np.ndarray, baseline: float) -> dict[str, np.ndarray]:
    """Each top meta metric as a function of a single outcome (protocol.top_meta_scores with
    one selected source), evaluated at every value of the pool."""
    oracle = float(np.nanmax(pool))
    return {
        "delta": pool - baseline,
        "gain": (pool > baseline).astype(float),
        "regret": np.array([regret_score(float(p), oracle) for p in pool]),
        "rank": pd.Series(pool).rank(method="average", pct=True).to_numpy(),
    }


def expected_top_scores(pool: np.ndarray, baseline: float, k: int, mode: str
                        ) -> dict[str, float]:
    """E[top_meta_scores(random k-subset of pool)] exactly, for mode 'best' or 'avg'."""
    pool = np.asarray(pool, dtype=float)
    values = per_outcome_scores(pool, baseline)
    if mode != "best":  # "avg": the mean over the k chosen
        return {m: float(np.mean(v)) for m, v in values.items()}
    order = np.argsort(pool, kind="stable")
    weights = best_of_k_weights(len(pool), min(k, len(pool)))
    return {m: float(weights @ v[order]) for m, v in values.items()}


def expected_weighted_tau(pool: np.ndarray, draws: int, rng: np.random.Generator
                          ) -> tuple[float, float]:
    """Monte Carlo mean and standard error of weightedtau(uniform random affinities, pool)."""
    taus = np.array([weighted_tau(rng.random(len(pool)), pool) for _ in range(draws)])
    taus = taus[np.isfinite(taus)]
    if len(taus) == 0:
        return float("nan"), float("nan")
    se = float(np.std(taus, ddof=1) / np.sqrt(len(taus))) if len(taus) > 1 else float("nan")
    return float(np.mean(taus)), se
