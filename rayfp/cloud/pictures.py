"""Pictures over HTTP: a space's clustered distance map and a task's fingerprint as PNG, drawn
from the replica's own index (no store read; exact distances from its exact path) and cached
per index version, so a repeated request is a dictionary lookup. Bounded, so the cost does not
grow with the cloud: a space's map shows its first SPACE_MAP_TASKS tasks by id, a task's map
the task and its NEIGHBOURHOOD - 1 nearest, named (BENCHMARKS.md "Pictures over HTTP")."""

from __future__ import annotations

import collections
import io
import threading

from rayfp.cloud.knowledge import KnowledgeBase
from rayfp.core.distance import distance_matrix, get_metric
from rayfp.errors import NotFoundError

# Measured on 2 cores at D = 512, B = 100: a 100-task map is ~60 ms of distances and ~90 ms of
# drawing; names are most of a map's drawing time, so a named map stays at 30 tasks.
SPACE_MAP_TASKS = 100
NEIGHBOURHOOD = 30
CACHED_PICTURES = 64


class Pictures:
    def __init__(self, kb: KnowledgeBase, *, space_map_tasks: int = SPACE_MAP_TASKS,
                 neighbourhood: int = NEIGHBOURHOOD) -> None:
        self.kb = kb
        self.space_map_tasks, self.neighbourhood = space_map_tasks, neighbourhood
        # key -> (the index it was drawn from, PNG bytes); valid while that index is current.
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def _cached(self, key: tuple, index, draw) -> tuple[bytes, bool]:
        """(PNG, whether it came from the cache)."""
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] is index:
                self._cache.move_to_end(key)
                return hit[1], True
        png = draw()
        with self._lock:
            self._cache[key] = (index, png)
            while len(self._cache) > CACHED_PICTURES:
                self._cache.popitem(last=False)
        return png, False

    def _index(self, space_id: str):
        self.kb.space(space_id)  # NotFoundError for an unknown space
        index = self.kb.index(space_id)
        if index is None or not len(index):
            raise NotFoundError(f"space {space_id!r} has no fingerprinted task to draw")
        return index

    def distances(self, space_id: str, metric: str, task_id: str | None = None
                  ) -> tuple[bytes, bool]:
        """The clustered map of the space's first tasks by id, or of ``task_id`` and its
        nearest."""
        from rayfp.pictures.plots import plot_distances

        index = self._index(space_id)

        def draw() -> bytes:
            every = sorted(index.task_ids)
            if task_id is None:
                chosen = every[:self.space_map_tasks]
            else:
                if index.fingerprint_of(task_id) is None:
                    raise NotFoundError(f"task {task_id!r} has no fingerprint in space "
                                        f"{space_id!r}")
                near = self.kb.nearest_to_task(task_id, k=self.neighbourhood - 1,
                                               metric=metric, space_id=space_id)
                chosen = [task_id] + [n.task_id for n in near]
            fps = [index.fingerprint_of(t) for t in chosen]
            weighting = get_metric(metric).weighting
            matrix = (index.distances_to(fps, chosen, weighting=weighting).T  # (source, target)
                      if weighting is not None else distance_matrix(fps, fps, metric))
            shown = (f"{len(chosen)} of {len(every)} tasks" if len(chosen) < len(every)
                     else f"{len(every)} tasks")
            where = f"{task_id} and its nearest, " if task_id else ""
            out = io.BytesIO()
            plot_distances(matrix, chosen, out, metric=metric, fmt="png", target_labels=False,
                           title=f"space {space_id}: {where}{shown}\n{metric} per target, "
                                 "z-scored (lower = more similar), clustered")
            return out.getvalue()

        return self._cached(("distances", space_id, metric, task_id), index, draw)

    def fingerprint(self, task_id: str, space_id: str | None = None) -> tuple[bytes, bool]:
        from rayfp.pictures.plots import plot_fingerprint

        fp = self.kb.stored_fingerprint(task_id, space_id)
        if fp is None:
            raise NotFoundError(f"task {task_id!r} has no fingerprint here (a task imported "
                                "from the paper has none)")
        index = self._index(fp.space_id)

        def draw() -> bytes:
            out = io.BytesIO()
            plot_fingerprint(fp, out, fmt="png")
            return out.getvalue()

        return self._cached(("fingerprint", fp.space_id, task_id), index, draw)
