"""The site-side operations the CLI, the demo and the jobs share (no Ray, no printing).

>>> space = create_space([["ref_a/"], ["ref_b/"]], backbone="efficientnet_lite0", bins=100,
...                      store=Store("store"))                                # doctest: +SKIP
>>> result = fingerprint_task(["site/"], task_id="my-task", space_id=space.space_id,
...                           store=Store("store"))                            # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from rayfp import defaults
from rayfp.core.fingerprint import Fingerprint, FingerprintSpace, compute_edges
from rayfp.core.parts import PartPlan, TaskPart
from rayfp.errors import ConfigError, SpaceMismatchError
from rayfp.extract.backbones import (
    RANDOM_WEIGHTS_TAG,
    FeatureExtractor,
    engine_of,
    get_backbone_spec,
)
from rayfp.extract.views import fingerprint_inventory, iter_features
from rayfp.io.inventory import SkippedFile, TaskInventory, take_inventory
from rayfp.io.sources import discover_sources, with_decoding
from rayfp.privacy.ledger import charge
from rayfp.privacy.mechanism import PrivacySpec, release
from rayfp.privacy.parts import release_part
from rayfp.store.store import Store
from rayfp.store.tasks import save_task_fingerprint


def load_extractor(backbone: str, *, weights: str | os.PathLike | None = None,
                   random_weights: bool = False, threads: int | None = None,
                   engine: str = "torch") -> FeatureExtractor:
    return FeatureExtractor(backbone, weights=weights, random_weights=random_weights,
                            threads=threads, engine=engine)


def extractor_for_space(space: FingerprintSpace, *, weights: str | os.PathLike | None = None,
                        threads: int | None = None) -> FeatureExtractor:
    """The backbone of a space, with weights whose sha256 must match the space's."""
    random_weights = space.weights_sha256 == RANDOM_WEIGHTS_TAG
    extractor = load_extractor(space.backbone, weights=None if random_weights else weights,
                               random_weights=random_weights, threads=threads,
                               engine=engine_of(space.preprocessing))
    if extractor.weights_sha256 != space.weights_sha256:
        raise SpaceMismatchError(
            f"space {space.space_id} needs {space.backbone} weights with sha256 "
            f"{space.weights_sha256}, but {extractor.weights.path} has "
            f"{extractor.weights_sha256}; pass the right file with --weights")
    return extractor


def space_preprocessing(backbone: str, engine: str = defaults.CPU_ENGINE) -> dict:
    """What a new space records of how its features are made: the canonical image, the
    normalisation and the CPU engine (rayfp.extract.backbones.ENGINES)."""
    engine_of({"engine": engine})
    return {**get_backbone_spec(backbone).preprocessing, "engine": engine}


def space_from_features(features: np.ndarray, *, backbone: str, weights_sha256: str, bins: int,
                        reference: Sequence[str], engine: str = defaults.CPU_ENGINE
                        ) -> FingerprintSpace:
    """A space whose edges are the 5 %/95 % quantiles of the reference features (N, D)."""
    lo, hi = compute_edges(features)
    spec = get_backbone_spec(backbone)
    return FingerprintSpace(backbone=backbone, weights_sha256=weights_sha256,
                            preprocessing=space_preprocessing(backbone, engine),
                            dim=spec.feature_dim, bins=bins,
                            edges_lo=lo, edges_hi=hi, reference=json.dumps(list(reference)))


@dataclasses.dataclass
class SpaceResult:
    space: FingerprintSpace
    skipped: list[SkippedFile]
    n_features: int


def create_space(reference_tasks: Sequence[Sequence[str | os.PathLike]], *, backbone: str,
                 bins: int, store: Store, samples_per_task: int = defaults.EDGE_SAMPLES,
                 seed: int = defaults.SEED, weights: str | os.PathLike | None = None,
                 random_weights: bool = False, batch_size: int = defaults.BATCH_SIZE,
                 reference_names: Sequence[str] | None = None, threads: int | None = None,
                 progress: bool = False, engine: str = defaults.CPU_ENGINE) -> SpaceResult:
    """Sample features of each reference task, take per-dimension 5 %/95 % quantiles as edges,
    store the space. Each reference task contributes the same number of samples (task i is
    sampled with seed + i, as the Ray job does)."""
    if not reference_tasks:
        raise ConfigError("edges need at least one reference task (a path)")
    extractor = load_extractor(backbone, weights=weights, random_weights=random_weights,
                               threads=threads, engine=engine)
    names = list(reference_names or [", ".join(map(str, paths)) for paths in reference_tasks])
    features, skipped = [], []
    for index, paths in enumerate(reference_tasks):
        inventory = take_inventory(discover_sources(paths), task_id=names[index],
                                   progress=progress)
        skipped.extend(inventory.skipped)
        inventory.require(1)
        features.extend(iter_features(inventory, extractor, samples=samples_per_task,
                                      seed=seed + index, batch_size=batch_size,
                                      progress=progress, desc=f"edges {names[index]}"))
    stacked = np.concatenate(features)
    space = space_from_features(stacked, backbone=backbone,
                                weights_sha256=extractor.weights_sha256, bins=bins,
                                reference=names, engine=engine)
    store.put_space(space)
    return SpaceResult(space, skipped, len(stacked))


