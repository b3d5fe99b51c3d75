"""A cloud answer computed in this process from a store: what `/v1/nearest` and `/v1/recommend`
return for a query by task id, for `rayfp query|recommend --store` without a running service.
The same knowledge base calls as the service's routes (nearest_to_task is the service's
task-id path: the stored fingerprint, else the imported distances; then `recommend`), so the
same store gives the same answer (tests/cloud/test_serve.py compares them)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from rayfp import defaults
from rayfp.cloud.knowledge import KnowledgeBase, Neighbour

# Nearest sources a learned recommendation blends (their distances); the rest count as average.
LEARNED_WIDE = 64


def search_width(k: int, rank: str | None) -> int:
    """How many neighbours to rank for an answer of k: a learned recommendation blends the
    distances of the LEARNED_WIDE nearest."""
    return max(k, LEARNED_WIDE) if rank == "learned" else k


def neighbours_out(found: Sequence[Neighbour]) -> list[dict[str, Any]]:
    return [{"rank": rank, **dataclasses.asdict(n)} for rank, n in enumerate(found, start=1)]


def answer_for_task(kb: KnowledgeBase, task_id: str, *, space_id: str | None = None,
                    k: int | None = None, metric: str | None = None,
                    kinds: Sequence[str] | None = None, rank: str = "learned"
                    ) -> dict[str, Any]:
    """The answer to a query by task id; with ``kinds``, a recommendation."""
    from rayfp.cloud.recommend import recommend

    k = k or defaults.K
    metric = metric or defaults.METRIC
    found = kb.nearest_to_task(task_id, k=search_width(k, rank if kinds else None),
                               metric=metric, space_id=space_id)
    answer: dict[str, Any] = {"metric": metric, "k": k, "neighbours": neighbours_out(found[:k]),
                              "confidence": None}
    if kinds is not None:
        answer["recommendations"] = recommend(kb, found, list(kinds), rank=rank, target=task_id,
                                              k=k)
    return answer
