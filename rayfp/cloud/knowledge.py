"""The knowledge cloud's data access: tasks, their fingerprints and components, nearest tasks.

Plain functions and one class over a Store; serve/ calls these, nothing here imports Ray.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rayfp import defaults
from rayfp.cloud.learning import OutcomeModel
from rayfp.core.confidence import Confidence, confidence_of
from rayfp.core.distance import DEFAULT_METRIC, get_metric
from rayfp.core.fingerprint import Fingerprint, FingerprintSpace, finalize
from rayfp.core.parts import TaskPart, check_compatible, validate_part
from rayfp.core.release import released_epsilon
from rayfp.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    SpaceMismatchError,
    StoreError,
    TooFewImagesError,
)
from rayfp.privacy.parts import merge_parts
from rayfp.privacy.policy import check_part_privacy, check_privacy, check_replicates_total
from rayfp.registry import look_up
from rayfp.search.hubness import MAX_QUERIES, Hubness, measure_hubness
from rayfp.search.index import ScreenedIndex
from rayfp.search.kernels import AUTO
from rayfp.search.shards import merge_top_k, shard_of_key
from rayfp.store.feed import FingerprintFeed
from rayfp.store.schemas import COMPONENT_KINDS
from rayfp.store.store import Store

log = logging.getLogger(__name__)

# Our metric names -> the paper's released matrices, used for tasks without fingerprints.
IMPORTED_SELECTOR_FOR_METRIC = {
    "bkld-small": "KLD-PP:NS-W:TS-100-BINS",
    "bkld-large": "KLD-PP:NS-1000-BINS",
    "p2l": "KLD-PP:NN",
    "emd": "VDNA-PP:NN-1000-BINS",
}


@dataclasses.dataclass(frozen=True)
class Neighbour:
    task_id: str
    distance: float
    basis: str  # "fingerprint:<space_id>" or "imported:<selector>"
    epsilon: float | None = None  # the neighbour's fingerprint's DP ε; None: exact counts
    k_occurrence: float | None = None  # in how many stored tasks' top-k it is (hubness)
    hub: bool = False  # near to far more tasks than its share: weak evidence of similarity
    # With replicates of the query (rayfp.core.confidence); None without.
    top1_rate: float | None = None
    topk_rate: float | None = None
    distance_lo: float | None = None
    distance_hi: float | None = None


@dataclasses.dataclass(frozen=True)
class ReplicateSearch:
    """A query's and its replicates' top-k with what confidence needs, from one index (or one
    shard: merge_replicate_searches joins the shards' searches into the global one)."""

    ranked: list[list[tuple[str, float]]]  # [query, *replicates] top-k, nearest first
    to_replicates: dict[str, list[float]]  # each of the query's top-k -> its R distances
    certified: bool
    epsilon: dict[str, float | None]  # each of the query's top-k -> its release ε


def merge_replicate_searches(searches: Sequence[ReplicateSearch], k: int) -> ReplicateSearch:
    """Shards' searches -> the global one: every ranked list is merged by (distance, task id);
    a neighbour's distances to the replicates come from the shard that holds it."""
    ranked = [merge_top_k([search.ranked[j] for search in searches], k)
              for j in range(len(searches[0].ranked))]
    answer = {t for t, _ in ranked[0]}
    to_replicates = {t: d for search in searches for t, d in search.to_replicates.items()
                     if t in answer}
    epsilon = {t: e for search in searches for t, e in search.epsilon.items() if t in answer}
    return ReplicateSearch(ranked, to_replicates, all(s.certified for s in searches), epsilon)


def merge_neighbours(answers: Sequence[Sequence[Neighbour]], k: int) -> list[Neighbour]:
    """Shards' top-k neighbour lists -> the global top-k, in ScreenedIndex's order."""
    return merge_top_k(answers, k, key=lambda n: (n.distance, n.task_id))


@dataclasses.dataclass
class _CachedIndex:
    feed: FingerprintFeed  # the space's fingerprints as this index last saw them
    index: ScreenedIndex | None
    epsilon: dict  # task id -> its fingerprint's ε (None: exact counts)

    @property
    def version(self) -> int | None:
        return self.feed.version


class KnowledgeBase:
    """Tasks, fingerprints, components and imported distances of one store, with a cached
    linear-form index per space that is rebuilt when the space's fingerprints change.

    shard=(i, S): the index holds only the sources whose task key hashes to shard i of S
    (rayfp.search.shards), for one shard deployment of a sharded cloud."""

    def __init__(self, store: Store | str | os.PathLike, *,
                 min_images: int = defaults.MIN_IMAGES, kernel: str = AUTO,
                 max_epsilon: float | None = defaults.MAX_EPSILON,
                 hubness_queries: int = MAX_QUERIES,
                 shard: tuple[int, int] | None = None) -> None:
        self.store = store if isinstance(store, Store) else Store(store)
        if shard is not None and not 0 <= shard[0] < shard[1]:
            raise ConfigError(f"shard must be (i, S) with 0 <= i < S, got {shard}")
        self.shard = shard
        self.min_images = min_images
        self.max_epsilon = max_epsilon  # refuse registrations less private; None: accept all (as the service)
        self.hubness_queries = hubness_queries  # stored tasks ranked to measure hubness; 0: off
        self.kernel = kernel  # the index kernel: "auto" (measured per space) or a name
        self._indexes: dict[str, _CachedIndex] = {}
        self._index_lock = threading.RLock()
        self._spaces: dict[str, FingerprintSpace] = {}
        self._imported: tuple | None = None  # (file signature, frame, rows per key)
        self._hubness: dict[tuple[str, str], tuple[tuple, float, Hubness]] = {}
        self._hubness_running: set[tuple[str, str]] = set()
        self._hubness_lock = threading.Lock()
        self.unreadable: dict[str, set[str]] = {}  # space -> tasks whose record is unreadable
        self._task_locks: dict[tuple[str, str], threading.Lock] = {}  # parts of one task
        self._locks_lock = threading.Lock()
        self._derived: dict[str, tuple] = {}  # name -> (table versions, value): derived()
        self._derived_lock = threading.Lock()

    @classmethod
    def local(cls, store: Store | str | os.PathLike) -> KnowledgeBase:
        """The cloud's ranking path over a site's own store (`rayfp nearest`, the demo): the
        same index, exact re-ranking and imported distances; every stored task is a source,
        and the kernel is the torch- and numba-free one, so light commands stay light."""
        return cls(store, min_images=1, max_epsilon=None, kernel="float32-numpy",
                   hubness_queries=0)

    def space(self, space_id: str) -> FingerprintSpace:
        """A space by id; cached, since a space's content is its id."""
        if space_id not in self._spaces:
            self._spaces[space_id] = self.store.get_space(space_id)
        return self._spaces[space_id]

    # -- spaces and indexes ---------------------------------------------------------------
    def index(self, space_id: str) -> ScreenedIndex | None:
        """The space's index, brought up to date with the store: only the data files committed
        since the last call are read (a registration into a 10,000-task space reads one file,
        not 10,000). One refresh at a time: handlers run on the event loop and in threads."""
        with self._index_lock:
            return self._refreshed_index(space_id)

    def _refreshed_index(self, space_id: str) -> ScreenedIndex | None:
        cached = self._indexes.get(space_id)
        if cached is None:
            self.space(space_id)  # NotFoundError for an unknown space
            keep = None if self.shard is None else (
                lambda key, shard=self.shard: shard_of_key(key, shard[1]) == shard[0])
            cached = _CachedIndex(FingerprintFeed(self.store, space_id, keep), None, {})
        changes = cached.feed.refresh()
        if changes is None:
            return cached.index
        changes, readable = self._readable(space_id, changes)
        index = cached.index
        if not cached.feed.task_ids():
            index = None
        elif index is not None:
            index = index.with_changes(changes.fresh, changes.removed)
            if index.should_remeasure:  # the space has grown: choose its kernel again
                index = ScreenedIndex([fp for fp in cached.feed.current()
                                       if fp.task_id not in self.unreadable[space_id]],
                                      kernel=self.kernel)
        elif changes.fresh:
            index = ScreenedIndex(changes.fresh, kernel=self.kernel)
        epsilon = {task: eps for task, eps in cached.epsilon.items()
                   if task not in changes.removed}
        epsilon.update(readable)
        self._indexes[space_id] = _CachedIndex(cached.feed, index, epsilon)
        return index

    def _readable(self, space_id: str, changes):
        """The changes without fingerprints whose privacy record cannot be read: they are
        reported, counted (/v1/health) and skipped, so one bad row never stops the service.
        Returns (changes, ε of each readable fresh fingerprint)."""
        bad = self.unreadable.setdefault(space_id, set())
        bad.difference_update(changes.removed)
        fresh, removed, readable = [], list(changes.removed), {}
        for fp in changes.fresh:
            try:
                readable[fp.task_id] = released_epsilon(fp.privacy)
                fresh.append(fp)
                bad.discard(fp.task_id)
            except StoreError as exc:
                log.warning("space %s, task %r: %s; not ranked", space_id, fp.task_id, exc)
                bad.add(fp.task_id)
                removed.append(fp.task_id)  # an older, readable version must not stay ranked
        return dataclasses.replace(changes, fresh=fresh, removed=removed), readable

    def epsilons(self, space_id: str) -> dict[str, float | None]:
        """Task id -> the ε its fingerprint was released at (None: exact counts), from the
        index's cache: what this cloud (or shard) holds, without reading the store."""
        self.index(space_id)
        cached = self._indexes.get(space_id)
        return dict(cached.epsilon) if cached is not None else {}

    def describe(self) -> dict[str, Any]:
        """Each space's index: its kernel, sources, bytes and the kernel timings measured."""
        out = {}
        for space_id in self.store.space_ids():
            index = self.index(space_id)
            if index is not None:
                out[space_id] = {"kernel": index.kernel, "sources": len(index),
                                 "nbytes": index.nbytes,
                                 "measured_ms": {name: round(seconds * 1e3, 3) for name, seconds
                                                 in index.kernel_timings.items()},
                                 "passed_over": index.passed_over}
        return out

    # Hubness ranks stored tasks against each other (seconds at 1,000 sources): answers use the
    # last measurement, refreshed in the background at most once a minute after changes, so no
    # query waits for it.
    HUBNESS_MAX_AGE_S = 60.0

    def hubness(self, space_id: str, metric: str = DEFAULT_METRIC, *, wait: bool = True
                ) -> Hubness | None:
        """The space's k-occurrence (k = defaults.K) under ``metric``. wait: measure now if the
        space changed since the last measurement. Otherwise return the last one (None before
        the first) and refresh it in a background thread when it is out of date and older than
        HUBNESS_MAX_AGE_S."""
        if self.hubness_queries < 1:
            return None
        index = self.index(space_id)
        if index is None:
            return None
        key, version = (space_id, metric), self._indexes[space_id].version
        cached = self._hubness.get(key)
        if cached is not None and cached[0] == version:
            return cached[2]
        if wait:
            return self._measure_hubness(key, version, index)
        too_old = cached is None or time.monotonic() - cached[1] >= self.HUBNESS_MAX_AGE_S
        with self._hubness_lock:
            start = too_old and key not in self._hubness_running
            if start:
                self._hubness_running.add(key)
        if start:
            threading.Thread(target=self._measure_hubness, args=(key, version, index),
                             daemon=True, name=f"hubness-{space_id}").start()
        return None if cached is None else cached[2]

    def _measure_hubness(self, key: tuple[str, str], version: tuple, index) -> Hubness:
        try:
            found = measure_hubness(index, k=defaults.K, metric=key[1],
                                    max_queries=self.hubness_queries)
            self._hubness[key] = (version, time.monotonic(), found)
            return found
        finally:
            with self._hubness_lock:
                self._hubness_running.discard(key)

    # -- queries ------------------------------------------------------------------------------
    def nearest_many(self, queries: Sequence[tuple[Fingerprint, int, str]]
                     ) -> list[list[Neighbour]]:
        """The k nearest sources of each (target, k, metric) query. Queries that share a space
        and a bKLD metric are ranked together (one GEMM for the whole group); other metrics
        use their direct formula."""
        results: list[list[Neighbour]] = [[] for _ in queries]
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (target, _, metric) in enumerate(queries):
            get_metric(metric)
            self.space(target.space_id)
            groups.setdefault((target.space_id, metric), []).append(i)
        for (space_id, metric), members in groups.items():
            index = self.index(space_id)
            if index is None:
                continue
            weighting = get_metric(metric).weighting
            if weighting is not None:
                k_max = max(queries[i][1] for i in members)
                ranked = index.top_k_many([queries[i][0] for i in members], k_max,
                                          weighting=weighting)
            else:
                ranked = [index.top_k_metric(queries[i][0], queries[i][1], metric)
                          for i in members]
            for i, found in zip(members, ranked):
                results[i] = self._as_neighbours(space_id, metric, found[:queries[i][1]])
        return results

    def nearest_with_replicates(self, target: Fingerprint, replicates: Sequence[Fingerprint], *,
                                k: int = defaults.K, metric: str = DEFAULT_METRIC
                                ) -> tuple[list[Neighbour], Confidence]:
        """The k nearest of the query and how sure that is: the query and its R replicates are
        ranked in one batched search (one GEMM), then each neighbour's distance to every
        replicate is computed exactly."""
        return self.with_confidence(
            target.space_id, metric, self.replicate_search(target, replicates, k=k,
                                                           metric=metric))

    def replicate_search(self, target: Fingerprint, replicates: Sequence[Fingerprint], *,
                         k: int, metric: str) -> ReplicateSearch | None:
        """The ranking half of nearest_with_replicates (None: no sources here); what each
        shard of a sharded cloud computes."""
        weighting = get_metric(metric).weighting
        if weighting is None:
            raise ConfigError(f"replicates are ranked by bKLD; metric {metric!r} has no batched "
                              "form (use bkld-small or bkld-large)")
        for fp in replicates:
            if fp.space_id != target.space_id:
                raise ConfigError("replicates must be in the query's space")
        index = self.index(target.space_id)
        if index is None:
            return None
        found, distances, certified = index.search_with_replicates(target, replicates, k,
                                                                   weighting=weighting)
        ranked = [result.neighbours for result in found]
        epsilon = self._indexes[target.space_id].epsilon
        return ReplicateSearch(ranked, {t: distances[:, j].tolist()
                                        for j, (t, _) in enumerate(ranked[0])},
                               certified, {t: epsilon.get(t) for t, _ in ranked[0]})

    def with_confidence(self, space_id: str, metric: str, search: ReplicateSearch | None
                        ) -> tuple[list[Neighbour], Confidence]:
        """The neighbours of a replicate search, each with its confidence."""
        if search is None or not search.ranked[0]:
            return [], confidence_of([], [[]], np.zeros((1, 0)))
        answer = [t for t, _ in search.ranked[0]]
        distances = np.array([search.to_replicates[t] for t in answer]).T  # (R, k)
        confidence = confidence_of(answer, [[t for t, _ in found]
                                            for found in search.ranked[1:]],
                                   distances, certified=search.certified)
        plain = self._as_neighbours(space_id, metric, search.ranked[0], search.epsilon)
        return [dataclasses.replace(n, **dataclasses.asdict(confidence.per_neighbour[n.task_id]))
                for n in plain], confidence

    def _as_neighbours(self, space_id: str, metric: str, found: list[tuple[str, float]],
                       epsilon: Mapping[str, float | None] | None = None) -> list[Neighbour]:
        if epsilon is None:
            epsilon = self._indexes[space_id].epsilon
        hubs = self.hubness(space_id, metric, wait=False)
        return [Neighbour(t, d, f"fingerprint:{space_id}", epsilon.get(t),
                          None if hubs is None else hubs.k_occurrence.get(t),
                          hubs is not None and hubs.is_hub(t)) for t, d in found]

    def nearest_to_fingerprint(self, target: Fingerprint, *, k: int = defaults.K,
                               metric: str = DEFAULT_METRIC) -> list[Neighbour]:
        return self.nearest_many([(target, k, metric)])[0]

    def nearest_to_task(self, task_id: str, *, k: int = defaults.K, metric: str = DEFAULT_METRIC,
                        space_id: str | None = None) -> list[Neighbour]:
        """By the task's fingerprint when it has one (in ``space_id`` or its only space),
        else from imported distance matrices (the paper's tasks)."""
        fp = self.stored_fingerprint(task_id, space_id)
        if fp is not None:
            return self.nearest_to_fingerprint(fp, k=k, metric=metric)
        return self.nearest_imported(task_id, k=k, metric=metric)

    def stored_fingerprint(self, task_id: str, space_id: str | None = None, *,
                           from_index: bool = True) -> Fingerprint | None:
        """A stored task's fingerprint to query with (None: it has none, e.g. a paper task).
        Taken from the cached indexes, which hold every ranked task's counts, so a query by
        task id reads no fingerprint file; ``from_index=False`` reads the store (a sharded
        cloud's ingress holds no index)."""
        if from_index:
            fps = []
            for space in [space_id] if space_id else self.store.space_ids():
                index = self.index(space)
                found = None if index is None else index.fingerprint_of(task_id)
                if found is not None:
                    fps.append(found)
        else:
            fps = [fp for fp in self.store.find_fingerprints(task_id)
                   if space_id is None or fp.space_id == space_id]
        if len(fps) > 1:
            raise ConfigError(f"task {task_id!r} has fingerprints in spaces "
                              f"{[fp.space_id for fp in fps]}; choose one with space_id")
        return fps[0] if fps else None

    def _imported_distances(self) -> tuple[Any, dict]:
        """The imported distance table and its row numbers per (selector, target), re-read
        only when the table changes (reading it for every query would dominate the query)."""
        signature = self.store.knowledge_version("imported_distances")
        if self._imported is None or self._imported[0] != signature:
            frame = self.store.imported_distances().to_pandas()
            groups = frame.groupby(["selector", "target"]).indices if len(frame) else {}
            self._imported = (signature, frame, groups)
        return self._imported[1], self._imported[2]

    def nearest_imported(self, task_id: str, *, k: int, metric: str) -> list[Neighbour]:
        selector = IMPORTED_SELECTOR_FOR_METRIC.get(metric, metric)
        frame, groups = self._imported_distances()
        if frame.empty:
            raise NotFoundError(f"task {task_id!r} has no fingerprint and the store has no "
                                "imported distances (see `rayfp import-paper`)")
        rows = frame.iloc[groups.get((selector, task_id), [])]
        rows = rows[rows.source != task_id].dropna(subset=["distance"])
        if rows.empty:
            known = sorted(frame.selector.unique())
            raise NotFoundError(f"no fingerprint of task {task_id!r}, and no imported distances "
                                f"for it under {selector!r} (metric {metric!r}); imported "
                                f"selectors: {known}")
        rows = rows.sort_values(["distance", "source"], kind="stable").head(k)
        return [Neighbour(r.source, float(r.distance), f"imported:{selector}")
                for r in rows.itertuples()]

    # -- registration -------------------------------------------------------------------------
    def admit(self, fingerprint: Fingerprint) -> None:
        """Raise PrivacyPolicyError unless the fingerprint meets this cloud's privacy policy."""
        check_privacy(fingerprint, self.space(fingerprint.space_id),
                      max_epsilon=self.max_epsilon)

    def admit_total(self, fingerprint: Fingerprint, total: tuple[float, float] | None) -> None:
        """Raise PrivacyPolicyError unless a query with replicates stays within this cloud's
        policy taken together (total: their composed (ε, δ))."""
        self.admit(fingerprint)
        check_replicates_total(total, max_epsilon=self.max_epsilon)

    def register_task(self, task: Mapping[str, Any], fingerprint: Fingerprint) -> None:
        """Store a task's metadata and its fingerprint (replacing an earlier one in the space)."""
        self.store.get_space(fingerprint.space_id)
        self.admit(fingerprint)
        if fingerprint.n_images < self.min_images:
            raise TooFewImagesError(f"task {fingerprint.task_id!r}: {fingerprint.n_images} "
                                    f"distinct images, below the minimum of {self.min_images}")
        row = {"task_id": fingerprint.task_id, "name": fingerprint.task_id, "modality": "",
               "keywords": [], "task_type": "", "n_classes": None, "owner": "",
               **{k: v for k, v in task.items() if v is not None},
               "n_images": fingerprint.n_images}
        self.store.put_fingerprint(fingerprint)
        self.store.put_tasks([row])

    def receive_part(self, part: TaskPart) -> dict[str, Any]:
        """Keep one site's part of a task; once all K parts are here, merge them, admit the
        merged fingerprint like any registration and store it (the parts are then dropped).

        Each part is checked on arrival (space, plan, its view count, this cloud's privacy
        policy, the release of the parts already held), so a part that could never merge is
        refused (400/403/409) and never held. Parts that race merge exactly once: a part file
        is published only if absent, and the merge goes to whoever claims it first (an
        exclusive file, so across replicas too); the others answer "merging"."""
        space = self.space(part.space_id)
        validate_part(part, space)
        check_part_privacy(part, space, max_epsilon=self.max_epsilon)
        elsewhere = [s for s in self.store.spaces_with_parts(part.task_id)
                     if s != part.space_id]
        if elsewhere:
            raise SpaceMismatchError(f"parts of {part.task_id!r} wait in space {elsewhere[0]}; "
                                     f"this part is in space {part.space_id}")
        with self._task_lock(part.space_id, part.task_id):
            held = self.store.parts_of(part.space_id, part.task_id)
            if not held:
                self._refuse_merged_again(part)
            if any(p.part == part.part for p in held):
                raise ConflictError(f"part {part.part} of {part.task_id!r} arrived before; "
                                    f"parts held: {sorted(p.part for p in held)}")
            try:
                check_compatible([*held, part])
            except SpaceMismatchError:
                raise
            except ConfigError as exc:  # another plan or release than the parts held
                raise ConflictError(str(exc)) from None
            self.store.put_part(part)  # ConflictError if another request published it first
            parts = self.store.parts_of(part.space_id, part.task_id)
            if len(parts) < part.plan.parts:
                return self._parts_state(part, parts, "waiting")
            if not self.store.claim_merge(part.space_id, part.task_id):
                return self._parts_state(part, parts, "merging")
            try:
                return self._merge(part, parts, space)
            finally:
                self.store.release_merge(part.space_id, part.task_id)

    def _merge(self, part: TaskPart, parts: list[TaskPart], space: FingerprintSpace
               ) -> dict[str, Any]:
        parts = sorted(parts, key=lambda p: p.part)
        partial, record = merge_parts(parts, space, min_images=self.min_images)
        fp = finalize(partial, task_id=part.task_id, n_images=part.plan.total_images,
                      privacy={**record, "parts_plan": part.plan.to_record()})
        self.register_task({"owner": f"{part.plan.parts} sites"}, fp)
        self.store.drop_parts(part.space_id, part.task_id)
        return self._parts_state(part, parts, "merged")

    def _refuse_merged_again(self, part: TaskPart) -> None:
        """A part of a plan whose merge is already registered is a late copy (a retry, a
        duplicate sent at the same moment): 409, so it never starts a second round. A new
        release of the task in parts takes a new plan (another seed)."""
        if not self.store.has_fingerprint(part.space_id, part.task_id):
            return
        merged = self.store.get_fingerprint(part.space_id, part.task_id)
        if (merged.privacy or {}).get("parts_plan") == part.plan.to_record():
            raise ConflictError(f"{part.task_id!r} was already merged from parts of this plan; "
                                "release it again in parts with another seed")

    def drop_held_parts(self, space_id: str, task_id: str) -> dict[str, Any]:
        """Clear the parts a task holds (an operator's way out of a task that cannot merge)."""
        self.space(space_id)
        with self._task_lock(space_id, task_id):
            dropped = self.store.drop_parts(space_id, task_id)
            self.store.release_merge(space_id, task_id)
        if not dropped:
            raise NotFoundError(f"no parts of {task_id!r} are held in space {space_id}")
        return {"task_id": task_id, "space_id": space_id, "state": "cleared",
                "dropped": dropped}

    def _task_lock(self, space_id: str, task_id: str) -> threading.Lock:
        with self._locks_lock:
            return self._task_locks.setdefault((space_id, task_id), threading.Lock())

    def parts_state(self, space_id: str, task_id: str) -> dict[str, Any]:
        held = self.store.parts_of(space_id, task_id)
        if held:
            return self._parts_state(held[0], held, "waiting")
        if self.store.has_fingerprint(space_id, task_id):
            return {"task_id": task_id, "space_id": space_id, "state": "merged"}
        raise NotFoundError(f"no parts of {task_id!r} in space {space_id}")

    @staticmethod
    def _parts_state(part: TaskPart, parts: list[TaskPart], state: str) -> dict[str, Any]:
        received = sorted(p.part for p in parts)
        return {"task_id": part.task_id, "space_id": part.space_id, "state": state,
                "parts": part.plan.parts, "received": received,
                "missing": sorted(set(range(1, part.plan.parts + 1)) - set(received))}

    def record_component(self, row: Mapping[str, Any]) -> None:
        look_up("component kind", row.get("kind"), COMPONENT_KINDS)
        if not self.has_task(row["task_id"]):
            raise NotFoundError(f"task {row['task_id']!r} is not registered; POST /v1/tasks first")
        self.store.put_components([dict(row)])

    def has_task(self, task_id: str) -> bool:
        return task_id in self.store.tasks().column("task_id").to_pylist()

    def tasks(self, space_id: str | None = None) -> list[dict[str, Any]]:
        rows = self.store.tasks().to_pylist()
        if space_id is not None:
            self.store.get_space(space_id)
            held = set(self.store.release_epsilons(space_id))  # one column read, not one per task
            rows = [r for r in rows if r["task_id"] in held]
        return sorted(rows, key=lambda r: r["task_id"])

    def outcome_model(self) -> OutcomeModel:
        """The learned ranking of the store's recorded outcomes (refit only when they change)."""
        return OutcomeModel.current(self.store)

    def record_outcomes(self, transfers: Sequence[Mapping[str, Any]],
                        baselines: Sequence[Mapping[str, Any]]) -> None:
        """A site's measured transfers into the same tables `rayfp import-paper` fills (a repeat
        of a key replaces its row: never counted twice). Both the target and the source must
        be known tasks."""
        known = set(self.store.tasks().column("task_id").to_pylist())
        for row in transfers:
            for role in ("target", "source"):
                if row[role] not in known:
                    raise NotFoundError(f"{role} task {row[role]!r} is not registered; "
                                        "POST /v1/tasks first")
        self.store.put_baselines(baselines)  # first: a transfer never lacks its baseline
        self.store.put_transfers(transfers)

    def derived(self, name: str, tables: Sequence[str], build: Callable[[dict], Any]) -> Any:
        """A value built from knowledge tables (e.g. recommend's Evidence from components and
        transfers), built again only when one of them changes. ``build`` gets each table as a
        pandas frame, by name."""
        version = tuple(self.store.knowledge_version(table) for table in tables)
        with self._derived_lock:
            cached = self._derived.get(name)
            if cached is None or cached[0] != version:
                frames = {table: getattr(self.store, table)().to_pandas() for table in tables}
                cached = self._derived[name] = (version, build(frames))
            return cached[1]

    def space_ids(self) -> list[str]:
        return self.store.space_ids()

    def spaces_summary(self) -> list[dict[str, Any]]:
        """Each space's backbone, dimensions and fingerprint count (GET /v1/spaces)."""
        return self.store.summary()["spaces"]


def ensure_kinds(kinds: Sequence[str]) -> list[str]:
    if not kinds:
        raise ConfigError(f"kinds: expected some of {list(COMPONENT_KINDS)}, got none")
    return [look_up("component kind", k, COMPONENT_KINDS) for k in kinds]
