"""Sampled views -> features -> exact partial counts: the one step every path runs.

`counts_of_frames` is called by the local client (`fingerprint_inventory`, in a loop) and by the
Ray job's actor (rayfp.cluster.pipeline), on the same `SampledFrame`s from rayfp.io.work, so a
site's fingerprint and the cloud's are computed by the same code (docs/design.md §3). With a GPU
extractor only the 256x256 canonical image crosses the bus; its crops and flips are cut on the
device (measured on an H200: cutting views on the CPU took longer than the forward pass).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from rayfp import defaults
from rayfp.core.fingerprint import FingerprintSpace, PartialCounts, bin_indices, clip_to_edges
from rayfp.core.replicates import ViewTable
from rayfp.core.sampling import CROP_SIZE, KEYED_PLAN, PAPER_PLAN
from rayfp.errors import SpaceMismatchError
from rayfp.extract.backbones import FeatureExtractor
from rayfp.io.image import DEFAULT_MAX_PIXELS
from rayfp.io.inventory import TaskInventory
from rayfp.io.work import SampledFrame, expected_views, plan_work, sampled_frames


def crop_views(canonical: torch.Tensor, tops: np.ndarray, lefts: np.ndarray,
               flips: np.ndarray) -> torch.Tensor:
    """(3, 256, 256) tensor on any device -> (k, 3, 224, 224): one crop (and optional h-flip)
    per sampled view, cut where the tensor lives."""
    views = torch.stack([
        canonical[:, int(t):int(t) + CROP_SIZE, int(lft):int(lft) + CROP_SIZE]
        for t, lft in zip(tops, lefts)
    ])
    flip_mask = torch.from_numpy(np.asarray(flips, dtype=bool)).to(canonical.device)
    if flip_mask.any():
        views[flip_mask] = views[flip_mask].flip(-1)
    return views


# Views held at once before a forward pass: bounds memory when a frame carries many views.
MAX_PENDING_VIEWS = 256


def features_of_frames(frames: Sequence[SampledFrame], extractor: FeatureExtractor
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The features of every view of the frames: (owners (V,) task ids, features (V, D)).
    Features do not depend on how views are grouped (the extractor's fixed micro-batches)."""
    owners: list[str] = []
    pending: list[torch.Tensor] = []
    features = [np.zeros((0, extractor.spec.feature_dim), np.float32)]
    for frame in frames:
        canonical = torch.from_numpy(np.ascontiguousarray(frame.canonical, np.float32))
        pending.append(crop_views(canonical.to(extractor.device), frame.top, frame.left,
                                  frame.flip))
        owners += [frame.task_id] * len(frame.top)
        if sum(len(v) for v in pending) >= MAX_PENDING_VIEWS:
            features.append(extractor.extract(torch.cat(pending)))
            pending = []
    if pending:
        features.append(extractor.extract(torch.cat(pending)))
    return np.asarray(owners, dtype=str), np.concatenate(features)


def check_extractor(space: FingerprintSpace, extractor: FeatureExtractor) -> None:
    if extractor.spec.name != space.backbone or extractor.weights_sha256 != space.weights_sha256:
        raise SpaceMismatchError(
            f"space {space.space_id} was built with {space.backbone} weights "
            f"{space.weights_sha256[:12]}; the extractor has {extractor.spec.name} weights "
            f"{extractor.weights_sha256[:12]}")


def counts_of_frames(frames: Sequence[SampledFrame], extractor: FeatureExtractor,
                     space: FingerprintSpace, *, clip_sum: bool = False,
                     views: list | None = None) -> dict[str, PartialCounts]:
    """Crop, forward and histogram the frames' views: exact partial counts per task
    (``clip_sum``: the private recipe's sum of features clipped to the edges). ``views``: a
    list that gets (image key per view, bin indices, summed features) of this batch, for the
    site's own view table (rayfp.core.replicates; never sent)."""
    owners, features = features_of_frames(frames, extractor)
    if views is not None:
        images = [frame.image for frame in frames for _ in range(len(frame.top))]
        summed = clip_to_edges(features, space) if clip_sum else features
        views.append((images, bin_indices(features, space), summed))
    return {task_id: PartialCounts.from_features(features[owners == task_id], space,
                                                 clip_sum=clip_sum)
            for task_id in sorted(set(owners.tolist()))}


