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
from rayfp.store.store import Store


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
        moved: dict[str, tuple] = {}  # task -> stamp of its newest row, whose file went away
        for path in gone:
            for task, _ in self._files.pop(path):
                if self._winner.get(task, (None, None))[1] == path:
                    moved[task] = self._winner.pop(task)[0]
        # The new files' keys first (three small columns): a compaction rewrites rows this
        # view already holds, which only move; only rows newer than what it holds are decoded.
        to_read = [path for path in new if self._wanted(*live[path])]
        for path in new:
            self._files[path] = []
        # A file of one row (a registration) is read whole at once; larger ones (bulk writes,
        # compactions) by their keys first.
        singles = [path for path in to_read if live[path][0] == 1]
        several = [path for path in to_read if live[path][0] != 1]
        decoded: dict[tuple, Fingerprint] = {}
        rows_of: dict[str, list] = {path: [] for path in singles}
        for path, fp, stamp in self.store.read_fingerprint_files(singles, self.space_id):
            decoded[(fp.task_id, stamp)] = fp
            rows_of[path].append((fp.task_id, None, stamp))
        rows_of.update(zip(several, self.store.read_fingerprint_keys(several)))
        newest: dict[str, tuple[tuple, str]] = {}
        for path, rows in rows_of.items():
            for task, key, stamp in rows:
                if key is not None and self.keep_key is not None and not self.keep_key(key):
                    continue
                self._files[path].append((task, stamp))
                if task not in newest or stamp > newest[task][0]:
                    newest[task] = (stamp, path)
        decode: dict[str, set] = {}  # file -> (task, stamp) rows to decode
        for task, (stamp, path) in newest.items():
            held = self._winner.get(task, (moved.get(task), None))[0]
            if held is not None and stamp == held:  # the same row, rewritten elsewhere
                self._winner[task] = (stamp, path)
            elif held is None or stamp > held:
                decode.setdefault(path, set()).add((task, stamp))
        # A task whose newest row went away and came back nowhere (a delete) falls back to
        # its newest remaining row, if any.
        lost = {task for task in moved if task not in self._winner and task not in
                {t for rows in decode.values() for t, _ in rows}}
        for path, rows in self._files.items():
            for task, stamp in rows:
                if task in lost and (task not in self._winner or stamp > self._winner[task][0]):
                    self._winner[task] = (stamp, path)
        for task in lost & set(self._winner):
            stamp, path = self._winner.pop(task)
            decode.setdefault(path, set()).add((task, stamp))
        fresh = []
        for path, rows in decode.items():
            for task, stamp in [row for row in rows if row in decoded]:
                self._winner[task] = (stamp, path)
                fresh.append(decoded[(task, stamp)])
        paths = sorted(path for path, rows in decode.items() if rows - decoded.keys())
        rows_to_decode = {row for rows in decode.values() for row in rows} - decoded.keys()
        for path, fp, stamp in self.store.read_fingerprint_files(
                paths, self.space_id, lambda task, stamp: (task, stamp) in rows_to_decode):
            if (fp.task_id, stamp) in decode[path]:
                self._winner[fp.task_id] = (stamp, path)
                fresh.append(fp)
        removed = sorted(task for task in moved if task not in self._winner)
        return FingerprintChanges(fresh, removed, len(to_read) + len(paths))

    def _wanted(self, rows: int, min_key: str | None, max_key: str | None) -> bool:
        if self.keep_key is None or rows != 1 or min_key is None or min_key != max_key:
            return True
        return self.keep_key(min_key)

    def current(self) -> list[Fingerprint]:
        """Every fingerprint in the view, read again from their files (to rebuild an index)."""
        wanted = {(task, stamp) for task, (stamp, _) in self._winner.items()}
        paths = sorted({path for _, path in self._winner.values()})
        found = self.store.read_fingerprint_files(
            paths, self.space_id, lambda task, stamp: (task, stamp) in wanted)
        unique = {fp.task_id: fp for _, fp, _ in found}
        return sorted(unique.values(), key=lambda fp: fp.task_id)
