"""`rayfp store migrate OLD NEW`: a store in the directory layout of rayfp before Delta tables
(one Parquet file per space, per fingerprint and per small table) copied into a new store.

The old store is only read. Each space's fingerprints go in batched commits, every small
table in one, and the multi-site parts and site-only view tables are copied as files. The
counts are checked after the copy: a migration that lost anything fails.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from rayfp.core.fingerprint import Fingerprint, FingerprintSpace
from rayfp.errors import ConfigError, StoreError
from rayfp.store import schemas
from rayfp.store.store import Store

BATCH = 500  # fingerprints per commit


def _rows(path: Path) -> list[dict[str, Any]]:
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable Parquet file of the old store ({exc})") from exc
    versions = set(table.column("schema_version").to_pylist()) if table.num_rows else set()
    if any(v is None or v > 2 for v in versions):
        raise StoreError(f"{path} has schema_version {sorted(versions, key=str)}: not a store "
                         f"of the directory layout (versions 1 and 2)")
    return table.to_pylist()


def migrate(old: str | Path, new: str, *, progress: Callable[[str], None] = print
            ) -> dict[str, Any]:
    """Copy the directory-layout store ``old`` into the (new or empty) store ``new``."""
    old = Path(old)
    if not (old / "spaces").is_dir():
        raise ConfigError(f"{old} is not a store of the directory layout: no spaces/ folder")
    if (old / "spaces" / "_delta_log").is_dir():
        raise ConfigError(f"{old} is already a Delta store: nothing to migrate")
    target = Store(new)
    if target.space_ids():
        raise ConfigError(f"{new} already holds spaces {target.space_ids()}: migrate into a "
                          f"new, empty store")
    report: dict[str, Any] = {"spaces": {}, "tables": {}}
    for path in sorted((old / "spaces").glob("*.parquet")):
        (row,) = _rows(path)
        space = FingerprintSpace.from_record({**row, "space_id": path.stem})
        target.put_space(space)
        folder = old / "fingerprints" / f"{schemas.SPACE_ID}={space.space_id}"
        files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        for start in range(0, len(files), BATCH):
            batch = []
            for file in files[start:start + BATCH]:
                (fp_row,) = _rows(file)
                batch.append(Fingerprint.from_record({**fp_row,
                                                      schemas.SPACE_ID: space.space_id}))
            target.put_fingerprints(batch)
            progress(f"space {space.space_id}: {start + len(batch)}/{len(files)} fingerprints")
        copied = len(target.fingerprints(space.space_id))
        if copied != len(files):
            raise StoreError(f"space {space.space_id}: {len(files)} fingerprints in {old}, "
                             f"{copied} after the copy")
        report["spaces"][space.space_id] = copied
    for name in schemas.TABLES:
        path = old / name / f"{name}.parquet"
        if not path.is_file():
            continue
        rows = [{k: v for k, v in row.items() if k != "schema_version"} for row in _rows(path)]
        target.upsert(name, rows)
        if target.read_table(name).num_rows != len(rows):
            raise StoreError(f"table {name}: {len(rows)} rows in {old}, "
                             f"{target.read_table(name).num_rows} after the copy")
        report["tables"][name] = len(rows)
        progress(f"table {name}: {len(rows)} rows")
    for folder in ("parts", Store.SITE_ONLY):
        if (old / folder).is_dir():
            if target.object_store:
                raise ConfigError(f"{old / folder} holds {folder} files, which stay in a local "
                                  f"store folder: migrate into a local folder")
            shutil.copytree(old / folder, Path(target.root) / folder, dirs_exist_ok=True)
            report[folder] = sum(1 for p in (old / folder).rglob("*.npz"))
    progress(json.dumps(report))
    return report
