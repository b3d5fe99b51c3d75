"""How sure an answer is: the query's replicates ranked like the query itself.

Each replicate is the task's fingerprint recomputed on a bootstrap resample of its images (and,
for a private release, released like it). A neighbour's top-1 rate is the share of replicates
whose nearest task it is; its top-k rate the share whose k nearest include it; its distance
interval the 2.5-97.5 % range of its distance to the replicates. The answer's stability is the
top-1 rate of its top-1; below UNSURE it is flagged (calibration: BENCHMARKS.md, "Per-query confidence")."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

UNSURE = 0.5  # answers whose top-1 is the replicates' top-1 less often than this are unsure
CONFIDENT = 0.8  # measured: at or above this, the top-1 agrees with the large-sample answer


@dataclasses.dataclass(frozen=True)
class NeighbourConfidence:
    top1_rate: float
    topk_rate: float
    distance_lo: float
    distance_hi: float


@dataclasses.dataclass(frozen=True)
class Confidence:
    replicates: int
    stability: float  # top-1 rate of the answer's top-1
    per_neighbour: dict[str, NeighbourConfidence]
    # True: every replicate's top-k is the exhaustive one; False: ranked among the query's
    # nearest candidates (ScreenedIndex.search_with_replicates)
    certified: bool = True

    @property
    def unsure(self) -> bool:
        return self.stability < UNSURE

    @property
    def label(self) -> str:
        return ("unsure" if self.unsure else "confident" if self.stability >= CONFIDENT
                else "moderate")


def confidence_of(answer: Sequence[str], replicate_answers: Sequence[Sequence[str]],
                  distances: np.ndarray, *, level: float = 0.95, certified: bool = True
                  ) -> Confidence:
    """answer: the query's top-k task ids; replicate_answers: each replicate's top-k;
    distances: (R, k) each replicate's distance to each task of the answer."""
    r = len(replicate_answers)
    if r == 0:
        raise ValueError("confidence needs at least one replicate")
    tail = (1 - level) / 2
    lo, hi = np.quantile(distances, [tail, 1 - tail], axis=0)
    firsts = [found[0] if found else None for found in replicate_answers]
    per = {}
    for j, task_id in enumerate(answer):
        per[task_id] = NeighbourConfidence(
            top1_rate=sum(f == task_id for f in firsts) / r,
            topk_rate=sum(task_id in found for found in replicate_answers) / r,
            distance_lo=float(lo[j]), distance_hi=float(hi[j]))
    stability = per[answer[0]].top1_rate if answer else 0.0
    return Confidence(r, stability, per, certified)
