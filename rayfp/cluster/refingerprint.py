"""Re-fingerprinting: which tasks must move into a backbone's current space, and from what images.

A fingerprint records where its images came from (``source`` JSON: the archive job's root or
manifest, or the CLI's inputs) and its seed, so it can be recomputed in a new space (new weights,
preprocessing or edges) with the same sampling. Old fingerprints stay readable; spaces never mix.
Ray-free to import: run_refingerprint loads rayfp.cluster.pipeline (Ray) only when it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rayfp.core.fingerprint import Fingerprint, FingerprintSpace
from rayfp.errors import ConfigError, NotFoundError
from rayfp.io.sources import ImageSource, discover_sources, list_archive
from rayfp.privacy.mechanism import PrivacySpec, spec_from_record
from rayfp.store.store import Store


@dataclasses.dataclass(frozen=True)
class RefingerprintItem:
    task_id: str
    from_space: str
    samples: int
    seed: int
    source: dict
    min_images: int
    privacy: PrivacySpec

    def describe(self) -> str:
        where = (self.source.get("archive") or ", ".join(self.source.get("inputs", []))
                 or ("a private task's images: --archive" if "location" in self.source else "?"))
        return (f"{self.task_id}: from space {self.from_space}, {self.samples} views, seed "
                f"{self.seed}, images from {where}")


def current_space(store: Store, backbone: str) -> FingerprintSpace:
    """The newest space of a backbone (by creation time, then id)."""
    spaces = [store.get_space(s) for s in store.space_ids()]
    mine = [s for s in spaces if s.backbone == backbone]
    if not mine:
        raise NotFoundError(f"store {store.root} has no space for backbone {backbone!r}; "
                            f"spaces: {[(s.space_id, s.backbone) for s in spaces]}")
    return max(mine, key=lambda s: (s.created_at, s.space_id))


def _newest(fps: Sequence[Fingerprint]) -> Fingerprint:
    return max(fps, key=lambda fp: (fp.created_at, fp.space_id))


def plan_refingerprint(store: Store, target: FingerprintSpace) -> list[RefingerprintItem]:
    """Every task with a fingerprint somewhere but none in ``target``, newest fingerprint first
    as the recipe (its samples, seed and image source)."""
    by_task: dict[str, list[Fingerprint]] = {}
    for space_id in store.space_ids():
        if space_id == target.space_id:
            continue
        for fp in store.fingerprints(space_id):
            by_task.setdefault(fp.task_id, []).append(fp)
    items = []
    for task_id, fps in sorted(by_task.items()):
        if store.has_fingerprint(target.space_id, task_id):
            continue
        recipe = _newest(fps)
        source = json.loads(recipe.source) if recipe.source.startswith("{") else {}
        items.append(RefingerprintItem(task_id, recipe.space_id, recipe.n_samples,
                                       int(source.get("seed", 0)), source,
                                       int(recipe.privacy.get("min_images", 1) or 1),
                                       spec_from_record(recipe.privacy)))
    return items


def files_for(item: RefingerprintItem, *, archive: str | None = None) -> list[ImageSource]:
    """The task's image files, from the recorded source; a private task records none, so its
    files come from ``archive`` (an archive whose task folders hold it)."""
    kind = item.source.get("kind")
    if "location" in item.source:
        if not archive:
            raise ConfigError(
                f"task {item.task_id!r} is private: its store keeps no file names or folders. "
                "Give the archive that holds it (jobs/refingerprint.py --archive ROOT), or "
                f"run `rayfp fingerprint PATHS --task-id {item.task_id} --space NEW` by hand")
        files = [f for f in list_archive(archive) if f.task_id == item.task_id]
        if not files:
            raise ConfigError(f"task {item.task_id!r}: no folder of that name in {archive}")
        return files
    if kind == "rayfp-archive-job":
        return [f for f in list_archive(item.source["archive"]) if f.task_id == item.task_id]
    if kind == "rayfp-cli":
        return [dataclasses.replace(s, task_id=item.task_id)
                for s in discover_sources(item.source["inputs"])]
    raise ConfigError(f"task {item.task_id!r}: its fingerprint does not record where its images "
                      f"came from (source={item.source}); fingerprint it again by hand")


@contextlib.contextmanager
def single_run(store: Store) -> Iterator[bool]:
    """True while this process is the only re-fingerprint run of a local store (a second run,
    e.g. from a schedule that overlaps, gets False and leaves). Object stores have no lock: a
    second run there only repeats work, and its commits are as safe as the first's."""
    if store.object_store:
        yield True
        return
    import fcntl

    root = Path(str(store.root))
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".refingerprint.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def run_refingerprint(items: Sequence[RefingerprintItem], target: FingerprintSpace,
                      config: dict[str, Any], *, archive: str | None = None,
                      on_progress: Callable[[str], None] = lambda _: None) -> list[str]:
    """Re-fingerprint ITEMS into TARGET on the running Ray (CONFIG: the ArchiveJobConfig fields
    that are the job's, not the task's). Tasks sharing a recipe (samples, seed, minimum,
    privacy) run as one pipeline. Returns the task ids written."""
    from rayfp.cluster.pipeline import (
        ArchiveJobConfig,
        fingerprint_archive,
        take_archive_inventory,
    )

    groups: dict[tuple, list[RefingerprintItem]] = {}
    for item in items:
        groups.setdefault((item.samples, item.seed, item.min_images, item.privacy),
                          []).append(item)
    written: list[str] = []
    for (samples, seed, min_images, privacy), group in sorted(groups.items(),
                                                              key=lambda g: repr(g[0])):
        files = [f for item in group for f in files_for(item, archive=archive)]
        job = ArchiveJobConfig(samples=samples, seed=seed, min_images=min_images,
                               privacy=privacy, **config)
        report = fingerprint_archive(take_archive_inventory(files), target, job,
                                     on_progress=on_progress,
                                     task_sources={i.task_id: i.source for i in group})
        on_progress(f"{len(report.written)} re-fingerprinted into {target.space_id}")
        written += report.written
    return written
