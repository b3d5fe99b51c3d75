"""One space's sources partitioned over shards: each shard is an index of its own, a query is
fanned out to every shard and their exact top-k lists are merged.

Exactness: each shard returns its own exact top-k (float64 re-ranked bKLD, ties by task id);
the global top-k is among the union of those lists (any source in the global top-k is in its
own shard's top-k), so merging them by (distance, task id) gives the exhaustive answer.
A task always lives on the shard its id hashes to, so a re-registration replaces it there.
The hash is the one the store names fingerprint files by, so a shard replica picks its own
files from a directory listing without reading anyone else's.

Torch-free and Ray-free: the Serve router and shard deployments call these functions.
"""

from __future__ import annotations

from collections.abc import Sequence

from rayfp.core.fingerprint import Fingerprint
from rayfp.core.index import ScreenedIndex
from rayfp.core.kernels import AUTO
from rayfp.core.store import task_key
from rayfp.errors import ConfigError


def shard_of_key(key: str, shards: int) -> int:
    """The shard of a task by its store key (the hex name of its fingerprint file)."""
    if shards < 1:
        raise ConfigError(f"shards must be >= 1, got {shards}")
    return int(key[:16], 16) % shards


def shard_of(task_id: str, shards: int) -> int:
    """The shard a task lives on: a stable hash of its id (the same on every machine)."""
    return shard_of_key(task_key(task_id), shards)


def partition(sources: Sequence[Fingerprint], shards: int) -> list[list[Fingerprint]]:
    """The sources of each shard, in their given order."""
    parts: list[list[Fingerprint]] = [[] for _ in range(shards)]
    for fp in sources:
        parts[shard_of(fp.task_id, shards)].append(fp)
    return parts


def merge_top_k(answers: Sequence[Sequence[tuple[str, float]]], k: int
                ) -> list[tuple[str, float]]:
    """Shards' exact top-k lists -> the global top-k, nearest first, ties by task id (the
    order ScreenedIndex answers in)."""
    pairs = [(str(task), float(distance)) for answer in answers for task, distance in answer]
    return sorted(pairs, key=lambda pair: (pair[1], pair[0]))[:k]


class ShardedIndex:
    """The in-process form of the sharded service: one ScreenedIndex per non-empty shard.

    >>> ShardedIndex(fingerprints, shards=4).top_k(query, 5)  # doctest: +SKIP
    """

    def __init__(self, sources: Sequence[Fingerprint], *, shards: int,
                 kernel: str = AUTO) -> None:
        if not sources:
            raise ConfigError("an index needs at least one fingerprint")
        self.shards = shards
        self.kernel = kernel
        self.parts: list[ScreenedIndex | None] = [
            ScreenedIndex(part, kernel=kernel) if part else None
            for part in partition(sources, shards)]

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts if part is not None)

    @property
    def nbytes_per_shard(self) -> list[int]:
        return [part.nbytes if part is not None else 0 for part in self.parts]

    def top_k_many(self, targets: Sequence[Fingerprint], k: int, *,
                   exclude_self: bool = True) -> list[list[tuple[str, float]]]:
        """The exact top-k (task_id, bKLD) per target over every shard."""
        answers = [part.top_k_many(targets, k, exclude_self=exclude_self)
                   for part in self.parts if part is not None]
        return [merge_top_k([shard[j] for shard in answers], k) for j in range(len(targets))]

    def top_k(self, target: Fingerprint, k: int = 5, *, exclude_self: bool = True
              ) -> list[tuple[str, float]]:
        return self.top_k_many([target], k, exclude_self=exclude_self)[0]

    def with_changes(self, upserts: Sequence[Fingerprint], removed: Sequence[str] = ()
                     ) -> ShardedIndex:
        """A new sharded index: each change goes to the shard its task id hashes to; the
        other shards are shared unchanged."""
        new = object.__new__(ShardedIndex)
        new.shards, new.kernel, new.parts = self.shards, self.kernel, list(self.parts)
        upserts_of = partition(upserts, self.shards)
        removed_of: list[list[str]] = [[] for _ in range(self.shards)]
        for task_id in removed:
            removed_of[shard_of(task_id, self.shards)].append(task_id)
        for shard, (adds, drops) in enumerate(zip(upserts_of, removed_of)):
            part = new.parts[shard]
            if not adds and not drops:
                continue
            if part is None:
                new.parts[shard] = ScreenedIndex(adds, kernel=self.kernel) if adds else None
                continue
            alive_after = set(part.task_ids) - set(drops) | {fp.task_id for fp in adds}
            new.parts[shard] = part.with_changes(adds, drops) if alive_after else None
        if not any(part is not None for part in new.parts):
            raise ConfigError("an index needs at least one fingerprint")
        return new
