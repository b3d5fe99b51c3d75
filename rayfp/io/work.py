"""From a task's inventory to the sampled views each file must provide (torch-free, Ray-free).

`plan_work` draws the paper's N views (docs/design.md §1.2) and groups them per file, so each file is
decoded once; `sampled_frames` decodes a work item into canonical frames, each carrying its
views' crop offsets and flips. The local client iterates these in a loop and the Ray job maps
them over a cluster; rayfp.extract.views turns the frames into counts for both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from rayfp.core.sampling import KEYED_PLAN, PAPER_PLAN, SamplePlan, keyed_plan, sample_plan
from rayfp.io.canonical import canonicalize
from rayfp.io.decode import decode_file
from rayfp.io.image import DEFAULT_MAX_PIXELS
from rayfp.io.inventory import TaskInventory


@dataclasses.dataclass(frozen=True)
class WorkItem:
    """One file of a task and, per sampled view it must provide: the frame, the crop offsets
    and the flip (parallel lists, in the plan's order)."""

    task_id: str
    path: str
    frame: list[int]
    top: list[int]
    left: list[int]
    flip: list[bool]
    unit: str = ""  # the volume the file belongs to (its views share this image key)
    window: str = ""  # the CT window the inventory decoded it with
    axes: str = ""  # the planes the inventory sliced a NIfTI volume along

    @property
    def n_views(self) -> int:
        return len(self.frame)

    def to_record(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, row: dict) -> WorkItem:
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls) if f.name in row})


@dataclasses.dataclass(frozen=True)
class SampledFrame:
    """A decoded, canonicalised frame with its sampled views.

    canonical: (3, 256, 256) float32 in [0, 1]; top/left: (k,) int16 crop offsets; flip: (k,)
    bool; image: which image the views are of ("path#frame"), for per-image replicates."""

    task_id: str
    canonical: np.ndarray
    top: np.ndarray
    left: np.ndarray
    flip: np.ndarray
    image: str = ""

    def to_record(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, row: dict) -> SampledFrame:
        return cls(task_id=str(row["task_id"]),
                   canonical=np.asarray(row["canonical"], dtype=np.float32),
                   top=np.asarray(row["top"]), left=np.asarray(row["left"]),
                   flip=np.asarray(row["flip"], dtype=bool), image=str(row.get("image", "")))


def plan_work(task: TaskInventory, *, samples: int, seed: int, plan: str = PAPER_PLAN,
              drawn: SamplePlan | None = None) -> list[WorkItem]:
    """One work item per file, in image order; the same plan whatever runs it. ``plan``:
    ``paper`` (with replacement) or ``keyed`` (each unit's views drawn from its own content,
    for privacy). ``drawn``: views drawn elsewhere (a task in parts, rayfp.core.parts)."""
    if drawn is None:
        drawn = draw_views(task, samples=samples, seed=seed, plan=plan)
    drawn = dataclasses.replace(drawn, image_index=task.images_of_views(drawn.image_index,
                                                                        drawn.slice_u))
    per_file: dict[str, dict[str, list]] = {}
    for image_index, sample_ids in drawn.grouped_by_image():
        ref = task.images[image_index]
        item = per_file.setdefault(ref.path, {"frame": [], "top": [], "left": [], "flip": []})
        item["frame"] += [ref.frame] * len(sample_ids)
        item["top"] += drawn.crop_top[sample_ids].tolist()
        item["left"] += drawn.crop_left[sample_ids].tolist()
        item["flip"] += drawn.flip[sample_ids].tolist()
    return [WorkItem(task.task_id, path, **item, unit=task.units.get(path, ""),
                     window=task.windows.get(path, ""), axes=task.axes.get(path, ""))
            for path, item in per_file.items()]


def draw_views(task: TaskInventory, *, samples: int, seed: int, plan: str = PAPER_PLAN
               ) -> SamplePlan:
    """The task's N views over its sampling units (unit indices in inventory order)."""
    if plan == KEYED_PLAN:
        return keyed_plan(task.unit_contents(), samples, seed)
    return sample_plan(task.n_images, samples, seed, plan=plan)


def sampled_frames(item: WorkItem, *, max_pixels: int = DEFAULT_MAX_PIXELS
                   ) -> Iterator[SampledFrame]:
    """Decode the item's file once; yield each needed frame, canonicalised, with its views."""
    frames = decode_file(item.path, max_pixels=max_pixels, window=item.window or None,
                         axes=item.axes or None)
    wanted = np.asarray(item.frame)
    for frame in sorted(set(item.frame)):
        mask = wanted == frame
        yield SampledFrame(task_id=item.task_id, canonical=canonicalize(frames[frame].pixels),
                           top=np.asarray(item.top, np.int16)[mask],
                           left=np.asarray(item.left, np.int16)[mask],
                           flip=np.asarray(item.flip, bool)[mask],
                           image=item.unit or image_key(item.path, frame))


def image_key(path: str, frame: int) -> str:
    return f"{path}#{frame}"


def expected_views(items: Sequence[WorkItem]) -> dict[str, int]:
    """Views per task: a task is complete once this many are counted."""
    out: dict[str, int] = {}
    for item in items:
        out[item.task_id] = out.get(item.task_id, 0) + item.n_views
    return out