def iter_frame_batches(items: Iterable, *, views_per_batch: int,
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[list[SampledFrame]]:
    """Work items -> lists of sampled frames holding about ``views_per_batch`` views each
    (a frame's views stay together), decoding each file once."""
    batch: list[SampledFrame] = []
    n_views = 0
    for item in items:
        for frame in sampled_frames(item, max_pixels=max_pixels):
            batch.append(frame)
            n_views += len(frame.top)
            if n_views >= views_per_batch:
                yield batch
                batch, n_views = [], 0
    if batch:
        yield batch


def iter_features(task: TaskInventory, extractor: FeatureExtractor, *, samples: int, seed: int,
                  batch_size: int = defaults.BATCH_SIZE, progress: bool = False,
                  desc: str = "features") -> Iterator[np.ndarray]:
    """(<= ~batch_size, D) float32 feature batches of the task's N sampled views (for edges)."""
    work = plan_work(task, samples=samples, seed=seed)
    with tqdm(total=samples, desc=desc, unit="view", disable=not progress) as bar:
        for frames in iter_frame_batches(work, views_per_batch=batch_size):
            _, features = features_of_frames(frames, extractor)
            bar.update(len(features))
            yield features


def fingerprint_inventory(task: TaskInventory, space: FingerprintSpace,
                          extractor: FeatureExtractor, *, samples: int, seed: int,
                          batch_size: int = defaults.BATCH_SIZE, progress: bool = False,
                          plan: str = PAPER_PLAN, clip_sum: bool = False,
                          keep_views: bool = False, drawn=None
                          ) -> tuple[PartialCounts, ViewTable | None]:
    """The task's N sampled views histogrammed into the space's bins, here in this process;
    with ``keep_views`` also their view table (for replicates and `rayfp stability`).
    ``drawn``: this site's share of a task's views (a task in parts, rayfp.core.parts)."""
    check_extractor(space, extractor)
    work = plan_work(task, samples=samples, seed=seed, plan=plan, drawn=drawn)
    total = PartialCounts.empty(space)
    views: list | None = [] if keep_views else None
    with tqdm(total=expected_views(work).get(task.task_id, 0), desc=f"fingerprint {task.task_id}",
              unit="view", disable=not progress) as bar:
        for frames in iter_frame_batches(work, views_per_batch=batch_size):
            for part in counts_of_frames(frames, extractor, space, clip_sum=clip_sum,
                                         views=views).values():
                total = total + part
                bar.update(part.n)
    units = [task.unit_key(task.images[i]) for i in task.unit_starts]
    table = ViewTable.from_batches(space, task.task_id, views, images=units).anonymised() \
        if keep_views else None
    return total, table


def view_bank(task: TaskInventory, extractor: FeatureExtractor, *, views: int, seed: int,
              batch_size: int = defaults.BATCH_SIZE, progress: bool = False) -> np.ndarray:
    """``views`` augmented views of every unit of the task (the privacy audit's population: a
    2-D image, or a volume whose views spread over its slices): (n_images, views, D) float32,
    units in inventory order."""
    work = plan_work(task, samples=task.n_images * views, seed=seed, plan=KEYED_PLAN)
    unit_of = np.searchsorted(task.unit_starts, np.arange(len(task.images)), side="right") - 1
    row_of = {(ref.path, ref.frame): int(unit_of[i]) for i, ref in enumerate(task.images)}
    bank = np.zeros((task.n_images, views, extractor.spec.feature_dim), np.float32)
    filled = np.zeros(task.n_images, np.int64)
    pending: list[tuple[int, SampledFrame]] = []

    def flush() -> None:
        _, features = features_of_frames([frame for _, frame in pending], extractor)
        start = 0
        for row, frame in pending:
            k = len(frame.top)
            bank[row, filled[row]:filled[row] + k] = features[start:start + k]
            filled[row] += k
            start += k
        bar.update(start)
        pending.clear()

    with tqdm(total=task.n_images * views, desc=f"views of {task.task_id}", unit="view",
              disable=not progress) as bar:
        for item in work:
            for frame_no, frame in zip(sorted(set(item.frame)), sampled_frames(item)):
                pending.append((row_of[(item.path, frame_no)], frame))
                if sum(len(f.top) for _, f in pending) >= batch_size:
                    flush()
        if pending:
            flush()
    return bank
