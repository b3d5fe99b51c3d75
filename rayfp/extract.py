"""Local (no Ray) feature extraction over a task's images: inventory -> sampled views -> features.

The same plan (``fingerprint.sample_plan``) and the same fixed micro-batching
(``backbones.MICRO_BATCH``) are used by the Ray pipeline, so both give identical counts.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from rayfp.backbones import FeatureExtractor
from rayfp.errors import DecodeError, SpaceMismatchError, TooFewImagesError
from rayfp.fingerprint import FingerprintSpace, PartialCounts, SamplePlan, merge_counts, sample_plan
from rayfp.io import DEFAULT_MAX_PIXELS, ImageSource, decode_file
from rayfp.preprocess import canonicalize, crop_views

DEFAULT_MIN_IMAGES = 50  # DESIGN §5 privacy guard
DEFAULT_BATCH_SIZE = 64


@dataclasses.dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str
    detail: str


@dataclasses.dataclass(frozen=True, order=True)
class ImageRef:
    """One distinct image: a frame of a file."""

    path: str
    frame: int


@dataclasses.dataclass
class Inventory:
    """The decodable images of a task (sorted: sampling indexes into this list) and what failed."""

    images: list[ImageRef]
    skipped: list[SkippedFile]
    modalities: collections.Counter

    @property
    def n_images(self) -> int:
        return len(self.images)

    def require(self, min_images: int, task_id: str) -> None:
        if self.n_images < min_images:
            raise TooFewImagesError(
                f"task {task_id!r} has {self.n_images} decodable distinct images, fewer than the "
                f"minimum of {min_images} ({len(self.skipped)} files skipped); add images or "
                "lower --min-images if your privacy policy allows")


def take_inventory(sources: Sequence[ImageSource], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                   progress: bool = False) -> Inventory:
    """Decode every file once: count its frames, or record why it cannot be used."""
    images: list[ImageRef] = []
    skipped: list[SkippedFile] = []
    modalities: collections.Counter = collections.Counter()
    for source in tqdm(sources, desc="decode", unit="file", disable=not progress):
        try:
            frames = decode_file(source.path, max_pixels=max_pixels)
        except DecodeError as exc:
            skipped.append(SkippedFile(source.path, exc.reason, exc.detail))
            continue
        for frame in frames:
            images.append(ImageRef(source.path, frame.meta.frame))
            modalities[source.modality or frame.meta.modality or "unknown"] += 1
    return Inventory(sorted(images), skipped, modalities)


def iter_view_batches(images: Sequence[ImageRef], plan: SamplePlan, batch_size: int, *,
                      max_pixels: int = DEFAULT_MAX_PIXELS,
                      device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """Yield (<= batch_size, 3, 224, 224) view tensors covering every sample of the plan once.

    Samples are visited grouped by image, so each file is decoded once (consecutive frames of a
    multi-frame file share one decode). With a GPU ``device`` only the 256x256 canonical image
    crosses the bus; its crops and flips are cut on the device (measured on an H200: view
    generation on the CPU took longer than the forward pass)."""
    pending: list[torch.Tensor] = []
    pending_n = 0
    cached_path, cached_frames = None, None
    for image_index, sample_ids in plan.grouped_by_image():
        ref = images[image_index]
        if ref.path != cached_path:
            cached_path, cached_frames = ref.path, decode_file(ref.path, max_pixels=max_pixels)
        canonical = torch.from_numpy(canonicalize(cached_frames[ref.frame].pixels)).to(device)
        views = crop_views(canonical, plan.crop_top[sample_ids], plan.crop_left[sample_ids],
                           plan.flip[sample_ids])
        pending.append(views)
        pending_n += len(views)
        while pending_n >= batch_size:
            block = torch.cat(pending)
            yield block[:batch_size]
            rest = block[batch_size:]
            pending, pending_n = ([rest] if len(rest) else []), len(rest)
    if pending_n:
        yield torch.cat(pending)


def iter_features(images: Sequence[ImageRef], extractor: FeatureExtractor, *, n_samples: int,
                  seed: int, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False,
                  desc: str = "features") -> Iterator[np.ndarray]:
    """(<= batch_size, D) float32 feature batches of the task's N sampled views."""
    plan = sample_plan(len(images), n_samples, seed)
    with tqdm(total=len(plan), desc=desc, unit="view", disable=not progress) as bar:
        for views in iter_view_batches(images, plan, batch_size, device=extractor.device):
            yield extractor.extract(views)
            bar.update(len(views))


def fingerprint_images(images: Sequence[ImageRef], space: FingerprintSpace,
                       extractor: FeatureExtractor, *, n_samples: int, seed: int,
                       batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False,
                       desc: str = "fingerprint") -> PartialCounts:
    """Histogram the features of N sampled views into the space's bins (exact partial counts)."""
    if extractor.spec.name != space.backbone or extractor.weights_sha256 != space.weights_sha256:
        raise SpaceMismatchError(
            f"space {space.space_id} was built with {space.backbone} weights "
            f"{space.weights_sha256[:12]}; the extractor has {extractor.spec.name} weights "
            f"{extractor.weights_sha256[:12]}")
    parts = [PartialCounts.empty(space)]
    for features in iter_features(images, extractor, n_samples=n_samples, seed=seed,
                                  batch_size=batch_size, progress=progress, desc=desc):
        parts.append(PartialCounts.from_features(features, space))
    return merge_counts(parts)
