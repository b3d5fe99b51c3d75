"""How many images suffice: a task's answer recomputed from random subsets of its images.

From the task's view table (rayfp.core.replicates), each subset of m of its M images gives the
fingerprint those images' views make (their N·m/M views: the same augmentations, not N new
ones), ranked against the stored tasks. Per m: how often the subset's top-1 is the full task's
top-1, and the mean share of the full top-k it recovers. Subsets are drawn from the images that
have views (the paper's plan, drawing with replacement, can leave some out)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rayfp.core.distance import get_metric
from rayfp.core.fingerprint import FingerprintSpace, finalize
from rayfp.core.replicates import ViewTable, subsample_weights
from rayfp.errors import ConfigError
from rayfp.search.index import ScreenedIndex


@dataclasses.dataclass(frozen=True)
class StabilityRow:
    images: int
    draws: int
    top1_agreement: float  # share of subsets whose top-1 is the full task's
    topk_overlap: float  # mean |subset top-k ∩ full top-k| / k
    top1_lo: float  # 95 % Wilson interval of top1_agreement
    top1_hi: float


def default_sizes(n_images: int) -> list[int]:
    """5, 10, 20, 50, 100, 200, 500, ... below M, and M itself."""
    sizes, base = [], [5, 10, 20, 50]
    scale = 1
    while True:
        for s in base:
            if s * scale >= n_images:
                return [*sizes, n_images]
            sizes.append(s * scale)
        scale *= 10


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def image_stability(views: ViewTable, space: FingerprintSpace, index: ScreenedIndex, *,
                    sizes: Sequence[int], draws: int, k: int, metric: str, seed: int = 0
                    ) -> tuple[list[str], list[StabilityRow]]:
    """The full task's top-k and, per size, the agreement of ``draws`` subsets with it."""
    weighting = get_metric(metric).weighting
    if weighting is None:
        raise ConfigError(f"stability ranks by bKLD; {metric!r} has no batched form")
    full = views.weighted(space, np.ones((1, views.n_images), np.int64))[0]
    target = finalize(full, task_id=views.task_id, n_images=views.n_images)
    answer = [t for t, _ in index.top_k_many([target], k, weighting=weighting)[0]]
    if not answer:
        raise ConfigError("the store has no other task in this space to rank against")
    seen = np.flatnonzero(np.bincount(views.image_of_view, minlength=views.n_images))
    rows = []
    for m in sizes:
        if not 1 <= m <= len(seen):
            raise ConfigError(f"sizes must be in 1..{len(seen)} (the images with views), "
                              f"got {m}")
        count = 1 if m == len(seen) else draws
        weights = np.zeros((count, views.n_images), np.int64)
        weights[:, seen] = subsample_weights(len(seen), m, count, seed + m)
        subsets = [finalize(p, task_id=views.task_id, n_images=m)
                   for p in views.weighted(space, weights)]
        ranked = index.top_k_many(subsets, k, weighting=weighting)
        hits = sum(bool(found) and found[0][0] == answer[0] for found in ranked)
        overlap = float(np.mean([len({t for t, _ in found} & set(answer)) / len(answer)
                                 for found in ranked]))
        lo, hi = wilson(hits, count)
        rows.append(StabilityRow(m, count, hits / count, overlap, lo, hi))
    return answer, rows
