"""Sources partitioned over shards: 1, 2 and 4 shards answer exactly what the exhaustive
ranking answers (direct bKLD against every source), ties included, before and after changes."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest
from conftest import make_space, random_fingerprint

from rayfp.core.distance import bkld
from rayfp.core.fingerprint import Fingerprint
from rayfp.errors import ConfigError
from rayfp.search.index import ScreenedIndex
from rayfp.search.kernels import AUTO
from rayfp.search.shards import merge_top_k, shard_of


# The in-process model of the sharded service (the served fan-out is rayfp.cloud.sharded).
def partition(sources: Sequence[Fingerprint], shards: int) -> list[list[Fingerprint]]:
    """The sources of each shard, in their given order."""
    parts: list[list[Fingerprint]] = [[] for _ in range(shards)]
    for fp in sources:
        parts[shard_of(fp.task_id, shards)].append(fp)
    return parts


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


def exhaustive(target, sources, k):
    """Every source by the direct formula, nearest first, ties by task id."""
    pairs = [(s.task_id, bkld(target, s)) for s in sources if s.task_id != target.task_id]
    return sorted(pairs, key=lambda pair: (pair[1], pair[0]))[:k]


@pytest.fixture(scope="module")
def sources():
    rng = np.random.default_rng(7)
    space = make_space(dim=12, bins=16)
    fps = [random_fingerprint(rng, space, f"task-{i:03d}", n=300) for i in range(80)]
    # Twins: the same counts under two ids, so ties must be broken by id across shards.
    fps += [dataclasses.replace(fps[i], task_id=f"twin-{i:03d}") for i in (3, 17, 42)]
    return fps


def test_shards_partition_stably(sources):
    parts = partition(sources, 4)
    assert sorted(fp.task_id for part in parts for fp in part) == sorted(
        fp.task_id for fp in sources)
    assert all(len(part) > 5 for part in parts)  # the hash spreads tasks
    assert shard_of("task-001", 4) == shard_of("task-001", 4)
    with pytest.raises(ConfigError, match="shards must be >= 1"):
        shard_of("x", 0)


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_sharded_answers_equal_the_exhaustive_ranking(sources, shards):
    index = ShardedIndex(sources, shards=shards, kernel="float32-numpy")
    targets = [sources[i] for i in (3, 10, 42, 60)] + [sources[-1]]
    for target, found in zip(targets, index.top_k_many(targets, 7)):
        want = exhaustive(target, sources, 7)
        assert [t for t, _ in found] == [t for t, _ in want]
        np.testing.assert_allclose([d for _, d in found], [d for _, d in want], rtol=1e-9)
    # A twin of the target is at distance 0 and comes first.
    assert index.top_k(sources[3], 1)[0][0] == "twin-003"


def test_changes_go_to_their_shard(sources):
    index = ShardedIndex(sources[:40], shards=4, kernel="float32-numpy")
    changed = index.with_changes(sources[40:], removed=["task-005", "task-020"])
    kept = [fp for fp in sources if fp.task_id not in {"task-005", "task-020"}]
    assert len(changed) == len(kept) and len(index) == 40  # the old index is untouched
    target = sources[50]
    assert [t for t, _ in changed.top_k(target, 5)] == [
        t for t, _ in exhaustive(target, kept, 5)]
    assert sum(changed.nbytes_per_shard) > sum(index.nbytes_per_shard)


def test_merge_keeps_the_nearest_and_breaks_ties_by_id():
    merged = merge_top_k([[("b", 0.5), ("d", 0.9)], [("a", 0.5), ("c", 0.7)]], 3)
    assert merged == [("a", 0.5), ("b", 0.5), ("c", 0.7)]
