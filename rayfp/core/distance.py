"""Task distances: bKLD exactly as the paper computes it, its fast linear form, and baselines.

Everything is float64. Direction is (target, source): ``bkld(target, source)`` = KL(target || source)
as in docs/design.md §1.4; lower means more similar.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from scipy.special import logsumexp, softmax

from rayfp import defaults
from rayfp.core.fingerprint import Fingerprint, check_same_space, common_space
from rayfp.errors import ConfigError, SpaceMismatchError
from rayfp.registry import Registry, look_up

# --- bKLD ---------------------------------------------------------------------------------------

TARGET_SOFTMAX = "target-softmax"  # bKLD(small): w = softmax_d(mean_t)
UNIFORM = "uniform"  # bKLD(large): w = 1


def dimension_weights(target: Fingerprint, weighting: str) -> np.ndarray:
    """(D,) float64 weights of the per-dimension KLs."""
    if look_up("bKLD weighting", weighting, (TARGET_SOFTMAX, UNIFORM)) == TARGET_SOFTMAX:
        return softmax(target.mean)
    return np.ones(target.dim, dtype=np.float64)


def source_log_q(probabilities: np.ndarray) -> np.ndarray:
    """log softmax over bins of the source's probabilities (not counts): (..., B) -> (..., B)."""
    return probabilities - logsumexp(probabilities, axis=-1, keepdims=True)


def plogp_rows(p: np.ndarray) -> np.ndarray:
    """Σ_b p log p per row, with 0 log 0 = 0: (..., B) -> (...)."""
    safe = np.where(p > 0, p, 1.0)
    return (p * np.log(safe)).sum(axis=-1)


_XLOGX = np.zeros(1)
_XLOGX_LIMIT = 1 << 16  # counts of 64k and more: c log c directly (a 512 KiB table at most)


def xlogx_table(top: int) -> np.ndarray:
    """c log c for c = 0, 1, ... up to at least ``top`` (0 log 0 = 0), grown as needed and
    capped at _XLOGX_LIMIT entries: larger counts need their own logs."""
    global _XLOGX
    if top >= len(_XLOGX) and len(_XLOGX) < _XLOGX_LIMIT:
        c = np.arange(min(max(top + 1, 2 * len(_XLOGX)), _XLOGX_LIMIT), dtype=np.float64)
        _XLOGX = c * np.log(np.where(c > 0, c, 1.0))
    return _XLOGX


def plogp_counts(counts: np.ndarray, n: int) -> np.ndarray:
    """plogp_rows(counts / n) for integer counts, from a table of c log c:
    Σ_b p log p = Σ_b c log c / n - log n · Σ_b c / n (the last factor is 1 when a row sums
    to n, as a fingerprint's do). About 10x faster than the logs of 51,200 probabilities."""
    counts = np.asarray(counts)
    top = int(counts.max(initial=0))
    if top >= _XLOGX_LIMIT:  # a table that large would cost more than the logs
        c = counts.astype(np.float64)
        xlogx = c * np.log(np.where(c > 0, c, 1.0))
    else:
        xlogx = xlogx_table(top)[counts]
    return (xlogx.sum(axis=-1) - np.log(n) * counts.sum(axis=-1)) / n


def per_dimension_kl(target: Fingerprint, source: Fingerprint) -> np.ndarray:
    """KL_d(P_t,d || softmax(P_s,d)) for every dimension d: (D,) float64, each >= 0."""
    check_same_space(target, source)
    p = target.probabilities
    log_q = source_log_q(source.probabilities)
    return plogp_rows(p) - (p * log_q).sum(axis=1)


def bkld(target: Fingerprint, source: Fingerprint, *, weighting: str = TARGET_SOFTMAX) -> float:
    """The direct formula: Σ_d w_d KL_d / Σ_d w_d."""
    w = dimension_weights(target, weighting)
    return float((w * per_dimension_kl(target, source)).sum() / w.sum())


# --- baselines ----------------------------------------------------------------------------------

