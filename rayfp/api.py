"""The few high-level operations the CLI, the demo and the jobs share (no Ray, no printing).

>>> space = create_space([["ref_a/"], ["ref_b/"]], backbone="efficientnet_lite0", bins=100,
...                      store=Store("store"))                                # doctest: +SKIP
>>> result = fingerprint_task(["site/"], task_id="my-task", space_id=space.space_id,
...                           store=Store("store"))                            # doctest: +SKIP
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from rayfp.backbones import RANDOM_WEIGHTS_TAG, FeatureExtractor, get_backbone_spec
from rayfp.errors import ConfigError, SpaceMismatchError
from rayfp.extract import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MIN_IMAGES,
    SkippedFile,
    fingerprint_images,
    iter_features,
    take_inventory,
)
from rayfp.fingerprint import (
    FAST_SAMPLES,
    Fingerprint,
    FingerprintSpace,
    compute_edges,
    finalize,
)
from rayfp.io import discover_sources
from rayfp.store import Store

DEFAULT_EDGE_SAMPLES = FAST_SAMPLES


def load_extractor(backbone: str, *, weights: str | os.PathLike | None = None,
                   random_weights: bool = False, threads: int | None = None) -> FeatureExtractor:
    return FeatureExtractor(backbone, weights=weights, random_weights=random_weights,
                            threads=threads)


def extractor_for_space(space: FingerprintSpace, *, weights: str | os.PathLike | None = None,
                        threads: int | None = None) -> FeatureExtractor:
    """The backbone of a space, with weights whose sha256 must match the space's."""
    random_weights = space.weights_sha256 == RANDOM_WEIGHTS_TAG
    extractor = load_extractor(space.backbone, weights=None if random_weights else weights,
                               random_weights=random_weights, threads=threads)
    if extractor.weights_sha256 != space.weights_sha256:
        raise SpaceMismatchError(
            f"space {space.space_id} needs {space.backbone} weights with sha256 "
            f"{space.weights_sha256}, but {extractor.weights.path} has "
            f"{extractor.weights_sha256}; pass the right file with --weights")
    return extractor


@dataclasses.dataclass
class SpaceResult:
    space: FingerprintSpace
    skipped: list[SkippedFile]
    n_features: int


def create_space(reference_tasks: Sequence[Sequence[str | os.PathLike]], *, backbone: str,
                 bins: int, store: Store, samples_per_task: int = DEFAULT_EDGE_SAMPLES,
                 seed: int = 0, weights: str | os.PathLike | None = None,
                 random_weights: bool = False, batch_size: int = DEFAULT_BATCH_SIZE,
                 reference_names: Sequence[str] | None = None, threads: int | None = None,
                 progress: bool = False) -> SpaceResult:
    """Sample features of each reference task, take per-dimension 5 %/95 % quantiles as edges,
    store the space. Each reference task contributes the same number of samples."""
    if not reference_tasks:
        raise ConfigError("edges need at least one reference task (a path)")
    extractor = load_extractor(backbone, weights=weights, random_weights=random_weights,
                               threads=threads)
    names = list(reference_names or [", ".join(map(str, paths)) for paths in reference_tasks])
    features, skipped = [], []
    for index, paths in enumerate(reference_tasks):
        inventory = take_inventory(discover_sources(paths), progress=progress)
        skipped.extend(inventory.skipped)
        inventory.require(1, names[index])
        features.extend(iter_features(inventory.images, extractor, n_samples=samples_per_task,
                                      seed=seed + index, batch_size=batch_size,
                                      progress=progress, desc=f"edges {names[index]}"))
    stacked = np.concatenate(features)
    lo, hi = compute_edges(stacked)
    spec = get_backbone_spec(backbone)
    space = FingerprintSpace(backbone=backbone, weights_sha256=extractor.weights_sha256,
                             preprocessing=spec.preprocessing, dim=spec.feature_dim, bins=bins,
                             edges_lo=lo, edges_hi=hi, reference=json.dumps(names))
    store.put_space(space)
    return SpaceResult(space, skipped, len(stacked))


@dataclasses.dataclass
class FingerprintResult:
    fingerprint: Fingerprint
    skipped: list[SkippedFile]
    modality: str


def fingerprint_task(paths: Sequence[str | os.PathLike], *, task_id: str, space_id: str,
                     store: Store, samples: int, seed: int = 0,
                     min_images: int = DEFAULT_MIN_IMAGES, batch_size: int = DEFAULT_BATCH_SIZE,
                     weights: str | os.PathLike | None = None,
                     extractor: FeatureExtractor | None = None, modality: str = "",
                     threads: int | None = None, progress: bool = False) -> FingerprintResult:
    """Fingerprint one task's images in a stored space and write it (replacing an older one)."""
    space = store.get_space(space_id)
    sources = discover_sources(paths)
    inventory = take_inventory(sources, progress=progress)
    inventory.require(min_images, task_id)
    extractor = extractor or extractor_for_space(space, weights=weights, threads=threads)
    partial = fingerprint_images(inventory.images, space, extractor, n_samples=samples,
                                 seed=seed, batch_size=batch_size, progress=progress,
                                 desc=f"fingerprint {task_id}")
    source = json.dumps({"kind": "rayfp-cli", "inputs": [os.fspath(p) for p in paths],
                         "seed": seed})
    fp = finalize(partial, task_id=task_id, n_images=inventory.n_images, source=source,
                  privacy={"min_images": min_images, "quantisation": None, "dp_epsilon": None})
    store.put_fingerprint(fp)
    main_modality = modality or _most_common(inventory.modalities)
    record_task(store, task_id, modality=main_modality, n_images=inventory.n_images)
    return FingerprintResult(fp, inventory.skipped, main_modality)


def record_task(store: Store, task_id: str, *, modality: str, n_images: int) -> None:
    """Add the task to the tasks table, keeping metadata registered earlier (name, keywords)."""
    known = [r for r in store.read_table("tasks").to_pylist() if r["task_id"] == task_id]
    row = known[0] if known else {"task_id": task_id, "name": task_id, "keywords": [],
                                  "task_type": "", "n_classes": None, "owner": ""}
    row.update(modality=modality or row.get("modality") or "", n_images=n_images)
    store.upsert("tasks", [row])


def _most_common(counter: collections.Counter) -> str:
    return counter.most_common(1)[0][0] if counter else ""
