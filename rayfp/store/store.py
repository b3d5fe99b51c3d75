"""The store: Delta Lake tables that pandas, pyarrow, DuckDB and Ray Data read (docs/design.md §2).

    STORE/spaces/                      one row per space (immutable: its id is its content hash)
    STORE/fingerprints/space_id=<id>/  one row per task and space (Delta, partitioned by space)
    STORE/{tasks,components,transfers,baselines,failures,imported_distances}/   small tables
    STORE/parts/, STORE/site-only/     multi-site parts and a site's own view tables (.npz)

STORE is a local folder or an ``s3://`` URI (rayfp.store.delta: how writes commit and why Delta).
Every write is an append of its rows with a write stamp: a registration costs one small file and
one commit whatever the number of stored tasks, concurrent writers never lose a row, and a key
written again is replaced for every reader (the newest row of a key wins) while the older row
stays readable in the table's history until ``rayfp store compact`` folds it away.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayfp.core.fingerprint import Fingerprint, FingerprintSpace, task_key
from rayfp.core.parts import TaskPart
from rayfp.core.release import released_epsilon
from rayfp.core.replicates import ViewTable
from rayfp.errors import ConfigError, ConflictError, NotFoundError, SpaceMismatchError, StoreError
from rayfp.registry import look_up
from rayfp.store import schemas
from rayfp.store.delta import (
    AUTO_COMPACT_EVERY,
    COMPACT_TARGET_BYTES,
    STAMP,
    WRITE_ID,
    DeltaTables,
    check_not_legacy,
    newest_per_key,
    stamp_columns,
)

log = logging.getLogger(__name__)

SPACES_TABLE = "spaces"
VACUUM_RETENTION_HOURS = 168  # Delta's default: a week of history
MAX_FILES_PER_MERGE = 500  # one merge commit rewrites at most this many small files
FINGERPRINTS_TABLE = "fingerprints"
STORAGE_COLUMNS = ("schema_version",)  # kept by the store, never handed out by its readers
TASK_KEY = "task_key"

# Delta has no unsigned integers: counts are stored as int32 (a bin holding more than 2**31
# samples is refused), and read back as int64.
_FINGERPRINT_ROWS = pa.schema([
    pa.field(schemas.SPACE_ID, pa.string()), pa.field(TASK_KEY, pa.string()),
    *[pa.field(f.name, pa.list_(pa.int32())) if f.name == schemas.COUNTS else f
      for f in schemas.FINGERPRINTS]])
_STAMPED_ROWS = _FINGERPRINT_ROWS.append(pa.field(STAMP, pa.int64())).append(
    pa.field(WRITE_ID, pa.string()))  # as the table holds them
_COUNT_MAX = np.iinfo(np.int32).max


def _check_version(table: pa.Table, where: str) -> None:
    versions = set(table.column("schema_version").to_pylist()) if table.num_rows else set()
    if any(v is None or v > schemas.SCHEMA_VERSION for v in versions):
        raise StoreError(f"{where} has schema_version {sorted(versions, key=str)}; this rayfp "
                         f"reads up to {schemas.SCHEMA_VERSION}: upgrade rayfp")


def _fingerprints_of(table: pa.Table) -> list[Fingerprint]:
    """Fingerprints from rows of the fingerprint table (counts decoded without Python lists)."""
    out = []
    counts, sums = table.column(schemas.COUNTS), table.column(schemas.FEATURE_SUM)
    scalars = table.drop_columns([schemas.COUNTS, schemas.FEATURE_SUM]).to_pylist()
    for i, row in enumerate(scalars):
        row[schemas.COUNTS] = counts[i].values.to_numpy(zero_copy_only=False)
        row[schemas.FEATURE_SUM] = sums[i].values.to_numpy(zero_copy_only=False)
        out.append(Fingerprint.from_record(row))
    return out


class Store:
    """Typed access to a store (created on first write): a local folder or an s3:// URI."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.tables = DeltaTables(root)
        self.object_store = self.tables.object_store
        self.root: Path | str = self.tables.root if self.object_store else Path(root)
        if not self.object_store:
            check_not_legacy(self.root)
        self._spaces: dict[str, FingerprintSpace] = {}
        self._read_cache: dict[str, tuple[int, pa.Table]] = {}
        self._epsilons: dict[str, tuple[int | None, dict]] = {}  # space -> (version, ε by task)
        self._cache_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def _local(self, what: str) -> Path:
        if self.object_store:
            raise ConfigError(f"{what} are kept in a local store folder; {self.root} is an "
                              f"object store")
        return self.root

    # -- spaces -------------------------------------------------------------------------------
    def _space_rows(self) -> pa.Table:
        return self._newest(SPACES_TABLE, (schemas.SPACE_ID,), schemas.SPACES)

    def put_space(self, space: FingerprintSpace) -> str:
        if space.space_id in self.space_ids():  # immutable: its id is the hash of its content
            return space.space_id
        row = {**space.to_record(), "schema_version": schemas.SCHEMA_VERSION}
        row["preprocessing"] = json.dumps(row["preprocessing"], sort_keys=True)
        self.tables.append(SPACES_TABLE,
                           stamp_columns(pa.Table.from_pylist([row], schema=schemas.SPACES)))
        self._spaces[space.space_id] = space
        return space.space_id

    def space_ids(self) -> list[str]:
        return sorted(self._space_rows().column(schemas.SPACE_ID).to_pylist())

    def get_space(self, space_id: str) -> FingerprintSpace:
        if space_id in self._spaces:
            return self._spaces[space_id]
        rows = self._space_rows()
        match = rows.filter(pc.equal(rows[schemas.SPACE_ID], space_id))
        if match.num_rows == 0:
            raise NotFoundError(
                f"space {space_id!r} is not in store {self.root}; known spaces: "
                f"{self.space_ids()}. Create one with `rayfp edges PATH... --store {self.root}`")
        try:
            space = FingerprintSpace.from_record(match.to_pylist()[0])
        except SpaceMismatchError as exc:
            raise StoreError(f"{self.tables.uri(SPACES_TABLE)}: {exc}") from None
        self._spaces[space_id] = space
        return space

    # -- fingerprints -------------------------------------------------------------------------
    def put_fingerprint(self, fp: Fingerprint) -> None:
        """Write (or replace) the fingerprint of fp.task_id in fp.space_id: one commit."""
        self.put_fingerprints([fp])

    def put_fingerprints(self, fps: Sequence[Fingerprint]) -> None:
        """Write (or replace) several fingerprints in one commit (one data file per space)."""
        rows = []
        for fp in fps:
            self.get_space(fp.space_id)  # refuse fingerprints of unknown spaces
            counts = np.asarray(fp.counts)
            if counts.min() < 0 or counts.max() > _COUNT_MAX:
                raise ConfigError(f"counts of {fp.task_id!r} must lie in [0, {_COUNT_MAX}]")
            rows.append({**fp.to_record(), schemas.COUNTS: counts.astype(np.int32).ravel(),
                         TASK_KEY: task_key(fp.task_id),
                         "privacy": json.dumps(dict(fp.privacy), sort_keys=True),
                         "schema_version": schemas.SCHEMA_VERSION})
        if not rows:
            return
        table = pa.Table.from_pydict({f.name: [row[f.name] for row in rows]
                                      for f in _FINGERPRINT_ROWS}, schema=_FINGERPRINT_ROWS)
        self.tables.append(FINGERPRINTS_TABLE, stamp_columns(table),
                           partition_by=[schemas.SPACE_ID])
        for space_id in sorted({fp.space_id for fp in fps}):
            self._after_write(FINGERPRINTS_TABLE, space_id)

    def delete_fingerprint(self, space_id: str, task_id: str) -> int:
        """Remove a task's fingerprint from a space (one commit; older versions keep it until
        the table is vacuumed). Returns the number of rows removed."""
        return self.tables.delete(FINGERPRINTS_TABLE, f"{schemas.SPACE_ID} = '{_hex(space_id)}' "
                                  f"AND {TASK_KEY} = '{task_key(task_id)}'")

    def fingerprint_version(self) -> int | None:
        """The fingerprint table's version: changes with every write (None: nothing written)."""
        return self.tables.version(FINGERPRINTS_TABLE)

    def fingerprint_files(self, space_id: str) -> pa.Table:
        """The space's live data files with their row counts and task-key ranges, from the
        table's log alone (rayfp.store.feed reads only the files it has not seen)."""
        self.get_space(space_id)
        files = self.tables.files(FINGERPRINTS_TABLE, (schemas.SPACE_ID, space_id))
        if files.num_rows == 0:
            return pa.table({"path": pa.array([], pa.string()), "num_records": pa.array(
                [], pa.int64()), "min_key": pa.array([], pa.string()),
                "max_key": pa.array([], pa.string())})
        return pa.table({"path": files["path"], "num_records": files["num_records"],
                         "min_key": files[f"min.{TASK_KEY}"],
                         "max_key": files[f"max.{TASK_KEY}"]})

    def read_fingerprint_keys(self, paths: Sequence[str]
                              ) -> list[list[tuple[str, str, tuple[int, str]]]]:
        """(task id, task key, write stamp) of every row of each data file: three small
        columns, the counts are not decoded."""
        out = []
        for table in self.tables.read_files(FINGERPRINTS_TABLE, paths,
                                            [schemas.TASK_ID, TASK_KEY, STAMP, WRITE_ID]):
            out.append(list(zip(table[schemas.TASK_ID].to_pylist(), table[TASK_KEY].to_pylist(),
                                zip(table[STAMP].to_pylist(), table[WRITE_ID].to_pylist()))))
        return out

    def read_fingerprint_files(self, paths: Sequence[str], space_id: str, wanted=None
                               ) -> list[tuple[str, Fingerprint, tuple[int, str]]]:
        """(file, fingerprint, write stamp) of the rows of these data files; only the rows
        whose (task id, stamp) ``wanted`` accepts are decoded (all when None)."""
        out = []
        for path, table in zip(paths, self.tables.read_files(FINGERPRINTS_TABLE, paths)):
            _check_version(table, f"{self.tables.uri(FINGERPRINTS_TABLE)}/{path}")
            table = _as_fingerprint_rows(table, space_id)
            stamps = list(zip(table.column(STAMP).to_pylist(),
                              table.column(WRITE_ID).to_pylist()))
            if wanted is not None:
                keep = [wanted(task, stamp) for task, stamp in
                        zip(table.column(schemas.TASK_ID).to_pylist(), stamps)]
                if not all(keep):  # a filter copies every count: only when it drops rows
                    table = table.filter(pa.array(keep, pa.bool_()))
                    stamps = [stamp for stamp, kept in zip(stamps, keep) if kept]
            for fp, stamp in zip(_fingerprints_of(table.drop_columns([STAMP, WRITE_ID])),
                                 stamps):
                out.append((path, fp, stamp))
        return out

    def _fingerprint_rows(self, space_id: str, *, version: int | None = None,
                          task_id: str | None = None,
                          columns: Sequence[str] | None = None) -> pa.Table:
        """The newest row of each task of a space (optionally one task, or at an old version,
        or only some columns)."""
        self.get_space(space_id)
        if task_id is not None and version is None:
            table = self._rows_of_task(space_id, task_id)
        else:
            wanted = None if columns is None else [
                schemas.TASK_ID, "schema_version", *columns, STAMP, WRITE_ID]
            table = self.tables.read(FINGERPRINTS_TABLE, version=version,
                                     partition=(schemas.SPACE_ID, space_id), columns=wanted)
            if table is None:
                return _FINGERPRINT_ROWS.empty_table()
            table = _as_fingerprint_rows(table, space_id, wanted)
            if task_id is not None:
                table = table.filter(pc.equal(table[schemas.TASK_ID], task_id))
        _check_version(table, self.tables.uri(FINGERPRINTS_TABLE))
        return newest_per_key(table, (schemas.TASK_ID,))

    def _rows_of_task(self, space_id: str, task_id: str) -> pa.Table:
        """A task's rows, reading only the files whose key range holds its key (the log's
        statistics: with one task per file, exactly the task's own files)."""
        key = task_key(task_id)
        files = self.fingerprint_files(space_id)
        mine = files.filter(pc.and_(pc.less_equal(files["min_key"], key),
                                    pc.greater_equal(files["max_key"], key)))
        tables = [_as_fingerprint_rows(t, space_id) for t in self.tables.read_files(
            FINGERPRINTS_TABLE, mine["path"].to_pylist())]
        if not tables:
            return _STAMPED_ROWS.empty_table()
        table = pa.concat_tables(tables)
        return table.filter(pc.equal(table[schemas.TASK_ID], task_id))

    def has_fingerprint(self, space_id: str, task_id: str) -> bool:
        return self._fingerprint_rows(space_id, task_id=task_id).num_rows > 0

    def get_fingerprint(self, space_id: str, task_id: str) -> Fingerprint:
        rows = self._fingerprint_rows(space_id, task_id=task_id)
        if rows.num_rows == 0:
            raise NotFoundError(f"no fingerprint of task {task_id!r} in space {space_id} "
                                f"(store {self.root}); run `rayfp fingerprint ... --task-id "
                                f"{task_id} --space {space_id}`")
        return _fingerprints_of(rows)[0]

    def fingerprints(self, space_id: str, *, version: int | None = None) -> list[Fingerprint]:
        """Every fingerprint of a space, sorted by task id; at an older version of the table
        when given (what the space held then: history without copies)."""
        return sorted(_fingerprints_of(self._fingerprint_rows(space_id, version=version)),
                      key=lambda fp: fp.task_id)

    def history(self) -> list[dict[str, Any]]:
        """The fingerprint table's commits, newest first (version, timestamp, operation)."""
        table = self.tables.table(FINGERPRINTS_TABLE)
        return [] if table is None else table.history()

    def release_epsilons(self, space_id: str) -> dict[str, float | None]:
        """Task id -> the ε its fingerprint was released at (None: exact counts); read again
        only after the fingerprint table changed (`rayfp show`, the cloud's /v1/spaces)."""
        version = self.fingerprint_version()
        cached = self._epsilons.get(space_id)
        if cached is not None and cached[0] == version:
            return dict(cached[1])
        rows = self._fingerprint_rows(space_id, columns=["privacy"])
        epsilons = {}
        for task, privacy in sorted(zip(rows[schemas.TASK_ID].to_pylist(),
                                        rows["privacy"].to_pylist())):
            try:
                epsilons[task] = released_epsilon(json.loads(privacy or "{}"))
            except (StoreError, ValueError) as exc:  # reported, never fatal for the others
                log.warning("space %s, task %r: %s; left out", space_id, task, exc)
        self._epsilons[space_id] = (version, epsilons)
        self._epsilons[space_id] = (version, epsilons)
        return dict(epsilons)

    # -- parts of tasks pooled over several sites, kept until all have arrived ----------------
    def _parts_dir(self, space_id: str, task_id: str) -> Path:
        return (self._local("multi-site task parts") / "parts" / f"{schemas.SPACE_ID}={space_id}"
                / task_key(task_id))

    def put_part(self, part: TaskPart) -> Path:
        """Keep a part until the others arrive; ConflictError if this part is already held
        (of two writers of one part, even in two processes, exactly one succeeds)."""
        self._local("multi-site task parts")
        self.get_space(part.space_id)
        path = self._parts_dir(part.space_id, part.task_id) / f"part-{part.part}.npz"
        try:
            return part.save(path, exclusive=True)
        except FileExistsError:
            raise ConflictError(f"part {part.part} of {part.task_id!r} arrived before") from None

    MERGE_CLAIM = "merging"
    STALE_CLAIM_S = 600.0  # a claim older than this is of a writer that died mid-merge

    def claim_merge(self, space_id: str, task_id: str) -> bool:
        """True for exactly one caller once all parts are here (an exclusive file: across
        processes too); the merge then belongs to it, and release_merge ends the claim."""
        path = self._parts_dir(space_id, task_id) / self.MERGE_CLAIM
        try:
            if time.time() - path.stat().st_mtime > self.STALE_CLAIM_S:
                path.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False

    def release_merge(self, space_id: str, task_id: str) -> None:
        (self._parts_dir(space_id, task_id) / self.MERGE_CLAIM).unlink(missing_ok=True)

    def parts_of(self, space_id: str, task_id: str) -> list[TaskPart]:
        folder = self._parts_dir(space_id, task_id)
        return [TaskPart.load(p) for p in sorted(folder.glob("part-*.npz"))] \
            if folder.is_dir() else []

    def spaces_with_parts(self, task_id: str) -> list[str]:
        """The spaces holding parts of this task that wait for the rest."""
        name = task_key(task_id)
        if self.object_store:
            return []
        root = self.root / "parts"
        return sorted(folder.parent.name.split("=", 1)[1]
                      for folder in root.glob(f"{schemas.SPACE_ID}=*/{name}")
                      if any(folder.glob("part-*.npz"))) if root.is_dir() else []

    def drop_parts(self, space_id: str, task_id: str) -> int:
        """Remove the held parts of a task (after its merge, or on an operator's request);
        returns how many there were."""
        folder = self._parts_dir(space_id, task_id)
        paths = list(folder.glob("part-*.npz")) if folder.is_dir() else []
        for path in paths:
            path.unlink(missing_ok=True)
        return len(paths)

    # -- the site's own view tables (never sent; rayfp.core.replicates) -----------------------
    SITE_ONLY = "site-only"

    def _views_path(self, space_id: str, task_id: str) -> Path:
        name = task_key(task_id) + ".npz"
        return self._local("view tables") / self.SITE_ONLY / "views" / f"{schemas.SPACE_ID}={space_id}" / name

    def put_views(self, views: ViewTable) -> Path:
        self.get_space(views.space_id)
        return views.save(self._views_path(views.space_id, views.task_id))

    def view_table_files(self) -> list[Path]:
        """Every site-only view table of a local store ([] on object storage: none are kept
        there)."""
        if self.object_store:
            return []
        folder = self.root / self.SITE_ONLY / "views"
        return sorted(folder.rglob("*.npz")) if folder.is_dir() else []

    def get_views(self, space_id: str, task_id: str) -> ViewTable:
        path = self._views_path(space_id, task_id)
        if not path.is_file():
            raise NotFoundError(f"no view table of task {task_id!r} in space {space_id} (store "
                                f"{self.root}); fingerprint it with --keep-views")
        return ViewTable.load(path)

    def find_fingerprints(self, task_id: str) -> list[Fingerprint]:
        """The fingerprints of one task in every space it has one."""
        found = [self._fingerprint_rows(s, task_id=task_id) for s in self.space_ids()]
        return [_fingerprints_of(rows)[0] for rows in found if rows.num_rows]

    def fingerprint_of(self, task_id: str, space_id: str | None = None) -> Fingerprint:
        """The task's fingerprint in ``space_id``, or in its only space when none is given."""
        if space_id:
            return self.get_fingerprint(space_id, task_id)
        found = self.find_fingerprints(task_id)
        if not found:
            raise NotFoundError(f"store {self.root} has no fingerprint of task {task_id!r}")
        if len(found) > 1:
            raise ConfigError(f"task {task_id!r} has fingerprints in {len(found)} spaces "
                              f"{[fp.space_id for fp in found]}; choose one with --space")
        return found[0]

    # -- small upserted tables ----------------------------------------------------------------
    def _newest(self, name: str, key: Sequence[str], schema: pa.Schema) -> pa.Table:
        """The newest row of each key of a table, cached until the table's next commit."""
        version = self.tables.version(name)
        if version is None:
            return schema.empty_table()
        with self._cache_lock:
            cached = self._read_cache.get(name)
        if cached is not None and cached[0] == version:
            return cached[1]
        table = self.tables.read(name, version=version)
        _check_version(table, self.tables.uri(name))
        newest = newest_per_key(table, key).select(schema.names).cast(schema)
        with self._cache_lock:
            self._read_cache[name] = (version, newest)
        return newest

    # -- the knowledge tables by name: rows as written, without storage columns -----------------
    def _rows(self, name: str) -> pa.Table:
        table = self.read_table(name)
        return table.drop_columns([c for c in STORAGE_COLUMNS if c in table.column_names])

    def tasks(self) -> pa.Table:
        """What is known of each task (schemas.TASKS)."""
        return self._rows("tasks")

    def components(self) -> pa.Table:
        """Pipeline components measured on tasks (schemas.COMPONENTS)."""
        return self._rows("components")

    def transfers(self) -> pa.Table:
        """Measured source -> target outcomes (schemas.TRANSFERS)."""
        return self._rows("transfers")

    def baselines(self) -> pa.Table:
        """No-transfer outcomes per target (schemas.BASELINES)."""
        return self._rows("baselines")

    def imported_distances(self) -> pa.Table:
        """Distances imported from elsewhere, by selector (schemas.IMPORTED_DISTANCES)."""
        return self._rows("imported_distances")

    def releases(self) -> pa.Table:
        """The site's privacy ledger: one row per release (schemas.RELEASES)."""
        return self._rows("releases")

    def put_tasks(self, rows: Sequence[Mapping[str, Any]]) -> int:
        return self.upsert("tasks", rows)

    def put_components(self, rows: Sequence[Mapping[str, Any]]) -> int:
        return self.upsert("components", rows)

    def put_transfers(self, rows: Sequence[Mapping[str, Any]]) -> int:
        return self.upsert("transfers", rows)

    def put_baselines(self, rows: Sequence[Mapping[str, Any]]) -> int:
        return self.upsert("baselines", rows)

    def put_imported_distances(self, rows: Sequence[Mapping[str, Any]]) -> int:
        return self.upsert("imported_distances", rows)

    def put_releases(self, rows: Sequence[Mapping[str, Any]]) -> int:
        return self.upsert("releases", rows)

    def put_failures(self, rows: Sequence[Mapping[str, Any]]) -> int:
        return self.upsert("failures", rows)

    def knowledge_version(self, name: str) -> int | None:
        """The version of one knowledge table (changes with every write): for readers that
        cache what they derived from it."""
        return self.table_signature(name)

    def table_signature(self, name: str) -> int | None:
        """The table's Delta version (None before its first write): changes with every write."""
        return self.tables.version(_table_spec(name).name)

    def read_table(self, name: str) -> pa.Table:
        """A whole small table (empty with the right schema when nothing was written yet)."""
        spec = _table_spec(name)
        return self._newest(spec.name, spec.key, spec.schema)

    def upsert(self, name: str, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert rows; a row whose key columns match an existing row replaces it (one commit,
        an append: the newest row of a key wins)."""
        spec = _table_spec(name)
        rows = [{**row, "schema_version": schemas.SCHEMA_VERSION} for row in rows]
        try:
            new = pa.Table.from_pylist(rows, schema=spec.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise ConfigError(f"rows for table {name!r} do not match its schema "
                              f"{spec.schema.names}: {exc}") from exc
        if rows:
            self.tables.append(spec.name, stamp_columns(new))
            self._after_write(spec.name)
        return len(rows)

    # -- maintenance --------------------------------------------------------------------------
    def _keys(self) -> dict[str, tuple[str, ...]]:
        return {SPACES_TABLE: (schemas.SPACE_ID,),
                FINGERPRINTS_TABLE: (schemas.SPACE_ID, schemas.TASK_ID),
                **{spec.name: spec.key for spec in schemas.TABLES.values()}}

    def compact(self, *, superseded: bool = True) -> dict[str, int | None]:
        """Merge each table's small files into one (per space) and, with ``superseded``, drop
        the rows a newer row of their key replaced. Safe beside writers: each step is one
        commit that fails, changing nothing, if a concurrent commit added data; it is then
        planned again, a few times. History stays readable until the table is vacuumed.
        Returns the superseded rows dropped per table; None where it gave way to writers
        (run it again when they are quieter)."""
        dropped: dict[str, int | None] = {}
        for name, key in self._keys().items():
            spaces = self.space_ids() if name == FINGERPRINTS_TABLE else [None]
            try:
                dropped[name] = sum(self._compact_part(name, key, space_id, superseded)
                                    for space_id in spaces)
            except StoreError as exc:
                log.warning("compaction of %s gave way to concurrent writers: %s", name, exc)
                dropped[name] = None
        return dropped

    def vacuum(self, retention_hours: int = VACUUM_RETENTION_HOURS) -> dict[str, int]:
        """Delete the data files no version younger than ``retention_hours`` needs: history
        older than that becomes unreadable. Below a week, a writer slower than the retention
        could lose a file it has written and not yet committed. Returns files deleted per
        table."""
        if retention_hours < 0:
            raise ConfigError(f"retention must be >= 0 hours, got {retention_hours}")
        deleted = {}
        for name in self._keys():
            table = self.tables.table(name)
            if table is not None:
                deleted[name] = len(table.vacuum(
                    retention_hours=retention_hours, dry_run=False,
                    enforce_retention_duration=retention_hours >= VACUUM_RETENTION_HOURS))
                self.tables.touched(name)
        return deleted

    def forget_history(self) -> None:
        """Every table's log before its current version deleted (after ``vacuum(0)``): no
        older version, and none of its column statistics, stays readable."""
        for name in self._keys():
            self.tables.forget_history(name)

    def _after_write(self, name: str, space_id: str | None = None) -> None:
        """Every AUTO_COMPACT_EVERY commits the writer that made it merges small files, so a
        registration's cost stays flat as the table grows. Best effort: under contention it
        gives way (and the next one tries again)."""
        version = self.tables.version(name)
        if version is not None and version > 0 and version % AUTO_COMPACT_EVERY == 0:
            try:
                self._compact_part(name, self._keys()[name], space_id, False, attempts=1)
            except StoreError as exc:
                log.info("merging small files of %s skipped: %s", name, exc)

    def _compact_part(self, name: str, key: Sequence[str], space_id: str | None,
                      superseded: bool, *, attempts: int = 5) -> int:
        partition = (schemas.SPACE_ID, space_id) if space_id is not None else None
        for attempt in range(1, attempts + 1):
            files = self.tables.files(name, partition)
            if files.num_rows == 0:
                return 0
            small = files.filter(pc.less(files["size_bytes"], COMPACT_TARGET_BYTES))
            small_paths = small["path"].to_pylist()[:MAX_FILES_PER_MERGE]
            stale: set[str] = set()
            if superseded:
                keys = self.tables.read(name, partition=partition,
                                        columns=[*key, STAMP, WRITE_ID])
                newest = newest_per_key(keys.append_column("_id", keys[WRITE_ID]), key)
                stale = set(keys[WRITE_ID].to_pylist()) - set(newest["_id"].to_pylist())
            if len(small_paths) < 2 and not stale:
                return 0
            rows = self.tables.read_files(name, small_paths)
            merged = pa.concat_tables(rows, promote_options="permissive") if rows else None
            ids = set(stale)
            if merged is not None:
                if partition is not None:
                    merged = merged.append_column(partition[0], pa.array(
                        [partition[1]] * merged.num_rows, pa.string()))
                ids |= set(merged[WRITE_ID].to_pylist())
                merged = merged.filter(pa.array([w not in stale for w in
                                                 merged[WRITE_ID].to_pylist()], pa.bool_()))
            try:
                self.tables.overwrite_rows(name, merged, sorted(ids), partition=partition)
                return len(stale)
            except StoreError:
                if attempt == attempts:
                    raise
                time.sleep(0.05 * attempt)
        return 0

    def summary(self, *, privacy: bool = False) -> dict[str, Any]:
        """Counts per space and per table, for `rayfp show`; with ``privacy``, each space's
        releases too (how many exact, how many differentially private, and their ε)."""
        spaces = []
        for space_id in self.space_ids():
            space = self.get_space(space_id)
            epsilons = self.release_epsilons(space_id)
            spaces.append({"space_id": space_id, "backbone": space.backbone, "dim": space.dim,
                           "bins": space.bins, "fingerprints": len(epsilons),
                           "reference": space.reference, "created_at": space.created_at})
            if privacy:
                spaces[-1]["privacy"] = privacy_summary(epsilons)
        tables = {name: self.read_table(name).num_rows for name in schemas.TABLES}
        return {"store": str(self.root), "spaces": spaces, "tables": tables}


def _as_fingerprint_rows(table: pa.Table, space_id: str,
                         columns: Sequence[str] | None = None) -> pa.Table:
    """Rows of the fingerprint table as written, in its column order (a data file read alone
    lacks its partition column)."""
    if schemas.SPACE_ID in table.column_names:
        table = table.drop_columns([schemas.SPACE_ID])
    table = table.add_column(0, schemas.SPACE_ID, pa.array([space_id] * table.num_rows,
                                                           pa.string()))
    names = _STAMPED_ROWS.names
    return table.select([n for n in names if columns is None or n in columns
                         or n == schemas.SPACE_ID])


def _hex(value: str) -> str:
    """A value spliced into a Delta predicate: only ids of hex digits are (no quoting needed)."""
    if not value or any(c not in "0123456789abcdef" for c in value):
        raise StoreError(f"expected a hex id, got {value!r}")
    return value


def privacy_summary(epsilons: dict[str, float | None]) -> dict[str, Any]:
    """How a space's fingerprints were released: counts of exact and private ones, ε range."""
    private = [e for e in epsilons.values() if e is not None]
    return {"exact": len(epsilons) - len(private), "private": len(private),
            "epsilon_min": min(private, default=None), "epsilon_max": max(private, default=None)}


def _table_spec(name: str) -> schemas.TableSpec:
    return schemas.TABLES[look_up("table", name, schemas.TABLES)]
