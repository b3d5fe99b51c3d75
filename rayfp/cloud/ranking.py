"""One interface for ranking, whoever ranks: the ingress's own index (LocalRanker) or the
shards of a sharded cloud (rayfp.cloud.sharded.ShardFanOut). The app asks a Ranker and never
branches on which one it holds; Ray-free, so the CLI and tests use LocalRanker directly."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from rayfp.cloud.knowledge import KnowledgeBase, Neighbour, ReplicateSearch
from rayfp.core.fingerprint import Fingerprint


class Ranker(Protocol):
    """What the ingress needs of whatever ranks its sources."""

    async def nearest_many(self, queries: Sequence[tuple[Fingerprint, int, str]]
                           ) -> list[list[Neighbour]]:
        """The k nearest sources of each (target, k, metric) query, exactly."""

    async def replicate_search(self, target: Fingerprint, replicates: Sequence[Fingerprint],
                               *, k: int, metric: str) -> ReplicateSearch | None:
        """The query and its replicates ranked together (None: no sources)."""

    async def epsilons(self, space_id: str) -> dict[str, float | None]:
        """Task id -> the ε its ranked fingerprint was released at (None: exact)."""

    async def describe(self) -> Any:
        """What ranks: index kernels, sources and bytes (GET /v1/health)."""

    def holds_index(self) -> bool:
        """Whether the ingress's own knowledge base holds the indexes (queries by task id
        are then answered from them)."""


class LocalRanker:
    """The knowledge base's own indexes. Ranking a batch is one GEMM and stays on the event
    loop (it is short and the batcher relies on it); replicate searches, R + 1 queries, run
    in a worker thread."""

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb

    async def nearest_many(self, queries: Sequence[tuple[Fingerprint, int, str]]
                           ) -> list[list[Neighbour]]:
        return self.kb.nearest_many(queries)

    async def replicate_search(self, target: Fingerprint, replicates: Sequence[Fingerprint],
                               *, k: int, metric: str) -> ReplicateSearch | None:
        return await asyncio.to_thread(self.kb.replicate_search, target, replicates, k=k,
                                       metric=metric)

    async def epsilons(self, space_id: str) -> dict[str, float | None]:
        return self.kb.epsilons(space_id)

    async def describe(self) -> Any:
        return {"kernels": self.kb.describe()}

    def holds_index(self) -> bool:
        return True
