"""The sharded knowledge cloud: S shard deployments each hold the sources whose task key hashes
to their shard (rayfp.search.shards); the cloud's ingress fans a query out and merges the exact
top-k lists (docs/design.md §4, "beyond one machine").

    shards: 4            # serve/config.yaml, or `rayfp serve --shards 4`

Each shard reads only its own fingerprint files from the shared store and keeps its index in
step with it, like an unsharded replica (a registration reads one file, on one shard). Writes,
tasks, components and imported distances stay with the ingress: shards only rank.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ray import serve

from rayfp.cloud.knowledge import (
    KnowledgeBase,
    Neighbour,
    ReplicateSearch,
    merge_neighbours,
    merge_replicate_searches,
)
from rayfp.cloud.models import AppArgs
from rayfp.core.fingerprint import Fingerprint
from rayfp.search.index import configure_threads


@serve.deployment(max_ongoing_requests=64)
class IndexShard:
    """One shard of every space's index. Hub flags need every source ranked against every
    other, so a sharded cloud has none (hubness_queries is 0 here)."""

    def __init__(self, args: AppArgs, shard: int) -> None:
        configure_threads(args.threads)
        self.shard = shard
        self.kb = KnowledgeBase(args.store, min_images=args.min_images, kernel=args.kernel,
                                hubness_queries=0, shard=(shard, args.shards))
        self.kb.describe()  # load every space before taking traffic

    def check_health(self) -> None:
        self.kb.describe()

    def nearest_many(self, queries: list[tuple[Fingerprint, int, str]]
                     ) -> list[list[Neighbour]]:
        return self.kb.nearest_many(queries)

    def replicate_search(self, target: Fingerprint, replicates: list[Fingerprint], k: int,
                         metric: str) -> ReplicateSearch | None:
        return self.kb.replicate_search(target, replicates, k=k, metric=metric)

    def epsilons(self, space_id: str) -> dict[str, float | None]:
        return self.kb.epsilons(space_id)

    def describe(self) -> dict[str, Any]:
        return {"shard": self.shard, "spaces": self.kb.describe()}


class ShardFanOut:
    """The ingress's side: the same questions as KnowledgeBase, asked of every shard at once
    and merged. Exact: each shard answers its own exact top-k (rayfp.search.shards)."""

    def __init__(self, handles: Sequence[Any]) -> None:
        self.handles = list(handles)

    async def _ask(self, method: str, *args: Any) -> list[Any]:
        return list(await asyncio.gather(*[getattr(handle, method).remote(*args)
                                           for handle in self.handles]))

    async def nearest_many(self, queries: list[tuple[Fingerprint, int, str]]
                           ) -> list[list[Neighbour]]:
        answers = await self._ask("nearest_many", queries)
        return [merge_neighbours([answer[j] for answer in answers], k)
                for j, (_, k, _) in enumerate(queries)]

    async def replicate_search(self, target: Fingerprint, replicates: Sequence[Fingerprint], *,
                               k: int, metric: str) -> ReplicateSearch | None:
        searches = [s for s in await self._ask("replicate_search", target, replicates, k,
                                               metric) if s is not None]
        return merge_replicate_searches(searches, k) if searches else None

    async def epsilons(self, space_id: str) -> dict[str, float | None]:
        merged: dict[str, float | None] = {}
        for part in await self._ask("epsilons", space_id):
            merged.update(part)
        return merged

    async def describe(self) -> dict[str, Any]:
        return {"shards": await self._ask("describe")}

    def holds_index(self) -> bool:
        return False  # the shards do: the ingress reads a task's fingerprint from the store