_P2L_EPS = 1e-12


def p2l(target: Fingerprint, source: Fingerprint) -> float:
    """KL between the L1-normalised mean feature vectors (P2L without its size term)."""
    check_same_space(target, source)
    p = np.abs(target.mean) + _P2L_EPS
    q = np.abs(source.mean) + _P2L_EPS
    p, q = p / p.sum(), q / q.sum()
    return float((p * np.log(p / q)).sum())


def cosine(target: Fingerprint, source: Fingerprint) -> float:
    """1 - cosine similarity of the mean feature vectors."""
    check_same_space(target, source)
    a, b = target.mean, source.mean
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(1.0 - a @ b / norm) if norm > 0 else 1.0


def jensen_shannon(target: Fingerprint, source: Fingerprint) -> float:
    """Mean over dimensions of the Jensen-Shannon divergence of the histograms (natural log)."""
    check_same_space(target, source)
    p, q = target.probabilities, source.probabilities
    m = 0.5 * (p + q)
    safe_m = np.where(m > 0, m, 1.0)
    kl_pm = plogp_rows(p) - (p * np.log(safe_m)).sum(axis=1)
    kl_qm = plogp_rows(q) - (q * np.log(safe_m)).sum(axis=1)
    return float((0.5 * (kl_pm + kl_qm)).mean())


def earth_movers(target: Fingerprint, source: Fingerprint) -> float:
    """Mean over dimensions of the 1-D EMD between histograms, bins on a [0, 1] scale
    (VDNA-style: Σ_b |CDF_t - CDF_s| / B)."""
    check_same_space(target, source)
    cdf_gap = np.abs(np.cumsum(target.probabilities - source.probabilities, axis=1))
    return float(cdf_gap.sum(axis=1).mean() / target.bins)


# --- metric table -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    pairwise: Callable[[Fingerprint, Fingerprint], float]
    weighting: str | None = None  # set for the bKLD variants, which have a linear form
    description: str = ""


METRICS: Registry[Metric] = Registry("metric")
DEFAULT_METRIC = defaults.METRIC


def register_metric(name: str, *, weighting: str | None = None, description: str = ""
                    ) -> Callable[[Callable], Callable]:
    """Decorator: register a pairwise ``f(target, source) -> float`` under ``name``."""
    def add(pairwise: Callable[[Fingerprint, Fingerprint], float]) -> Callable:
        METRICS.register(name, Metric(name, pairwise, weighting, description))
        return pairwise

    return add


@register_metric("bkld-small", weighting=TARGET_SOFTMAX,
                 description="bKLD, dimensions weighted by softmax of the target mean (paper: B = 100)")
def bkld_small(target: Fingerprint, source: Fingerprint) -> float:
    return bkld(target, source, weighting=TARGET_SOFTMAX)


@register_metric("bkld-large", weighting=UNIFORM,
                 description="bKLD, plain mean over dimensions (paper: B = 1000)")
def bkld_large(target: Fingerprint, source: Fingerprint) -> float:
    return bkld(target, source, weighting=UNIFORM)


register_metric("p2l", description="KL of L1-normalised mean vectors")(p2l)
register_metric("cosine", description="cosine distance of mean vectors")(cosine)
register_metric("js", description="Jensen-Shannon of histograms, mean over dimensions")(
    jensen_shannon)
register_metric("emd", description="earth mover's distance of histograms, mean over dims")(
    earth_movers)


def get_metric(name: str) -> Metric:
    return METRICS.get(name)


def distance(target: Fingerprint, source: Fingerprint, metric: str = DEFAULT_METRIC) -> float:
    """One distance by metric name (direct formulas)."""
    return get_metric(metric).pairwise(target, source)


# --- the linear form (docs/design.md §1.4) --------------------------------------------------------------


