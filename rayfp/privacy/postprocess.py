"""Post-processing of noisy counts (free under differential privacy): coarser release bins and
back, and the nearest non-negative integer counts with a given sum in every dimension."""

from __future__ import annotations

import numpy as np

from rayfp.errors import ConfigError


def coarsen(counts: np.ndarray, bins: int) -> np.ndarray:
    """Sum groups of adjacent bins: (D, B) -> (D, bins); ``bins`` must divide B."""
    d, b = counts.shape
    if b % bins:
        raise ConfigError(f"{bins} release bins must divide the {b} bins of the space")
    return counts.reshape(d, bins, b // bins).sum(axis=2)


def spread(counts: np.ndarray, bins: int) -> np.ndarray:
    """Integer counts over coarse bins spread evenly over ``bins`` fine ones, keeping every
    coarse bin's total exactly: (D, K) int -> (D, bins) int64."""
    d, k = counts.shape
    group = bins // k
    counts = np.asarray(counts, np.int64)
    fine = np.repeat(counts // group, group, axis=1).reshape(d, k, group)
    remainder = (counts % group)[:, :, None]
    fine += np.arange(group)[None, None, :] < remainder
    return fine.reshape(d, bins)


def project_to_simplex(values: np.ndarray, total: float) -> np.ndarray:
    """Euclidean projection of every row onto {x >= 0, sum x = total} (sort-based, exact).

    values: (D, K) float -> (D, K) float64."""
    values = np.asarray(values, np.float64)
    d, k = values.shape
    ordered = -np.sort(-values, axis=1)
    excess = np.cumsum(ordered, axis=1) - total
    positions = np.arange(1, k + 1)
    support = ordered - excess / positions > 0
    last = k - 1 - np.argmax(support[:, ::-1], axis=1)  # the last index still in the support
    theta = excess[np.arange(d), last] / (last + 1)
    return np.maximum(values - theta[:, None], 0.0)


def round_keeping_sum(values: np.ndarray, total: int) -> np.ndarray:
    """Non-negative reals whose rows sum to ``total`` -> integers with the same row sums:
    floors, then one more for the largest remainders (ties to the lower bin)."""
    floors = np.floor(values).astype(np.int64)
    missing = total - floors.sum(axis=1)
    remainders = values - floors
    order = np.argsort(-remainders, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(values.shape[1])[None, :].repeat(len(values), 0),
                      axis=1)
    return floors + (rank < missing[:, None])


def project_to_counts(noisy: np.ndarray, total: int) -> np.ndarray:
    """The nearest (in L2, then rounded) non-negative integer counts summing to ``total`` in
    every row: (D, K) float -> (D, K) int64."""
    return round_keeping_sum(project_to_simplex(noisy, float(total)), int(total))
