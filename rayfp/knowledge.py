"""The knowledge cloud's data access: tasks, their fingerprints and components, nearest tasks.

Plain functions and one class over a Store; serve/ calls these, nothing here imports Ray.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rayfp.distance import DEFAULT_METRIC, get_metric
from rayfp.errors import ConfigError, NotFoundError, SpaceMismatchError, TooFewImagesError
from rayfp.extract import DEFAULT_MIN_IMAGES
from rayfp.fingerprint import Fingerprint, FingerprintSpace
from rayfp.index import ScreenedIndex
from rayfp.schemas import COMPONENT_KINDS
from rayfp.store import Store
from rayfp.wire import COUNT_DTYPES, decode_array

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


def fingerprint_from_payload(space: FingerprintSpace, *, task_id: str, counts: Any,
                             feature_sum: Any, n: int, n_images: int | None = None,
                             min_images: int = 1, counts_dtype: str = "u4",
                             compression: str = "none") -> Fingerprint:
    """Validate a client's fingerprint (wire form of rayfp.wire) against its space: shapes,
    non-negative finite integer counts summing to n per dimension, finite sums, n and image
    minimums."""
    if counts_dtype not in COUNT_DTYPES:
        raise ConfigError(f"counts_dtype: expected one of {sorted(COUNT_DTYPES)}, got "
                          f"{counts_dtype!r}")
    expected = space.dim * space.bins
    flat = decode_array(counts, COUNT_DTYPES[counts_dtype], "counts", items=expected,
                        compression=compression)
    sums = decode_array(feature_sum, "<f8", "feature_sum", items=space.dim,
                        compression=compression)
    if flat.size != expected:
        raise ConfigError(f"counts: expected {space.dim} x {space.bins} = {expected} values "
                          f"(dimension-major) for space {space.space_id}, got {flat.size}")
    if sums.size != space.dim:
        raise ConfigError(f"feature_sum: expected {space.dim} values, got {sums.size}")
    if flat.dtype.kind != "u" and (not np.isfinite(flat).all() or (flat < 0).any()
                                   or (flat != np.round(flat)).any()):  # lists: JSON numbers
        raise ConfigError("counts: expected non-negative finite integers")
    if not np.isfinite(sums).all():
        raise ConfigError("feature_sum: expected finite numbers")
    if n < 1:
        raise ConfigError(f"n: expected >= 1 samples, got {n}")
    matrix = flat.astype(np.int64).reshape(space.dim, space.bins)
    row_sums = matrix.sum(axis=1)
    if (row_sums != n).any():
        bad = int(np.argmax(row_sums != n))
        raise ConfigError(f"counts: every dimension must hold n = {n} samples; dimension {bad} "
                          f"holds {int(row_sums[bad])}")
    images = n if n_images is None else n_images
    if images < min_images:
        raise TooFewImagesError(f"n_images = {images} is below this server's minimum of "
                                f"{min_images} distinct images")
    return Fingerprint(task_id=task_id, space_id=space.space_id, counts=matrix,
                       feature_sum=sums.astype(np.float64), n_samples=int(n), n_images=int(images))


@dataclasses.dataclass
class _CachedIndex:
    version: tuple  # the space folder's stat when the index was brought up to date
    files: dict  # fingerprint file -> signature it had when read
    task_of: dict  # fingerprint file -> task id
    index: ScreenedIndex | None


class KnowledgeBase:
    """Tasks, fingerprints, components and imported distances of one store, with a cached
    linear-form index per space that is rebuilt when the space's fingerprints change."""

    def __init__(self, store: Store | str | os.PathLike, *,
                 min_images: int = DEFAULT_MIN_IMAGES) -> None:
        self.store = store if isinstance(store, Store) else Store(store)
        self.min_images = min_images
        self._indexes: dict[str, _CachedIndex] = {}
        self._spaces: dict[str, FingerprintSpace] = {}
        self._imported: tuple | None = None  # (file signature, frame, rows per key)

    def space(self, space_id: str) -> FingerprintSpace:
        """A space by id; cached, since a space's content is its id."""
        if space_id not in self._spaces:
            self._spaces[space_id] = self.store.get_space(space_id)
        return self._spaces[space_id]

    # -- spaces and indexes ---------------------------------------------------------------
    def _version(self, space_id: str) -> tuple:
        folder = self.store.root / "fingerprints" / f"space_id={space_id}"
        if not folder.is_dir():
            return (0,)
        stat = folder.stat()  # renames into the folder (our atomic writes) change its mtime
        return (stat.st_mtime_ns, stat.st_nlink, stat.st_size)

    def index(self, space_id: str) -> ScreenedIndex | None:
        """The space's index, brought up to date with the store: only fingerprint files that
        were added, replaced or removed since the last call are read (a registration into a
        10,000-task space reads one file, not 10,000)."""
        version = self._version(space_id)
        cached = self._indexes.get(space_id)
        if cached is not None and cached.version == version:
            return cached.index
        files = self.store.fingerprint_files(space_id)
        old_files = cached.files if cached is not None and cached.index is not None else {}
        changed = [path for path, signature in files.items() if old_files.get(path) != signature]
        removed = [cached.task_of[path] for path in old_files if path not in files]
        fresh = self.store.read_fingerprints(changed, space_id)
        task_of = {**(cached.task_of if old_files else {}),
                   **{path: fp.task_id for path, fp in zip(changed, fresh)}}
        if not files:
            index = None
        elif old_files:
            index = cached.index.with_changes(fresh, removed)
        else:
            index = ScreenedIndex(fresh)
        self._indexes[space_id] = _CachedIndex(version, files, task_of, index)
        return index

    # -- queries ------------------------------------------------------------------------------
    def nearest_to_fingerprint(self, target: Fingerprint, *, k: int = 3,
                               metric: str = DEFAULT_METRIC) -> list[Neighbour]:
        get_metric(metric)
        self.space(target.space_id)
        index = self.index(target.space_id)
        if index is None:
            return []
        return [Neighbour(t, d, f"fingerprint:{target.space_id}")
                for t, d in index.top_k_metric(target, k, metric)]

    def nearest_to_task(self, task_id: str, *, k: int = 3, metric: str = DEFAULT_METRIC,
                        space_id: str | None = None) -> list[Neighbour]:
        """By the task's fingerprint when it has one (in ``space_id`` or its only space),
        else from imported distance matrices (the paper's tasks)."""
        fps = [fp for fp in self.store.find_fingerprints(task_id)
               if space_id is None or fp.space_id == space_id]
        if len(fps) > 1:
            raise ConfigError(f"task {task_id!r} has fingerprints in spaces "
                              f"{[fp.space_id for fp in fps]}; choose one with space_id")
        if fps:
            return self.nearest_to_fingerprint(fps[0], k=k, metric=metric)
        return self._nearest_imported(task_id, k=k, metric=metric)

    def _imported_distances(self) -> tuple[Any, dict]:
        """The imported distance table and its row numbers per (selector, target), re-read
        only when the table file changes (reading it measured ~10 ms per query)."""
        signature = self.store.table_signature("imported_distances")
        if self._imported is None or self._imported[0] != signature:
            frame = self.store.read_table("imported_distances").to_pandas()
            groups = frame.groupby(["selector", "target"]).indices if len(frame) else {}
            self._imported = (signature, frame, groups)
        return self._imported[1], self._imported[2]

    def _nearest_imported(self, task_id: str, *, k: int, metric: str) -> list[Neighbour]:
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
    def register_task(self, task: Mapping[str, Any], fingerprint: Fingerprint) -> None:
        """Store a task's metadata and its fingerprint (replacing an earlier one in the space)."""
        self.store.get_space(fingerprint.space_id)
        if fingerprint.n_images < self.min_images:
            raise TooFewImagesError(f"task {fingerprint.task_id!r}: {fingerprint.n_images} "
                                    f"distinct images, below the minimum of {self.min_images}")
        row = {"task_id": fingerprint.task_id, "name": fingerprint.task_id, "modality": "",
               "keywords": [], "task_type": "", "n_classes": None, "owner": "",
               **{k: v for k, v in task.items() if v is not None},
               "n_images": fingerprint.n_images}
        self.store.put_fingerprint(fingerprint)
        self.store.upsert("tasks", [row])

    def record_component(self, row: Mapping[str, Any]) -> None:
        if row.get("kind") not in COMPONENT_KINDS:
            raise ConfigError(f"kind: expected one of {list(COMPONENT_KINDS)}, got "
                              f"{row.get('kind')!r}")
        if not self.has_task(row["task_id"]):
            raise NotFoundError(f"task {row['task_id']!r} is not registered; POST /v1/tasks first")
        self.store.upsert("components", [dict(row)])

    def has_task(self, task_id: str) -> bool:
        tasks = self.store.read_table("tasks").column("task_id").to_pylist()
        return task_id in tasks

    def tasks(self, space_id: str | None = None) -> list[dict[str, Any]]:
        rows = self.store.read_table("tasks").to_pylist()
        if space_id is not None:
            self.store.get_space(space_id)
            rows = [r for r in rows if self.store.has_fingerprint(space_id, r["task_id"])]
        for r in rows:
            r.pop("schema_version", None)
        return sorted(rows, key=lambda r: r["task_id"])


