"""The store's tables as Delta Lake tables (delta-rs: no JVM, docs/design.md §2).

Why Delta Lake: each write is one atomic commit to the table's log, on a local disk (an
atomic rename-if-absent) and on S3 (a conditional put), so many writers on many machines never
lose or half-write a row. The data files stay plain Parquet (pandas, pyarrow, DuckDB, Ray Data's
`read_delta`), and every old version of a table stays readable until it is vacuumed. Iceberg
(pyiceberg) needs a catalog service to commit; a Delta table needs only its folder.

rayfp only appends: a registration adds one small file and one log entry, whatever the size of
the table. Rows carry the time they were written (``written_at_ns``, ties broken by
``write_id``), and a reader keeps the newest row of each key, so re-writing a key replaces it
without rewriting anything (``compact`` folds the superseded rows away).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayfp.errors import StoreError

STAMP = "written_at_ns"  # when the row was written: the newest row of a key wins
WRITE_ID = "write_id"  # breaks a tie between two writers stamping the same nanosecond

# How stale a reader of an object store may be about other writers' commits (listing the log
# is an HTTP request); its own writes it sees at once.
OBJECT_STORE_POLL_S = 1.0

# Small files are merged every this many commits (Store.compact), into files of up to this
# size (a merged file is not rewritten once it is this large): an append costs time in the
# number of live files (delta-rs; BENCHMARKS.md "Store writes").
AUTO_COMPACT_EVERY = 100
COMPACT_TARGET_BYTES = 32 * 2**20

# Concurrent commits to one table race for the next log version; the loser re-reads the log and
# tries again; 8 writers appending in a loop lose races rarely (tests/store/test_store.py).
COMMIT_ATTEMPTS = 40

log = logging.getLogger(__name__)

_last_stamp = 0
_stamp_lock = threading.Lock()


def next_stamp() -> int:
    """Nanoseconds since the epoch, strictly increasing within this process (a re-write in the
    same process always wins over the row it replaces, even if the clock steps back)."""
    global _last_stamp
    with _stamp_lock:
        _last_stamp = max(time.time_ns(), _last_stamp + 1)
        return _last_stamp


def stamp_columns(table: pa.Table) -> pa.Table:
    """The table with its write stamps appended (one stamp per write, one id per row)."""
    stamp = next_stamp()
    table = table.append_column(STAMP, pa.array([stamp] * table.num_rows, pa.int64()))
    return table.append_column(WRITE_ID, pa.array([uuid.uuid4().hex for _ in
                                                    range(table.num_rows)], pa.string()))


def is_object_store(root: str | os.PathLike) -> bool:
    return "://" in str(root) and not str(root).startswith("file://")


def storage_options(root: str) -> dict[str, str] | None:
    """delta-rs options for an object store, from the usual AWS_* environment variables
    (delta-rs reads them too; a plain-HTTP endpoint must be allowed explicitly)."""
    if not is_object_store(root):
        return None
    options = {name: os.environ[name] for name in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION")
        if os.environ.get(name)}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    # S3 has had conditional writes since 2024: delta-rs commits with If-None-Match, which is
    # what makes concurrent writers safe without a lock service.
    options.setdefault("AWS_CONDITIONAL_PUT", os.environ.get("AWS_CONDITIONAL_PUT", "etag"))
    return options


def _is_conflict(exc: Exception) -> bool:
    from deltalake.exceptions import CommitFailedError

    text = str(exc).lower()
    return isinstance(exc, CommitFailedError) or "already exists" in text \
        or "version" in text and "exists" in text


class DeltaTables:
    """The Delta tables under one store root (a local folder or an ``s3://`` URI), each loaded
    once and brought up to date incrementally (only log entries since the last read)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.object_store = is_object_store(root)
        self.root = str(root).rstrip("/") if self.object_store else str(Path(root).absolute())
        self.options = storage_options(self.root)
        self._tables: dict[str, object] = {}
        self._looked: dict[str, float | bool] = {}  # table -> when its log was last read
        self._lock = threading.Lock()
        self._filesystem: tuple[pafs.FileSystem, str] | None = None

    def uri(self, name: str) -> str:
        return f"{self.root}/{name}"

    def table(self, name: str, *, refresh: bool = True):
        """The table's DeltaTable at its latest version, or None before its first write."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        with self._lock:
            table = self._tables.get(name)
            if table is None:
                try:
                    table = DeltaTable(self.uri(name), storage_options=self.options)
                except TableNotFoundError:
                    return None
                self._tables[name] = table
            elif refresh:
                table.update_incremental()
            return table

    def version(self, name: str) -> int | None:
        """The table's latest version, cheaply: every query of the cloud asks. Locally one
        stat says whether the next version's log entry exists (cheaper than reading the log;
        commits are numbered without gaps). On object storage the log is
        listed at most every OBJECT_STORE_POLL_S, and at once after this process's writes."""
        cached = self._tables.get(name)
        if self.object_store:
            now, seen = time.monotonic(), self._looked.get(name)
            if cached is not None and seen is not None and now - seen < OBJECT_STORE_POLL_S:
                return cached.version()
            self._looked[name] = now
        elif cached is not None and name in self._looked:
            following = f"{self.uri(name)}/_delta_log/{cached.version() + 1:020d}.json"
            if not os.path.exists(following):
                return cached.version()
        elif not os.path.isdir(f"{self.uri(name)}/_delta_log"):
            return None
        table = self.table(name)
        if not self.object_store:
            self._looked[name] = True
        return None if table is None else table.version()

    def append(self, name: str, data: pa.Table, *, partition_by: Sequence[str] | None = None
               ) -> None:
        """One atomic commit adding ``data``; a lost race for the log version is retried."""
        from deltalake import write_deltalake

        for attempt in itertools.count(1):
            # The loaded table, not its URI: the writer need not read the log again (delta-rs
            # commits at the next free version and checks what was committed in between).
            target = self.table(name, refresh=False) or self.uri(name)
            try:
                write_deltalake(target, data, mode="append",
                                partition_by=list(partition_by) if partition_by else None,
                                storage_options=None if not isinstance(target, str)
                                else self.options)
                self.touched(name)  # our own commit: the next look reads the log
                return
            except Exception as exc:  # delta-rs raises several types for a lost race
                if not _is_conflict(exc) or attempt >= COMMIT_ATTEMPTS:
                    raise StoreError(f"could not commit to {self.uri(name)} after {attempt} "
                                     f"attempts: {exc}") from exc
                time.sleep(random.uniform(0.0, min(0.5, 0.01 * 2 ** attempt)))
                self.table(name)  # read the log again: the next attempt starts from it

    def delete(self, name: str, predicate: str) -> int:
        table = self.table(name)
        if table is None:
            return 0
        for attempt in itertools.count(1):
            try:
                deleted = int(table.delete(predicate).get("num_deleted_rows", 0))
                self.touched(name)
                return deleted
            except Exception as exc:
                if not _is_conflict(exc) or attempt >= COMMIT_ATTEMPTS:
                    raise StoreError(f"could not delete from {self.uri(name)}: {exc}") from exc
                table.update_incremental()

    def overwrite_rows(self, name: str, data: pa.Table | None, write_ids: Sequence[str], *,
                       partition: tuple[str, str] | None = None) -> None:
        """Replace the rows with these write ids by ``data``, in one commit that fails if a
        concurrent commit added or removed data it covers (then nothing changed). The
        primitive of compaction: delta-rs's own optimize does not conflict with a concurrent
        optimize and then doubles every row (measured, deltalake 1.6.6), this does."""
        from deltalake import write_deltalake

        table = self.table(name)
        ids = ", ".join(f"'{w}'" for w in write_ids if all(c in "0123456789abcdef" for c in w))
        predicate = f"{WRITE_ID} IN ({ids})"
        if partition is not None:
            predicate = f"{partition[0]} = '{partition[1]}' AND {predicate}"
        schema = pa.schema(table.schema().to_arrow())
        data = schema.empty_table() if data is None or data.num_rows == 0 else data.select(
            schema.names).cast(schema)
        try:
            write_deltalake(table, data, mode="overwrite", predicate=predicate,
                            partition_by=table.metadata().partition_columns or None)
        except Exception as exc:
            raise StoreError(f"could not rewrite {len(write_ids)} rows of {self.uri(name)}: "
                             f"{exc}") from exc
        finally:
            self.touched(name)

    def forget_history(self, name: str) -> None:
        """Delete the table's log before its current version (after a vacuum at 0 hours the
        data files are gone, but the log entries keep column statistics of the rows they
        added, strings among them). A checkpoint at the current version stands in for them;
        the log retention is set to zero for the cleanup and put back."""
        table = self.table(name)
        if table is None:
            return
        key = "delta.logRetentionDuration"
        before = table.metadata().configuration.get(key, "interval 30 days")
        table.alter.set_table_properties({key: "interval 0 seconds"})
        table.create_checkpoint()
        table.cleanup_metadata()
        table.alter.set_table_properties({key: before})
        self.touched(name)

    def touched(self, name: str) -> None:
        """This process changed the table: the next version() reads its log."""
        self._looked.pop(name, None)

    def files(self, name: str, partition: tuple[str, str] | None = None) -> pa.Table:
        """The table's live data files: path (relative to the table), num_records and the
        min/max statistics of each column, from the log alone (no data file is opened)."""
        table = self.table(name)
        if table is None:
            return pa.table({"path": pa.array([], pa.string())})
        actions = pa.table(table.get_add_actions(flatten=True))
        if partition is not None:
            column = f"partition.{partition[0]}"
            if column not in actions.column_names:
                raise StoreError(f"{self.uri(name)} is not partitioned by {partition[0]}")
            actions = actions.filter(pc.equal(actions[column], partition[1]))
        return actions

    def _fs(self) -> tuple[pafs.FileSystem, str]:
        """pyarrow's filesystem for the data files: reads whole byte ranges (some S3 servers
        refuse the suffix ranges other readers ask for)."""
        if self._filesystem is None:
            if self.object_store:
                scheme, _, rest = self.root.partition("://")
                if scheme != "s3":
                    raise StoreError(f"{self.root}: rayfp stores on object storage are s3:// "
                                     f"URIs (S3 or an S3-compatible server)")
                options = self.options or {}
                endpoint = options.get("AWS_ENDPOINT_URL", "")
                protocol, _, host = endpoint.partition("://")
                filesystem = pafs.S3FileSystem(
                    access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
                    secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
                    region=os.environ.get("AWS_REGION") or os.environ.get(
                        "AWS_DEFAULT_REGION") or None,
                    endpoint_override=host or None, scheme=protocol or "https")
                self._filesystem = (filesystem, rest)
            else:
                self._filesystem = (pafs.LocalFileSystem(), self.root)
        return self._filesystem

    def read_file(self, name: str, path: str, columns: Sequence[str] | None = None) -> pa.Table:
        """One data file of a table (path as the log gives it: relative to the table)."""
        filesystem, base = self._fs()
        location = f"{base}/{name}/{_unquote(path)}"
        try:
            return pq.read_table(location, filesystem=filesystem, columns=columns,
                                 use_threads=False, partitioning=None)
        except (OSError, pa.ArrowInvalid) as exc:
            raise StoreError(f"{self.uri(name)}: data file {path} is unreadable ({exc}); the "
                             f"table may have been vacuumed under a reader") from exc

    def read_files(self, name: str, paths: Sequence[str], columns: Sequence[str] | None = None,
                   *, threads: int = 4) -> list[pa.Table]:
        """Several data files, in parallel (Parquet decoding releases the GIL)."""
        if len(paths) < 2:
            return [self.read_file(name, p, columns) for p in paths]
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(lambda p: self.read_file(name, p, columns), paths))

    def read(self, name: str, *, version: int | None = None,
             partition: tuple[str, str] | None = None,
             columns: Sequence[str] | None = None) -> pa.Table | None:
        """The whole table (or one partition) at its latest or a given version, partition
        columns included; None before the table's first write."""
        from deltalake import DeltaTable

        table = self.table(name)
        if table is None:
            return None
        if version is not None and version != table.version():
            table = DeltaTable(self.uri(name), version=version, storage_options=self.options)
        actions = pa.table(table.get_add_actions(flatten=True))
        parts = [c for c in actions.column_names if c.startswith("partition.")]
        if partition is not None:
            actions = actions.filter(pc.equal(actions[f"partition.{partition[0]}"],
                                              partition[1]))
        paths = actions["path"].to_pylist()
        partition_names = {c.removeprefix("partition.") for c in parts}
        file_columns = None if columns is None else [c for c in columns
                                                     if c not in partition_names]
        tables = []
        for i, data in enumerate(self.read_files(name, paths, file_columns)):
            for column in parts:  # a data file lacks its partition columns: the log has them
                value = actions[column][i].as_py()
                data = data.append_column(column.removeprefix("partition."),
                                          pa.array([value] * data.num_rows, pa.string()))
            tables.append(data)
        if not tables:
            schema = pa.schema(table.schema().to_arrow())
            return schema.empty_table() if columns is None else pa.schema(
                [schema.field(c) for c in columns if c in schema.names]).empty_table()
        return pa.concat_tables(tables, promote_options="permissive")



