"""The only Ray Data code: archive fingerprinting at cluster scale (docs/design.md §3).

Two streaming passes, because the paper samples N views *with replacement from the decodable
images*, so a task's image count must be known before its views are drawn:

1. inventory: ``map`` over files on CPU tasks -> frames or failure reason per file (small rows);
2. fingerprint: work items (file + its sampled views) -> ``flat_map`` decode + canonicalise on
   CPU tasks (torch-free) -> ``map_batches(FingerprintActor)`` on an actor pool (GPU when asked):
   crops on the device, forward, histogram -> partial counts per task -> summed on the driver,
   each task written to the store the moment its N views are counted.

Features never reach the driver; it holds one (D, B) count array per unfinished task.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ray
from ray.data import ActorPoolStrategy

from rayfp import defaults
from rayfp.core.fingerprint import FingerprintSpace, PartialCounts
from rayfp.core.parts import PartPlan, part_file_name
from rayfp.errors import ConfigError, PrivacyBudgetError
from rayfp.io.inventory import FileRecord, TaskInventory, group_inventory, inventory_file
from rayfp.io.sources import ImageSource
from rayfp.io.work import SampledFrame, WorkItem, expected_views, plan_work, sampled_frames
from rayfp.privacy.ledger import charge
from rayfp.privacy.mechanism import PrivacySpec, release
from rayfp.privacy.parts import release_part
from rayfp.store.store import Store
from rayfp.store.tasks import save_task_fingerprint, withheld_failures

log = logging.getLogger("rayfp.cluster.pipeline")


def new_job_id() -> str:
    return f"job-{uuid.uuid4().hex[:12]}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ArchiveJobConfig:
    store: str
    samples: int = defaults.SAMPLES
    seed: int = defaults.SEED
    frames_per_batch: int = 8  # canonical frames per actor call (each carries its sampled views)
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    # torch threads per actor (default: its CPUs). More threads than reserved CPUs lets a small
    # node overlap light decode tasks with the forward pass.
    threads: int | None = None
    weights: str | None = None
    min_images: int = defaults.MIN_IMAGES
    privacy: PrivacySpec = dataclasses.field(default_factory=PrivacySpec)
    overwrite: bool = False
    job_id: str = dataclasses.field(default_factory=new_job_id)
    source: str = ""  # the root/manifest the files came from, recorded in each fingerprint
    # Tasks pooled over several sites (rayfp.core.parts): task -> (its plan, this site's part).
    # Those tasks are written as parts to ``parts_out``, never as fingerprints.
    site_parts: dict[str, tuple[PartPlan, int]] = dataclasses.field(default_factory=dict)
    parts_out: str = ""
    noise_share: str = "full"

    def __post_init__(self) -> None:
        for name in ("samples", "frames_per_batch", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


class FingerprintActor:
    """Loads the space's backbone once; maps a batch of sampled frames to per-task partial
    counts with rayfp.extract.views.counts_of_frames (the local client's very step), or to raw
    features when ``emit_features`` (edges pass)."""

    def __init__(self, space: FingerprintSpace, *, weights: str | None = None,
                 threads: int = 1, emit_features: bool = False, clip_sum: bool = False) -> None:
        from rayfp.extract.api import extractor_for_space

        self.space = space
        self.emit_features = emit_features
        self.clip_sum = clip_sum
        # Ray sets OMP_NUM_THREADS to the actor's num_cpus; the extractor sets torch's own.
        self.extractor = extractor_for_space(space, weights=weights, threads=max(1, int(threads)))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from rayfp.extract.views import counts_of_frames, features_of_frames

        frames = [SampledFrame.from_record({name: batch[name][i] for name in batch})
                  for i in range(len(batch["task_id"]))]
        if self.emit_features:
            owners, features = features_of_frames(frames, self.extractor)
            return {"task_id": owners, "features": features}
        parts = counts_of_frames(frames, self.extractor, self.space, clip_sum=self.clip_sum)
        return {"task_id": np.asarray(list(parts)),
                "counts": np.stack([p.counts.ravel() for p in parts.values()]),
                "feature_sum": np.stack([p.feature_sum for p in parts.values()]),
                "n": np.asarray([p.n for p in parts.values()], dtype=np.int64)}


def take_archive_inventory(sources: Sequence[ImageSource], *, unit: str = "image"
                           ) -> dict[str, TaskInventory]:
    """Pass 1: decode every file once on CPU tasks; returns per-task inventories (a volume
    spread over files, or a patient's files, are grouped here from the small per-file
    records: no pixels reach the driver)."""
    if not sources:
        return {}
    ds = ray.data.from_items([dataclasses.asdict(s) for s in sources])
    records = ds.map(lambda row: inventory_file(ImageSource(**row)).to_record(),
                     num_cpus=1).take_all()
    return group_inventory((FileRecord.from_record(r) for r in records), unit=unit)


def _frames_of(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [frame.to_record() for frame in sampled_frames(WorkItem.from_record(row))]


def _feature_stream(work: list[WorkItem], space: FingerprintSpace, config: ArchiveJobConfig,
                    *, emit_features: bool):
    ds = ray.data.from_items([item.to_record() for item in work],
                             override_num_blocks=max(1, min(len(work), 200)))
    ds = ds.flat_map(_frames_of, num_cpus=1)
    ds = ds.map_batches(
        FingerprintActor,
        fn_constructor_kwargs={"space": space, "weights": config.weights,
                               "threads": config.threads or max(1, int(config.cpus_per_worker)),
                               "emit_features": emit_features,
                               "clip_sum": config.privacy.private and not emit_features},
        compute=ActorPoolStrategy(size=config.workers),
        batch_size=config.frames_per_batch,
        num_cpus=config.cpus_per_worker,
        num_gpus=config.gpus_per_worker or None,
        batch_format="numpy",
    )
    return ds.iter_batches(batch_size=None, batch_format="numpy")


def create_space_on_ray(inventories: dict[str, TaskInventory], reference: Sequence[str], *,
                        backbone: str, bins: int, samples: int, config: ArchiveJobConfig,
                        weights_sha256: str, engine: str = defaults.CPU_ENGINE
                        ) -> FingerprintSpace:
    """Edges on first use: sample features of the reference tasks (bounded: samples per task,
    task i with seed + i as `rayfp edges` does), take the 5 %/95 % quantiles, store the space."""
    from rayfp.extract.api import space_from_features, space_preprocessing
    from rayfp.extract.backbones import get_backbone_spec

    spec = get_backbone_spec(backbone)
    # The actors only need the backbone, its weights and the engine; the edges come from their
    # features.
    provisional = FingerprintSpace(backbone=backbone, weights_sha256=weights_sha256,
                                   preprocessing=space_preprocessing(backbone, engine),
                                   dim=spec.feature_dim,
                                   bins=bins, edges_lo=np.zeros(spec.feature_dim),
                                   edges_hi=np.ones(spec.feature_dim))
    work = []
    for index, task_id in enumerate(reference):
        work += plan_work(inventories[task_id], samples=samples, seed=config.seed + index)
    features = [b["features"] for b in _feature_stream(work, provisional, config,
                                                       emit_features=True)]
    space = space_from_features(np.concatenate(features), backbone=backbone,
                                weights_sha256=weights_sha256, bins=bins, reference=reference,
                                engine=engine)
    Store(config.store).put_space(space)
    return space


def space_for_archive(inventories: dict[str, TaskInventory], config: ArchiveJobConfig, *,
                      backbone: str, bins: int, samples: int,
                      reference: Sequence[str] | None = None, reference_fraction: float = 1.0,
                      weights: str | None = None, engine: str = defaults.CPU_ENGINE,
                      on_progress: Callable[[str], None] = lambda _: None) -> FingerprintSpace:
    """A new space for an archive: its edges from REFERENCE tasks (default: the first
    ``reference_fraction`` of the tasks with decodable images)."""
    from rayfp.extract.backbones import get_backbone_spec, resolve_weights

    resolved = resolve_weights(get_backbone_spec(backbone), weights)
    eligible = [t for t, inv in inventories.items() if inv.n_images > 0]
    reference = list(reference or eligible[:max(1, round(len(eligible) * reference_fraction))])
    unknown = sorted(set(reference) - set(eligible))
    if unknown:
        raise ConfigError(f"reference tasks {unknown} are not in the archive (or have no "
                          f"decodable images); tasks: {eligible}")
    on_progress(f"creating a space from {len(reference)} reference tasks: {reference}")
    return create_space_on_ray(inventories, reference, backbone=backbone, bins=bins,
                               samples=samples, config=config, weights_sha256=resolved.sha256,
                               engine=engine)


@dataclasses.dataclass
class ArchiveReport:
    written: list[str]
    skipped_existing: list[str]
    too_few_images: dict[str, int]
    failures: int
    seconds: float
    views: int
    series_problems: int = 0
    over_budget: list[str] = dataclasses.field(default_factory=list)  # refused, not written

    @property
    def views_per_second(self) -> float:
        return self.views / self.seconds if self.seconds > 0 else 0.0


def fingerprint_archive(inventories: dict[str, TaskInventory], space: FingerprintSpace,
                        config: ArchiveJobConfig, *,
                        on_progress: Callable[[str], None] = log.info,
                        task_sources: dict[str, dict] | None = None) -> ArchiveReport:
    """Pass 2: fingerprint every task that is not yet in the store (or all with overwrite).
    ``task_sources`` overrides the image source recorded per task (re-fingerprinting keeps the
    original one)."""
    store = Store(config.store)
    store.get_space(space.space_id)  # fail before any work, not when the first task is written
    started = time.perf_counter()
    failures = [f for inv in inventories.values() for f in inv.skipped]
    # Irregular DICOM series are used (one unit each) and reported beside the failed files.
    irregular = [(task_id, p) for task_id, inv in inventories.items()
                 for p in inv.series_problems]
    if failures or irregular:
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        rows = [{"task_id": f.task_id, "path": f.path, "reason": f.reason, "detail": f.detail}
                for f in failures]
        rows += [{"task_id": task_id, "path": f"series:{p.series}", "reason": p.reason,
                  "detail": p.detail} for task_id, p in irregular]
        if config.privacy.private:  # the names go to the job's log, never into the store
            for row in rows:
                on_progress(f"task {row['task_id']}: {row['path']}: {row['reason']}")
            rows = withheld_failures(rows)
        store.put_failures([dict(row, job_id=config.job_id, created_at=now)
                                  for row in rows])
    todo, skipped, too_few = [], [], {}
    for task_id, inv in inventories.items():
        site_part = config.site_parts.get(task_id)
        announced = site_part[0].image_counts[site_part[1] - 1] if site_part else 0
        if not config.overwrite and (_part_path(config, task_id).exists() if site_part else
                                     store.has_fingerprint(space.space_id, task_id)):
            skipped.append(task_id)
        elif site_part and inv.n_images != announced:
            too_few[task_id] = inv.n_images
            on_progress(f"task {task_id}: part {site_part[1]} announced {announced} images, "
                        f"{inv.n_images} are decodable here; part not written")
        elif not site_part and inv.n_images < config.min_images:
            too_few[task_id] = inv.n_images
            on_progress(f"task {task_id}: {inv.n_images} decodable images < minimum "
                        f"{config.min_images}; not fingerprinted")
        else:
            todo.append(task_id)
    work = [item for t in todo for item in plan_work(
        inventories[t], samples=config.samples, seed=config.seed, plan=config.privacy.plan,
        drawn=config.site_parts[t][0].views_of(config.site_parts[t][1],
                                               inventories[t].unit_contents())
        if t in config.site_parts else None)]
    expected = expected_views(work)
    totals: dict[str, PartialCounts] = {}
    written, views = [], 0

    over_budget: list[str] = []

    def finish(task_id: str, counts: PartialCounts) -> None:
        try:
            if task_id in config.site_parts:
                _write_part(store, counts, space, config, task_id)
            else:
                _write_task(store, counts, inventories[task_id], config,
                            (task_sources or {}).get(task_id))
        except PrivacyBudgetError as exc:  # one task over its budget: the others go on
            over_budget.append(task_id)
            on_progress(f"task {task_id}: not written: {exc}")
            return
        written.append(task_id)
        rate = views / max(time.perf_counter() - started, 1e-9)
        on_progress(f"task {task_id} done ({len(written)}/{len(todo)} tasks, "
                    f"{views} views, {rate:.1f} images/s)")

    for task_id in todo:  # a site's part may hold none of the task's views
        if task_id not in expected:
            finish(task_id, PartialCounts.empty(space))
    if work:
        for batch in _feature_stream(work, space, config, emit_features=False):
            for i, task_id in enumerate(batch["task_id"]):
                part = PartialCounts(space.space_id,
                                     batch["counts"][i].reshape(space.dim, space.bins),
                                     batch["feature_sum"][i], int(batch["n"][i]))
                totals[task_id] = totals[task_id] + part if task_id in totals else part
                views += part.n
                if totals[task_id].n == expected[task_id]:
                    finish(task_id, totals.pop(task_id))
    if totals:
        raise RuntimeError(f"tasks {sorted(totals)} did not receive all their views; the "
                           "pipeline lost data")
    return ArchiveReport(written, skipped, too_few, len(failures),
                         time.perf_counter() - started, views, len(irregular), over_budget)


def _part_path(config: ArchiveJobConfig, task_id: str):
    from pathlib import Path

    from rayfp.store.delta import is_object_store

    plan, part = config.site_parts[task_id]
    if not config.parts_out and is_object_store(config.store):
        raise ConfigError(f"the store {config.store} is on object storage: give a local folder "
                          f"for this site's part files (--part-out)")
    folder = Path(config.parts_out or Path(config.store) / "parts-out")
    return folder / part_file_name(task_id, part, plan.parts)


def _write_part(store: Store, partial: PartialCounts, space: FingerprintSpace,
                config: ArchiveJobConfig, task_id: str) -> None:
    """This site's part of a pooled task, released with its share of the noise, to send."""
    plan, part = config.site_parts[task_id]
    released = release_part(partial, space, plan=plan, part=part, spec=config.privacy,
                            noise_share=config.noise_share)
    charge(store, task_id, kind="part", privacy=released.privacy, space_id=space.space_id,
           budget=config.privacy.budget)
    released.save(_part_path(config, task_id))


def _write_task(store: Store, partial: PartialCounts, inv: TaskInventory,
                config: ArchiveJobConfig, origin: dict | None) -> None:
    source = dict(origin or {"kind": "rayfp-archive-job", "archive": config.source})
    source.update(job_id=config.job_id, seed=config.seed)
    released, record = release(partial, store.get_space(partial.space_id), task_id=inv.task_id,
                               n_images=inv.n_images, spec=config.privacy,
                               min_images=config.min_images)
    charge(store, inv.task_id, kind="fingerprint", privacy=record,
           space_id=partial.space_id, budget=config.privacy.budget)
    save_task_fingerprint(store, released, task_id=inv.task_id, n_images=inv.n_images,
                          modality=inv.modality, source=source, privacy=record)
