"""One reader's view of a space's fingerprints, kept in step with the store's Delta table by
reading only the data files committed since its last look.

A registration into a space of 10,000 tasks adds one file: the next refresh reads that file,
not 10,000. A task written again wins over its older row by write stamp; a compaction that
rewrites files re-reads them once; a deleted task is reported removed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from rayfp.core.fingerprint import Fingerprint
from rayfp.core.store import Store


@dataclasses.dataclass(frozen=True)
class FingerprintChanges:
    fresh: list[Fingerprint]  # added or replaced since the last refresh, one per task
    removed: list[str]  # task ids no longer in the space
    files_read: int  # data files opened for this refresh


class FingerprintFeed:
    """keep_key(task_key) -> bool limits the view to some tasks (one shard of a sharded cloud):
    a file holding only other tasks' rows is never opened (its key range is in the log)."""

    def __init__(self, store: Store, space_id: str,
                 keep_key: Callable[[str], bool] | None = None) -> None:
        self.store, self.space_id, self.keep_key = store, space_id, keep_key
        self.version: int | None = None  # the table version last seen
        self._files: dict[str, list[tuple[str, tuple]]] = {}  # file -> (task, stamp) of its rows
        self._winner: dict[str, tuple[tuple, str]] = {}  # task -> (stamp, file) of its newest row

    def task_ids(self) -> list[str]:
        return sorted(self._winner)

    def refresh(self) -> FingerprintChanges | None:
        """What changed since the last refresh; None when the table has not moved."""
        version = self.store.fingerprint_version()
        if version == self.version:
            return None
        self.version = version
        listing = self.store.fingerprint_files(self.space_id)
        live = dict(zip(listing["path"].to_pylist(), zip(
            listing["num_records"].to_pylist(), listing["min_key"].to_pylist(),
            listing["max_key"].to_pylist())))
        new = [path for path in live if path not in self._files]
        gone = [path for path in self._files if path not in live]
        orphans = set()  # tasks whose newest row was in a file that is gone
        for path in gone:
            for task, _ in self._files.pop(path):
                if self._winner.get(task, (None, None))[1] == path:
                    orphans.add(task)
                    del self._winner[task]
        to_read = [path for path in new if self._wanted(*live[path])]
        for path in new:
            self._files[path] = []
        fresh: dict[str, Fingerprint] = {}
        for path, fp, stamp in self.store.read_fingerprint_files(to_read, self.space_id,
                                                                 self.keep_key):
            self._files[path].append((fp.task_id, stamp))
            current = self._winner.get(fp.task_id)
            if current is None or stamp > current[0]:
                self._winner[fp.task_id] = (stamp, path)
                fresh[fp.task_id] = fp
        files_read = len(to_read)
        # A task whose newest file went away (a delete, or a compaction that rewrote it and
        # whose new file we read above) falls back to its newest remaining row, if any.
        lost = orphans - set(fresh)
        fallback: dict[str, tuple[tuple, str]] = {}
        for path, rows in self._files.items():
            for task, stamp in rows:
                if task in lost and (task not in fallback or stamp > fallback[task][0]):
                    fallback[task] = (stamp, path)
        reread = sorted({path for _, path in fallback.values()})
        for path, fp, stamp in self.store.read_fingerprint_files(reread, self.space_id,
                                                                 self.keep_key):
            if fallback.get(fp.task_id) == (stamp, path):
                self._winner[fp.task_id] = (stamp, path)
                fresh[fp.task_id] = fp
        files_read += len(reread)
        removed = sorted(lost - set(fallback))
        return FingerprintChanges(list(fresh.values()), removed, files_read)

    def _wanted(self, rows: int, min_key: str | None, max_key: str | None) -> bool:
        if self.keep_key is None or rows != 1 or min_key is None or min_key != max_key:
            return True
        return self.keep_key(min_key)

    def current(self) -> list[Fingerprint]:
        """Every fingerprint in the view, read again from their files (to rebuild an index)."""
        by_file: dict[str, set[str]] = {}
        for task, (_, path) in self._winner.items():
            by_file.setdefault(path, set()).add(task)
        out = []
        for path, fp, stamp in self.store.read_fingerprint_files(sorted(by_file), self.space_id,
                                                                 self.keep_key):
            if self._winner.get(fp.task_id) == (stamp, path):
                out.append(fp)
        return sorted(out, key=lambda fp: fp.task_id)
