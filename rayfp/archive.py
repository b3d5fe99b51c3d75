"""Archive-scale planning, Ray-free and torch-free: list an archive's files by task, take each
file's inventory (frames or failure reason), and turn a task's inventory into work items that
carry the paper's sampled views (DESIGN §1.2). rayfp.pipeline maps these functions with Ray Data.
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rayfp.errors import ConfigError, DecodeError
from rayfp.fingerprint import sample_plan
from rayfp.io import DEFAULT_MAX_PIXELS, decode_file, discover_sources
from rayfp.io.decode import is_uri
from rayfp.io.discover import is_candidate

MANIFEST_COLUMNS = ("path", "task_id")


@dataclasses.dataclass(frozen=True, order=True)
class ArchiveFile:
    task_id: str
    path: str
    modality: str = ""


def list_archive(source: str | os.PathLike) -> list[ArchiveFile]:
    """A root folder (one sub-folder per task, searched recursively) or a manifest (.csv or
    .parquet with columns path, task_id and optional modality) -> files sorted by task, path."""
    if is_uri(os.fspath(source)):
        return sorted(_list_uri(os.fspath(source)))
    source = Path(source)
    if source.is_dir():
        files = []
        for task_dir in sorted(p for p in source.iterdir() if p.is_dir() and not
                               p.name.startswith(".")):
            files += [ArchiveFile(task_dir.name, s.path) for s in discover_sources([task_dir])]
        if not files:
            raise ConfigError(f"{source} has no task sub-folders with files; expected "
                              "ROOT/<task_id>/... or a manifest")
        return sorted(files)
    if source.suffix.lower() in (".csv", ".parquet") and source.is_file():
        return sorted(_read_manifest(source))
    raise ConfigError(f"archive {os.fspath(source)!r} is neither a folder nor a .csv/.parquet "
                      "manifest")


def _list_uri(uri: str) -> list[ArchiveFile]:
    """The same two layouts behind a URI (s3://, gs://, file://...), via pyarrow's filesystems."""
    import pyarrow.fs as pafs

    scheme = uri[:uri.index("://") + 3]
    filesystem, inner = pafs.FileSystem.from_uri(uri)
    info = filesystem.get_file_info(inner)
    if info.type == pafs.FileType.Directory:
        root = inner.rstrip("/")
        files = []
        for entry in filesystem.get_file_info(pafs.FileSelector(root, recursive=True)):
            parts = entry.path[len(root):].lstrip("/").split("/")
            if (entry.type == pafs.FileType.File and len(parts) >= 2
                    and not parts[0].startswith(".") and is_candidate(Path(entry.base_name))):
                files.append(ArchiveFile(parts[0], scheme + entry.path))
        if not files:
            raise ConfigError(f"{uri} has no task sub-folders with files")
        return files
    if info.type == pafs.FileType.File and uri.lower().endswith((".csv", ".parquet")):
        with filesystem.open_input_file(inner) as handle:
            data = handle.read()
        return _read_manifest(Path(inner), data=data, base=uri.rsplit("/", 1)[0])
    raise ConfigError(f"archive {uri!r} is neither a folder nor a .csv/.parquet manifest")


def _read_manifest(path: Path, *, data: bytes | None = None, base: str | None = None
                   ) -> list[ArchiveFile]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    source = pa.BufferReader(data) if data is not None else path
    table = pq.read_table(source) if path.suffix.lower() == ".parquet" else pacsv.read_csv(source)
    missing = [c for c in MANIFEST_COLUMNS if c not in table.column_names]
    if missing:
        raise ConfigError(f"manifest {path} lacks columns {missing}; it has {table.column_names}")
    rows = table.to_pylist()
    out = []
    for row in rows:
        name = str(row["path"])
        if is_uri(name) or Path(name).is_absolute():
            location = name
        elif base is not None:  # relative to a manifest behind a URI
            location = f"{base}/{name}"
        else:
            location = os.fspath(path.parent / name)
        out.append(ArchiveFile(str(row["task_id"]), location, str(row.get("modality") or "")))
    return out


def inventory_file(path: str, task_id: str, *, max_pixels: int = DEFAULT_MAX_PIXELS
                   ) -> dict[str, Any]:
    """Decode one file: its frame count and modality, or why it cannot be used. Never raises for
    a bad file (a job must not die on one): unexpected decoder crashes are recorded too."""
    row = {"path": path, "task_id": task_id, "n_frames": 0, "modality": "", "reason": "",
           "detail": ""}
    try:
        frames = decode_file(path, max_pixels=max_pixels)
        row.update(n_frames=len(frames), modality=frames[0].meta.modality)
    except DecodeError as exc:
        row.update(reason=exc.reason, detail=exc.detail)
    except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not kill the job
        row.update(reason="decoder_crash", detail=f"{type(exc).__name__}: {exc}")
    return row


@dataclasses.dataclass
class TaskInventory:
    task_id: str
    images: list[tuple[str, int]]  # (path, frame), sorted: sampling indexes into this list
    modality: str
    failures: list[dict[str, Any]]

    @property
    def n_images(self) -> int:
        return len(self.images)


def group_inventory(rows: Iterable[dict[str, Any]]) -> dict[str, TaskInventory]:
    """Per-file inventory rows -> per-task inventories (images sorted by path, frame)."""
    by_task: dict[str, TaskInventory] = {}
    modalities: dict[str, defaultdict] = {}
    for row in rows:
        task = by_task.setdefault(row["task_id"], TaskInventory(row["task_id"], [], "", []))
        if row["reason"]:
            task.failures.append(row)
            continue
        task.images.extend((row["path"], f) for f in range(int(row["n_frames"])))
        counter = modalities.setdefault(row["task_id"], defaultdict(int))
        counter[row["modality"] or "unknown"] += int(row["n_frames"])
    for task_id, task in by_task.items():
        task.images.sort()
        task.failures.sort(key=lambda r: r["path"])
        counter = modalities.get(task_id, {})
        task.modality = max(sorted(counter), key=counter.get) if counter else ""
    return dict(sorted(by_task.items()))


def plan_work(task: TaskInventory, *, samples: int, seed: int) -> list[dict[str, Any]]:
    """One work item per file: the frames it must provide and, per sampled view, the frame, crop
    offsets and flip. The plan is exactly the one `rayfp fingerprint` draws for the same images."""
    plan = sample_plan(task.n_images, samples, seed)
    per_file: dict[str, dict[str, list]] = {}
    for image_index, sample_ids in plan.grouped_by_image():
        path, frame = task.images[image_index]
        item = per_file.setdefault(path, {"frame": [], "top": [], "left": [], "flip": []})
        item["frame"] += [frame] * len(sample_ids)
        item["top"] += plan.crop_top[sample_ids].tolist()
        item["left"] += plan.crop_left[sample_ids].tolist()
        item["flip"] += plan.flip[sample_ids].tolist()
    return [{"task_id": task.task_id, "path": path, **item} for path, item in per_file.items()]


def frames_of_work_item(item: dict[str, Any], *, max_pixels: int = DEFAULT_MAX_PIXELS
                        ) -> list[dict[str, Any]]:
    """Decode a work item's file once and emit one row per needed frame with its canonical
    (3, 256, 256) float32 image and that frame's sampled views."""
    from rayfp.preprocess import canonicalize

    frames = decode_file(item["path"], max_pixels=max_pixels)
    wanted = np.asarray(item["frame"])
    rows = []
    for frame in sorted(set(wanted.tolist())):
        mask = wanted == frame
        rows.append({
            "task_id": item["task_id"],
            "canonical": canonicalize(frames[frame].pixels),
            "top": np.asarray(item["top"])[mask].astype(np.int16),
            "left": np.asarray(item["left"])[mask].astype(np.int16),
            "flip": np.asarray(item["flip"])[mask].astype(bool),
        })
    return rows


def expected_samples(items: Sequence[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for item in items:
        out[item["task_id"]] += len(item["frame"])
    return dict(out)