class LinearIndex:
    """All sources of one space as the matrix [vec(P_s) | LSE_s], so ranking every source for a
    target is one matrix-vector product (a batch of targets: one GEMM).

    bKLD(t, s)·Σw = Σ_d w_d Σ_b P_t log P_t − Σ_d w_d ⟨P_t,d, P_s,d⟩ + Σ_d w_d LSE(P_s,d)
    """

    def __init__(self, sources: Sequence[Fingerprint]) -> None:
        first = common_space(sources)
        self.space_id = first.space_id
        self.dim, self.bins = first.dim, first.bins
        self.task_ids = [s.task_id for s in sources]
        self.sources = list(sources)
        n = len(sources)
        self.matrix = np.empty((n, self.dim * self.bins + self.dim), dtype=np.float64)
        for row, s in enumerate(sources):
            p = s.probabilities
            self.matrix[row, : self.dim * self.bins] = p.ravel()
            self.matrix[row, self.dim * self.bins:] = logsumexp(p, axis=1)

    def __len__(self) -> int:
        return len(self.task_ids)

    def _query_vector(self, target: Fingerprint, weighting: str) -> tuple[np.ndarray, float, float]:
        if target.space_id != self.space_id or target.counts.shape != (self.dim, self.bins):
            raise SpaceMismatchError(
                f"target {target.task_id!r} is in space {target.space_id}, the index in "
                f"{self.space_id}; fingerprint the target in the index's space")
        w = dimension_weights(target, weighting)
        p = target.probabilities
        query = np.concatenate([-(w[:, None] * p).ravel(), w])
        constant = float((w * plogp_rows(p)).sum())
        return query, constant, float(w.sum())

    def bkld_all(self, target: Fingerprint, *, weighting: str = TARGET_SOFTMAX) -> np.ndarray:
        """bKLD(target, s) for every source s in index order: (N,) float64."""
        query, constant, w_sum = self._query_vector(target, weighting)
        return (self.matrix @ query + constant) / w_sum

    def bkld_many(self, targets: Sequence[Fingerprint], *, weighting: str = TARGET_SOFTMAX
                  ) -> np.ndarray:
        """(N_sources, N_targets) bKLD matrix as one GEMM."""
        parts = [self._query_vector(t, weighting) for t in targets]
        queries = np.stack([p[0] for p in parts], axis=1)
        constants = np.array([p[1] for p in parts])
        w_sums = np.array([p[2] for p in parts])
        return (self.matrix @ queries + constants) / w_sums

    def distances(self, target: Fingerprint, metric: str = DEFAULT_METRIC) -> np.ndarray:
        """Any metric; bKLD variants use the linear form, the others the direct formula."""
        spec = get_metric(metric)
        if spec.weighting is not None:
            return self.bkld_all(target, weighting=spec.weighting)
        return np.array([spec.pairwise(target, s) for s in self.sources])

    def top_k(self, target: Fingerprint, k: int = 5, metric: str = DEFAULT_METRIC, *,
              exclude_self: bool = True) -> list[tuple[str, float]]:
        """The k nearest sources as (task_id, distance), nearest first; ties by task id."""
        return self.rank(self.distances(target, metric), k,
                         exclude=target.task_id if exclude_self else None)

    def rank(self, distances: np.ndarray, k: int, *, exclude: str | None = None
             ) -> list[tuple[str, float]]:
        """The k smallest of precomputed distances (index order), ties by task id."""
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        ids = np.array(self.task_ids)
        keep = ids != exclude if exclude is not None else np.ones(len(ids), bool)
        order = np.lexsort((ids[keep], distances[keep]))[:k]
        return [(str(ids[keep][i]), float(distances[keep][i])) for i in order]


def distance_matrix(sources: Sequence[Fingerprint], targets: Sequence[Fingerprint],
                    metric: str = DEFAULT_METRIC) -> np.ndarray:
    """(len(sources), len(targets)) distances: rows are sources, columns targets."""
    spec = get_metric(metric)
    if spec.weighting is not None:
        return LinearIndex(sources).bkld_many(targets, weighting=spec.weighting)
    return np.array([[spec.pairwise(t, s) for t in targets] for s in sources])
