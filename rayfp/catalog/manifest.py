"""`rayfp catalog manifest`: the images of every task found under a root as one manifest (path,
task_id, label, modality), the input of the archive job.

Files are listed where they lie. Video frames and the rows of array files are written once as
PNG under a cache folder (as the paper's framework re-encodes torchvision-style sets), so the
job's inventory sees images like any other; writing is atomic and skipped when the PNG exists,
so an interrupted run resumes. A video or array file that cannot be decoded breaks the tasks
that need it, with the reason; the others are listed.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from rayfp.catalog.check import BROKEN, FOUND, TaskCheck
from rayfp.catalog.rules import Item, read_arrays
from rayfp.errors import CatalogError

MANIFEST_COLUMNS = ("path", "task_id", "label", "modality")


def frame_png(cache: Path, dataset_id: str, item: Item) -> Path:
    return cache / dataset_id / item.path.replace("/", "__") / f"{item.frame:07d}.png"


def _save_png(pixels, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.png")
    Image.fromarray(pixels).save(partial, format="PNG")
    os.replace(partial, path)  # a half-written PNG never passes for a frame


def write_video_frames(video: Path, frames: dict[int, Path]) -> None:
    """Decode ``video`` once (PyAV) and write the wanted frames (index -> PNG path)."""
    import av

    todo = {i: p for i, p in frames.items() if not p.exists()}
    if not todo:
        return
    last = max(todo)
    try:
        with av.open(str(video)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index in todo:
                    _save_png(frame.to_ndarray(format="rgb24"), todo.pop(index))
                if index >= last:
                    break
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise CatalogError(f"{video}: cannot decode the video: {exc}") from None
    if todo:
        raise CatalogError(f"{video}: the video has no frame {min(todo)} (annotations name "
                           f"{len(todo)} frames beyond its end)")


def write_array_rows(base: Path, rule: dict, rows: dict[tuple[str, int], Path]) -> None:
    todo = {k: p for k, p in rows.items() if not p.exists()}
    if not todo:
        return
    images, _, files = read_arrays(base, rule, images=True)
    seen: collections.Counter = collections.Counter()
    for pixels, name in zip(images, files):
        key = (name, seen[name])
        seen[name] += 1
        if key in todo:
            _save_png(pixels, todo.pop(key))


def materialize(check: TaskCheck, root: Path, cache: Path) -> list[dict]:
    """The manifest rows of one found task, writing the PNGs its frames and array rows need.
    Raises CatalogError when a video or array file cannot be decoded."""
    dataset, task = check.dataset, check.task
    base = dataset.path_under(root)
    rows, by_source = [], collections.defaultdict(dict)
    for item in check.selection.items:
        if item.is_file:
            path = base / item.path
        else:
            path = frame_png(cache, dataset.id, item)
            by_source[item.path][item.frame] = path
        rows.append({"path": str(path.resolve()), "task_id": task.id, "label": item.label,
                     "modality": task.domain})
    kind = task.rule["kind"]
    for source, frames in by_source.items():
        if kind == "video_frames":
            write_video_frames(base / source, frames)
        else:
            write_array_rows(base, task.rule, {(source, i): p for i, p in frames.items()})
    return rows


def build_manifest(checks: Sequence[TaskCheck], root: str | Path, cache: str | Path, *,
                   on_progress: Callable[[str], None] = print) -> tuple[list[dict], list[TaskCheck]]:
    """Rows of every found task, and the checks (a task whose frames could not be written
    becomes BROKEN with the reason)."""
    root, cache = Path(root), Path(cache)
    rows: list[dict] = []
    for check in checks:
        if check.status != FOUND:
            continue
        try:
            task_rows = materialize(check, root, cache)
        except CatalogError as exc:
            check.status, check.reason = BROKEN, str(exc)
            on_progress(f"{check.task.id}: broken: {exc}")
            continue
        rows += task_rows
        on_progress(f"{check.task.id}: {len(task_rows)} images")
    return rows, list(checks)


def write_manifest(rows: Sequence[dict], path: str | Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in MANIFEST_COLUMNS})
    if path.suffix.lower() == ".csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    return path