def _unquote(path: str) -> str:
    from urllib.parse import unquote

    return unquote(path)


def newest_per_key(table: pa.Table, key: Sequence[str]) -> pa.Table:
    """The newest row (by STAMP, then WRITE_ID) of each key, without the stamp columns."""
    if table.num_rows == 0:
        return table.drop_columns([c for c in (STAMP, WRITE_ID) if c in table.column_names])
    order = pc.sort_indices(table, sort_keys=[(STAMP, "descending"), (WRITE_ID, "descending")])
    ordered = table.take(order)
    seen: set[tuple] = set()
    keep = []
    for i, row_key in enumerate(zip(*(ordered.column(k).to_pylist() for k in key))):
        if row_key not in seen:
            seen.add(row_key)
            keep.append(i)
    newest = ordered.take(pa.array(sorted(keep), pa.int64()))
    return newest.drop_columns([STAMP, WRITE_ID])


def check_not_legacy(root: Path) -> None:
    """A store folder written by rayfp before Delta tables: say how to convert it."""
    for name in ("spaces", "fingerprints"):
        folder = root / name
        if folder.is_dir() and not (folder / "_delta_log").is_dir() and any(folder.iterdir()):
            raise StoreError(f"{root} is a store in the old directory layout (no Delta log in "
                             f"{folder}); convert it once with `rayfp store migrate {root} NEW`")