@dataclasses.dataclass
class FingerprintResult:
    fingerprint: Fingerprint
    inventory: TaskInventory
    modality: str

    @property
    def skipped(self) -> list[SkippedFile]:
        return self.inventory.skipped


def fingerprint_task(paths: Sequence[str | os.PathLike], *, task_id: str, space_id: str,
                     store: Store, samples: int = defaults.SAMPLES, seed: int = defaults.SEED,
                     min_images: int = defaults.MIN_IMAGES,
                     batch_size: int = defaults.BATCH_SIZE,
                     weights: str | os.PathLike | None = None,
                     extractor: FeatureExtractor | None = None, modality: str = "",
                     threads: int | None = None, progress: bool = False,
                     privacy: PrivacySpec | None = None,
                     keep_views: bool = False, window: str | None = None,
                     slice_axes: str | None = None) -> FingerprintResult:
    """Fingerprint one task's images in a stored space and write it (replacing an older one).
    ``modality`` overrides the one read from the manifest or the files. ``privacy`` (default:
    the default ε) decides the release; ``PrivacySpec.none()`` stores the exact counts.
    ``keep_views``: also keep the views' bins and images in the store's site-only area, for
    replicates (`rayfp query --replicates`); they never leave the site. ``window``: a
    Hounsfield preset for CT files whose manifest row names none; ``slice_axes``: the planes
    NIfTI volumes are sliced along (rayfp.io.image.SLICE_AXES)."""
    privacy = privacy or PrivacySpec()
    space = store.get_space(space_id)
    sources = with_decoding(discover_sources(paths), window=window, axes=slice_axes)
    inventory = take_inventory(sources, task_id=task_id, progress=progress, unit=privacy.unit)
    inventory.require(min_images)
    extractor = extractor or extractor_for_space(space, weights=weights, threads=threads)
    partial, views = fingerprint_inventory(inventory, space, extractor, samples=samples,
                                           seed=seed, batch_size=batch_size, progress=progress,
                                           plan=privacy.plan, clip_sum=privacy.private,
                                           keep_views=keep_views)
    if views is not None:
        store.put_views(views)
    released, record = release(partial, space, task_id=task_id, n_images=inventory.n_images,
                               spec=privacy, min_images=min_images)
    charge(store, task_id, kind="fingerprint", privacy=record, space_id=space_id,
           budget=privacy.budget)  # refused past the budget: nothing stored
    main_modality = modality or inventory.modality
    fp = save_task_fingerprint(
        store, released, task_id=task_id, n_images=inventory.n_images, modality=main_modality,
        source={"kind": "rayfp-cli", "inputs": [os.fspath(p) for p in paths], "seed": seed,
                **({"window": window} if window else {}),
                **({"slice_axes": slice_axes} if slice_axes else {})},
        privacy=record)
    return FingerprintResult(fp, inventory, main_modality)


def fingerprint_part(paths: Sequence[str | os.PathLike], *, task_id: str, space_id: str,
                     store: Store, part: int, image_counts: Sequence[int],
                     samples: int = defaults.SAMPLES, seed: int = defaults.SEED,
                     batch_size: int = defaults.BATCH_SIZE,
                     weights: str | os.PathLike | None = None,
                     extractor: FeatureExtractor | None = None, threads: int | None = None,
                     progress: bool = False, privacy: PrivacySpec | None = None,
                     noise_share: str = "full", window: str | None = None,
                     slice_axes: str | None = None) -> tuple[TaskPart, TaskInventory]:
    """This site's part ``part`` of a task pooled over K sites (rayfp.core.parts): its images
    must be the M_k it announced; its views are its share of the task's plan."""
    privacy = privacy or PrivacySpec()
    space = store.get_space(space_id)
    plan = PartPlan(task_id, tuple(int(m) for m in image_counts), samples, seed, privacy.plan)
    plan.check_part(part)
    sources = with_decoding(discover_sources(paths), window=window, axes=slice_axes)
    inventory = take_inventory(sources, task_id=task_id, progress=progress, unit=privacy.unit)
    if inventory.n_images != plan.image_counts[part - 1]:
        raise ConfigError(f"part {part} of {task_id!r} announced {plan.image_counts[part - 1]} "
                          f"images; {inventory.n_images} are decodable here "
                          f"({len(inventory.skipped)} files skipped): announce the right "
                          "counts to every site")
    extractor = extractor or extractor_for_space(space, weights=weights, threads=threads)
    partial, _ = fingerprint_inventory(inventory, space, extractor, samples=samples, seed=seed,
                                       batch_size=batch_size, progress=progress,
                                       plan=privacy.plan, clip_sum=privacy.private,
                                       drawn=plan.views_of(part, inventory.unit_contents()))
    released = release_part(partial, space, plan=plan, part=part, spec=privacy,
                            noise_share=noise_share)
    charge(store, task_id, kind="part", privacy=released.privacy, space_id=space_id,
           budget=privacy.budget)
    return released, inventory
