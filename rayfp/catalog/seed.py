"""`rayfp catalog seed`: fingerprint every paper task found under a root into a store, so a new
site's fingerprint is compared with the paper's tasks and gets their knowledge back.

check -> manifest -> the archive job's own passes (inventory, space, fingerprints) on Ray, with
exact counts (``epsilon = inf``: public data). Each fingerprint is written under the paper's
task id, which is what links it to the imported knowledge (policies, transfers, baselines):
the paper's data is imported first when the store lacks it. Re-running skips the tasks already
in the space, so an interrupted seed resumes; PNGs of frames already written are kept.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from rayfp import defaults
from rayfp.catalog.check import FOUND, TaskCheck, check_root
from rayfp.catalog.manifest import build_manifest, write_manifest
from rayfp.catalog.model import Dataset
from rayfp.errors import CatalogError

PAPER_OWNER = "paper"


@dataclasses.dataclass
class SeedReport:
    space_id: str
    checks: list[TaskCheck]
    written: list[str]
    already_present: list[str]
    too_few_images: dict[str, int]
    manifest: str
    imported_paper: bool


def ensure_paper_knowledge(store) -> bool:
    """Import the paper's released knowledge unless the store has it; True when imported."""
    from rayfp.cloud.paper_import import import_paper

    if any(row.get("owner") == PAPER_OWNER for row in store.tasks().to_pylist()):
        return False
    import_paper(None, store)
    return True


def seed(catalog: dict[str, Dataset], root: str | Path, *, store: str, space_id: str | None,
         cache: str | Path, config_overrides: dict | None = None, backbone: str = "",
         bins: int = 0, edge_samples: int = 0, engine: str = defaults.CPU_ENGINE,
         tasks: Sequence[str] | None = None,
         address: str | None = None, on_progress: Callable[[str], None] = print) -> SeedReport:
    import ray

    from rayfp.cluster.pipeline import (
        ArchiveJobConfig,
        fingerprint_archive,
        space_for_archive,
        take_archive_inventory,
    )
    from rayfp.io.sources import list_archive
    from rayfp.privacy.mechanism import PrivacySpec
    from rayfp.store.store import Store

    checks = check_root(catalog, root, tasks=tasks)
    rows, checks = build_manifest(checks, root, cache, on_progress=on_progress)
    found = [c.task.id for c in checks if c.status == FOUND]
    if not found:
        raise CatalogError(f"{root}: no task of the catalog is found here (see `rayfp catalog "
                           "check`)")
    manifest = write_manifest(rows, Path(cache) / "manifest.parquet")
    target = Store(store)
    imported = ensure_paper_knowledge(target)
    if imported:
        on_progress("imported the paper's tasks, policies and transfers into the store")
    config = ArchiveJobConfig(store=store, source=str(Path(root).resolve()),
                              privacy=PrivacySpec(epsilon=math.inf),
                              **(config_overrides or {}))
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    inventories = take_archive_inventory(list_archive(manifest))
    if space_id:
        space = target.get_space(space_id)
    else:
        space = space_for_archive(inventories, config, backbone=backbone, bins=bins,
                                  samples=edge_samples, engine=engine, on_progress=on_progress)
    report = fingerprint_archive(inventories, space, config, on_progress=on_progress)
    return SeedReport(space.space_id, checks, list(report.written),
                      list(report.skipped_existing), dict(report.too_few_images),
                      str(manifest), imported)