def space_as_dict(space: FingerprintSpace) -> dict[str, Any]:
    """Everything a client needs to fingerprint locally in this space."""
    return {"space_id": space.space_id, "backbone": space.backbone,
            "weights_sha256": space.weights_sha256, "preprocessing": dict(space.preprocessing),
            "dim": space.dim, "bins": space.bins, "edges_lo": space.edges_lo.tolist(),
            "edges_hi": space.edges_hi.tolist(), "reference": space.reference,
            "created_at": space.created_at}


def space_from_dict(data: Mapping[str, Any]) -> FingerprintSpace:
    space = FingerprintSpace(backbone=data["backbone"], weights_sha256=data["weights_sha256"],
                             preprocessing=data["preprocessing"], dim=data["dim"],
                             bins=data["bins"], edges_lo=np.asarray(data["edges_lo"]),
                             edges_hi=np.asarray(data["edges_hi"]),
                             reference=data.get("reference", ""),
                             created_at=data.get("created_at", ""))
    if data.get("space_id") and space.space_id != data["space_id"]:
        raise SpaceMismatchError(f"the space's content hashes to {space.space_id}, not "
                                 f"{data['space_id']}: it was altered in transit")
    return space


def ensure_kinds(kinds: Sequence[str]) -> list[str]:
    unknown = [k for k in kinds if k not in COMPONENT_KINDS]
    if unknown or not kinds:
        raise ConfigError(f"kinds: expected some of {list(COMPONENT_KINDS)}, got {list(kinds)}")
    return list(kinds)
