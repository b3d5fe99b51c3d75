"""`rayfp store scrub`: remove what a store must not keep of its private tasks' images.

Stores written before private tasks withheld their sources hold file names and folders in
fingerprint rows (`source`), failure rows (paths, decoder messages quoting them) and site-only
view tables (image names). Older Delta versions keep them, and superseded releases, until
vacuumed. The scrub rewrites the current rows, folds superseded rows away and vacuums every
older version: afterwards no file of the store holds them (tests/test_scrub.py greps every
byte). History (time travel) older than the scrub is gone: that is the point.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from rayfp.core.release import is_private
from rayfp.core.replicates import ViewTable
from rayfp.store import schemas
from rayfp.store.store import Store
from rayfp.store.tasks import WITHHELD, stored_source, withheld_failures

_WITHHELD_PREFIX = "withheld:"


def _private_tasks(store: Store) -> tuple[set[str], list]:
    """Task ids with a private fingerprint in some space, and the fingerprints to rewrite."""
    private, rewrite = set(), []
    for space_id in store.space_ids():
        for fp in store.fingerprints(space_id):
            if not is_private(fp.privacy):
                continue
            private.add(fp.task_id)
            source = json.loads(fp.source) if fp.source.startswith("{") else {}
            if source.get("location") != WITHHELD:
                clean = json.dumps(stored_source(source, private=True))
                rewrite.append(dataclasses.replace(fp, source=clean))
    return private, rewrite


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _scrub_failures(store: Store, private: set[str]) -> int:
    fields = [f.name for f in schemas.FAILURES if f.name != "schema_version"]
    rows = [{k: r.get(k) for k in fields} for r in store.read_table("failures").to_pylist()
            if r["task_id"] in private and not str(r["path"]).startswith(_WITHHELD_PREFIX)]
    if not rows:
        return 0
    tasks = ", ".join(_quote(t) for t in sorted({r["task_id"] for r in rows}))
    store.tables.delete("failures", f"task_id IN ({tasks}) AND path NOT LIKE "
                                    f"'{_WITHHELD_PREFIX}%'")
    store.upsert("failures", withheld_failures(rows))
    return len(rows)


def _scrub_views(store: Store, private: set[str]) -> int:
    """Site-only view tables of private tasks: images renamed by random nonces."""
    done = 0
    for path in store.view_table_files():
        views = ViewTable.load(path)
        named = any(not _is_nonce(name) for name in views.images)
        if views.task_id in private and named:
            views.anonymised().save(path)
            done += 1
    return done


def _is_nonce(name: str) -> bool:
    return len(name) == 32 and all(c in "0123456789abcdef" for c in name)


def scrub(store: Store, *, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Rewrite, fold away and vacuum everything a private task's rows said of its images.
    Returns what was changed."""
    private, rewrite = _private_tasks(store)
    store.put_fingerprints(rewrite)
    progress(f"{len(private)} private task(s); {len(rewrite)} fingerprint row(s) rewritten")
    failures = _scrub_failures(store, private)
    views = _scrub_views(store, private)
    progress(f"{failures} failure row(s) withheld, {views} view table(s) anonymised")
    removed = store.compact(superseded=True)
    deleted = store.vacuum(retention_hours=0)
    store.forget_history()
    progress(f"superseded rows folded away: {removed}; old data files deleted: {deleted}")
    return {"private_tasks": len(private), "fingerprints": len(rewrite), "failures": failures,
            "views": views, "superseded_rows": removed, "files_deleted": deleted}
