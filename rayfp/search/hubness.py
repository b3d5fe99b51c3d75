"""Hubness of a space: how often each stored task is among the k nearest of the others.

In high dimensions a few points (hubs) turn up in nearly every neighbour list (Radovanović et al.,
JMLR 2010). A hub's presence in an answer says little about the query, so the cloud flags it.
N_k(s) = the number of stored tasks whose top-k (bKLD, the task itself left out) contains s; its
mean is k, and a right-skewed distribution (skewness > 1) means the space has hubs. A task is
flagged when N_k >= HUB_FACTOR * k (twice its fair share) and, when N_k is estimated from a
sample of queries, it was seen at least MIN_HITS times (one lucky hit scaled up is no hub)."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.stats import skew

from rayfp.core.distance import get_metric
from rayfp.search.index import ScreenedIndex

HUB_FACTOR = 2.0
MIN_HITS = 3
# Larger spaces: N_k is estimated from this many stored tasks as queries (the service measures
# it in a background thread; at 10,000 sources 256 queries are ~10 s of one core).
MAX_QUERIES = 256
BATCH = 64


@dataclasses.dataclass(frozen=True)
class Hubness:
    k: int
    metric: str
    sources: int
    queries: int  # stored tasks ranked as queries (all of them up to MAX_QUERIES)
    k_occurrence: dict[str, float]  # task id -> N_k (scaled to all tasks when sampled)
    hits: dict[str, int]  # task id -> top-k appearances among the queries actually ranked
    skewness: float  # of the N_k distribution; NaN below 3 tasks

    @property
    def threshold(self) -> float:
        return HUB_FACTOR * self.k

    def is_hub(self, task_id: str) -> bool:
        sampled = self.queries < self.sources
        return (self.k_occurrence.get(task_id, 0.0) >= self.threshold
                and (not sampled or self.hits.get(task_id, 0) >= MIN_HITS))

    def hubs(self) -> list[tuple[str, float]]:
        """The flagged tasks, most frequent first."""
        found = [(t, n) for t, n in self.k_occurrence.items() if self.is_hub(t)]
        return sorted(found, key=lambda item: (-item[1], item[0]))

    def to_record(self, top: int = 10) -> dict:
        return {"k": self.k, "metric": self.metric, "sources": self.sources,
                "queries": self.queries,
                "skewness": None if not np.isfinite(self.skewness) else round(self.skewness, 4),
                "hub_threshold": self.threshold,
                "hubs": [{"task_id": t, "k_occurrence": round(n, 2)}
                         for t, n in self.hubs()[:top]]}


def measure_hubness(index, *, k: int, metric: str, max_queries: int = MAX_QUERIES,
                    seed: int = 0) -> Hubness:
    """N_k of every stored task, from the exact top-k of each stored task (or of a seeded
    sample of max_queries of them, scaled by sources / queries). ``index``: the service's
    ScreenedIndex (batched GEMMs), or a list of fingerprints (a torch-free LinearIndex, for
    `rayfp show`)."""
    weighting = get_metric(metric).weighting
    if isinstance(index, ScreenedIndex):
        ids = [str(t) for t in index.task_ids]
        rows = np.flatnonzero(index.alive)
        source_of = index.source

        def top_k(targets, k):
            if weighting is None:
                return [[t for t, _ in index.top_k_metric(x, k, metric)] for x in targets]
            return [[t for t, _ in found]
                    for found in index.top_k_many(targets, k, weighting=weighting)]
    else:
        from rayfp.core.distance import LinearIndex, distance_matrix

        fps = list(index)
        ids = [fp.task_id for fp in fps]
        rows = np.arange(len(fps))
        source_of = fps.__getitem__
        names = np.array(ids)
        linear = LinearIndex(fps) if weighting is not None else None

        def top_k(targets, k):
            matrix = (linear.bkld_many(targets, weighting=weighting) if linear is not None
                      else distance_matrix(fps, targets, metric))
            out = []
            for j, target in enumerate(targets):
                column = np.where(names == target.task_id, np.inf, matrix[:, j])
                out.append([str(names[i]) for i in np.lexsort((names, column))[:k]])
            return out
    if len(rows) > max_queries:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_queries, replace=False))
    counts = dict.fromkeys(ids, 0)
    kk = min(k, len(ids) - 1)
    for start in range(0, len(rows) if kk else 0, BATCH):
        for neighbours in top_k([source_of(int(r)) for r in rows[start:start + BATCH]], kk):
            for task_id in neighbours:
                counts[task_id] += 1
    scale = len(ids) / max(1, len(rows))
    values = np.array(list(counts.values())) * scale
    skewness = float(skew(values)) if len(values) >= 3 and values.std() > 0 else float("nan")
    return Hubness(k=k, metric=metric, sources=len(ids), queries=len(rows),
                   k_occurrence={t: float(v) for t, v in zip(counts, values)},
                   hits=counts, skewness=skewness)
