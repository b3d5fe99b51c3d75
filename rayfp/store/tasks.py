"""Saving a task's fingerprint and its row in the tasks table: the last step of every path
(the local client, the Ray job, re-fingerprinting), so all of them record the same fields."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rayfp.core.fingerprint import Fingerprint, PartialCounts, finalize
from rayfp.core.release import is_private
from rayfp.store.store import Store


def save_task_fingerprint(store: Store, partial: PartialCounts, *, task_id: str, n_images: int,
                          modality: str, source: Mapping[str, Any], privacy: Mapping[str, Any]
                          ) -> Fingerprint:
    """Finalise merged counts (exact, or already released by rayfp.privacy), write the
    fingerprint (replacing an older one in its space) and the task's row. ``source`` (JSON-able)
    records where the images came from, ``privacy`` how private the counts are."""
    fp = finalize(partial, task_id=task_id, n_images=n_images,
                  source=json.dumps(stored_source(source, private=is_private(privacy))),
                  privacy=privacy)
    store.put_fingerprint(fp)
    record_task(store, task_id, modality=modality, n_images=n_images)
    return fp


# What a private task's row may keep of its source: how it was made, never where from.
_PUBLIC_SOURCE_FIELDS = ("kind", "seed", "job_id", "window", "slice_axes")
WITHHELD = "withheld: a private task's store keeps no file names or folders"


def stored_source(source: Mapping[str, Any], *, private: bool) -> dict[str, Any]:
    """The ``source`` JSON a fingerprint row keeps. An exact (public-data) task keeps its
    inputs, so re-fingerprinting finds them; a private task keeps only how it was made and how
    many inputs it had: file names and folders in hospitals carry record numbers and names,
    and the threat model includes a leaked store (docs/privacy.md)."""
    if not private:
        return dict(source)
    kept = {k: source[k] for k in _PUBLIC_SOURCE_FIELDS if k in source}
    if "inputs" in source:
        kept["n_inputs"] = len(source["inputs"])
    kept["location"] = WITHHELD
    return kept


def withheld_failures(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Failure rows of a private job as the store keeps them: the reason, and instead of the
    file name (or series UID) a salted digest that tells rows apart; the salt is drawn per
    call and never kept, so nobody can test a guessed name against it. Details (decoder
    messages quote paths) are dropped."""
    import hashlib
    import os

    salt = os.urandom(16)
    return [{**row, "path": "withheld:" + hashlib.sha256(salt + row["path"].encode())
             .hexdigest()[:16], "detail": ""} for row in rows]


def record_task(store: Store, task_id: str, *, modality: str, n_images: int) -> None:
    """Add the task to the tasks table, keeping metadata registered earlier (name, keywords)."""
    known = [r for r in store.read_table("tasks").to_pylist() if r["task_id"] == task_id]
    row = known[0] if known else {"task_id": task_id, "name": task_id, "keywords": [],
                                  "task_type": "", "n_classes": None, "owner": ""}
    row.update(modality=modality or row.get("modality") or "", n_images=n_images)
    store.upsert("tasks", [row])
