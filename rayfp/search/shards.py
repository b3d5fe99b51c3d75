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

from collections.abc import Callable, Sequence
from typing import Any

from rayfp.core.fingerprint import task_key
from rayfp.errors import ConfigError


def shard_of_key(key: str, shards: int) -> int:
    """The shard of a task by its store key (the hex name of its fingerprint file)."""
    if shards < 1:
        raise ConfigError(f"shards must be >= 1, got {shards}")
    return int(key[:16], 16) % shards


def shard_of(task_id: str, shards: int) -> int:
    """The shard a task lives on: a stable hash of its id (the same on every machine)."""
    return shard_of_key(task_key(task_id), shards)


def merge_top_k(answers: Sequence[Sequence[Any]], k: int, *,
                key: Callable[[Any], tuple[float, str]] | None = None) -> list[Any]:
    """Shards' exact top-k lists -> the global top-k, nearest first, ties by task id (the
    order ScreenedIndex answers in). Entries are (task id, distance) pairs, or anything whose
    (distance, task id) ``key`` gives."""
    if key is None:
        entries: list[Any] = [(str(task), float(distance)) for answer in answers
                              for task, distance in answer]
        key = lambda pair: (pair[1], pair[0])  # noqa: E731
    else:
        entries = [entry for answer in answers for entry in answer]
    return sorted(entries, key=key)[:k]
