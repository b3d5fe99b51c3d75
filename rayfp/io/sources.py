"""Where a task's images are: files, folders and manifests -> sorted :class:`ImageSource` lists.

One reader serves every path: `rayfp fingerprint` (one task from files, folders or manifests),
the Ray archive job (a root with one sub-folder per task, or a manifest) and re-fingerprinting.
Local paths and URIs (s3://, gs://, file://: anything pyarrow's filesystems open) are read the
same way; manifests are CSV or Parquet with a ``path`` column and optional ``task_id`` and
``modality`` columns.

The order is part of the fingerprint recipe: sampling indexes into the image list, so sources
are sorted and de-duplicated to make the same inputs give the same fingerprint on every machine.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from rayfp.errors import ConfigError
from rayfp.io.decode import is_uri
from rayfp.io.image import slice_axes, window_bounds
from rayfp.io.nifti import NIFTI_SUFFIXES
from rayfp.io.raster import RASTER_SUFFIXES

# Files in archive folders that are certainly not images (DICOM often has no suffix at all).
IGNORED_SUFFIXES = (".txt", ".json", ".csv", ".md", ".xml", ".html", ".py", ".gz", ".zip",
                    ".dump", ".icc", ".parquet", ".yaml", ".yml", ".log")
MANIFEST_SUFFIXES = (".csv", ".parquet")
MANIFEST_PATH = "path"
MANIFEST_TASK_ID = "task_id"
MANIFEST_MODALITY = "modality"
MANIFEST_WINDOW = "window"
MANIFEST_SLICE_AXES = "slice_axes"


@dataclasses.dataclass(frozen=True, order=True)
class ImageSource:
    """One input file; ``task_id`` and ``modality`` are set when a manifest or an archive's
    folder assigns them."""

    path: str
    task_id: str = ""
    modality: str = ""
    window: str = ""  # a Hounsfield preset for CT (rayfp.io.image.WINDOW_PRESETS); "": stored
    axes: str = ""  # the planes a NIfTI volume is sliced along (SLICE_AXES); "": acquisition


def is_candidate(name: str) -> bool:
    """Could a file of this name be an image? (DICOM often has no suffix at all.)"""
    path = PurePosixPath(name)
    if path.name.startswith("."):
        return False
    suffix = path.suffix.lower()
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return True
    return suffix in RASTER_SUFFIXES or suffix == ".dcm" or suffix not in IGNORED_SUFFIXES


def is_manifest(location: str) -> bool:
    return location.lower().endswith(MANIFEST_SUFFIXES)


def read_manifest(location: str | os.PathLike) -> list[ImageSource]:
    """A CSV or Parquet manifest (local or behind a URI) -> its sources, in file order.

    Columns: ``path`` (required; relative paths are resolved against the manifest's folder),
    ``task_id``, ``modality``, ``window`` (a CT Hounsfield preset) and ``slice_axes`` (the
    planes of a NIfTI volume) (optional)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    location = os.fspath(location)
    if is_uri(location):
        from rayfp.io.decode import read_uri

        source, base = pa.BufferReader(read_uri(location)), location.rsplit("/", 1)[0]
    else:
        source, base = location, os.fspath(Path(location).parent)
    parquet = location.lower().endswith(".parquet")
    try:
        table = pq.read_table(source) if parquet else pacsv.read_csv(
            source, convert_options=pacsv.ConvertOptions(column_types={
                MANIFEST_PATH: pa.string(), MANIFEST_TASK_ID: pa.string(),
                MANIFEST_MODALITY: pa.string(), MANIFEST_WINDOW: pa.string(),
                MANIFEST_SLICE_AXES: pa.string()}))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"manifest {location} cannot be read as "
                          f"{'Parquet' if parquet else 'CSV'}: {exc}") from exc
    if MANIFEST_PATH not in table.column_names:
        raise ConfigError(f"manifest {location} needs a {MANIFEST_PATH!r} column; found columns "
                          f"{table.column_names}")
    columns = {name: table.column(name).to_pylist() if name in table.column_names
               else [None] * table.num_rows
               for name in (MANIFEST_PATH, MANIFEST_TASK_ID, MANIFEST_MODALITY,
                            MANIFEST_WINDOW, MANIFEST_SLICE_AXES)}
    sources = []
    for name, task_id, modality, window, axes in zip(*columns.values()):
        if not name:
            raise ConfigError(f"manifest {location} has a row with an empty {MANIFEST_PATH!r}")
        name = str(name)
        if is_uri(name) or Path(name).is_absolute():
            resolved = name
        elif is_uri(base):
            resolved = f"{base}/{name}"
        else:
            resolved = os.fspath(Path(base) / name)
        if window:
            window_bounds(str(window))  # an unknown preset fails here, naming the row's value
        if axes:
            slice_axes(str(axes))
        sources.append(ImageSource(resolved, str(task_id or ""), str(modality or ""),
                                   str(window or ""), str(axes or "")))
    return sources


def list_folder(location: str | os.PathLike) -> list[str]:
    """Candidate image files under a folder (recursive, sorted), local or behind a URI."""
    location = os.fspath(location)
    if not is_uri(location):
        return [os.fspath(p) for p in sorted(Path(location).rglob("*"))
                if p.is_file() and is_candidate(p.name)]
    import pyarrow.fs as pafs

    scheme = location[:location.index("://") + 3]
    filesystem, inner = pafs.FileSystem.from_uri(location)
    entries = filesystem.get_file_info(pafs.FileSelector(inner.rstrip("/"), recursive=True))
    return sorted(scheme + e.path for e in entries
                  if e.type == pafs.FileType.File and is_candidate(e.base_name))


def _kind(location: str) -> str:
    """'folder', 'file' or 'missing' for a local path or a URI."""
    if not is_uri(location):
        path = Path(location)
        return "folder" if path.is_dir() else "file" if path.exists() else "missing"
    import pyarrow.fs as pafs

    filesystem, inner = pafs.FileSystem.from_uri(location)
    kind = filesystem.get_file_info(inner).type
    return {pafs.FileType.Directory: "folder", pafs.FileType.File: "file"}.get(kind, "missing")


def discover_sources(inputs: Iterable[str | os.PathLike]) -> list[ImageSource]:
    """Expand files, folders (recursively) and manifests into sorted, unique sources.

    A named file is always kept (a broken one is reported by the decoder, not dropped here);
    inside folders, files with non-image suffixes (.txt, .json, ...) are skipped.
    """
    found: dict[str, ImageSource] = {}
    for item in inputs:
        location = os.fspath(item)
        kind = _kind(location)
        if kind == "folder":
            for path in list_folder(location):
                found.setdefault(path, ImageSource(path))
        elif kind == "file" and is_manifest(location):
            for source in read_manifest(location):
                found.setdefault(source.path, source)
        elif kind == "file":
            found.setdefault(location, ImageSource(location))
        else:
            raise ConfigError(f"input {location!r} does not exist (expected a file, folder or "
                              "manifest .csv/.parquet)")
    return sorted(found.values())


def list_archive(location: str | os.PathLike) -> list[ImageSource]:
    """An archive -> its files with their task ids, sorted by (task, path).

    Either a root folder with one sub-folder per task (searched recursively; the sub-folder's
    name is the task id), or a manifest. A manifest without a ``task_id`` column (or with empty
    cells) is one task named after the manifest's file stem."""
    location = os.fspath(location)
    kind = _kind(location)
    if kind == "file" and is_manifest(location):
        stem = PurePosixPath(location).stem
        sources = [dataclasses.replace(s, task_id=s.task_id or stem)
                   for s in read_manifest(location)]
    elif kind == "folder":
        root = location.rstrip("/") if is_uri(location) else os.fspath(Path(location))
        sources = []
        for path in list_folder(root):
            parts = path[len(root):].lstrip("/").split("/")
            if len(parts) >= 2 and not parts[0].startswith("."):
                sources.append(ImageSource(path, parts[0]))
        if not sources:
            raise ConfigError(f"{location} has no task sub-folders with files; expected "
                              "ROOT/<task_id>/... or a manifest")
    else:
        raise ConfigError(f"archive {location!r} is neither a folder nor a .csv/.parquet "
                          "manifest")
    unique = {(s.task_id, s.path): s for s in sources}
    return sorted(unique.values(), key=lambda s: (s.task_id, s.path))


def with_decoding(sources: Sequence[ImageSource], *, window: str | None = None,
                  axes: str | None = None) -> list[ImageSource]:
    """The sources, each without a window (or slice axes) of its own given ``window`` (a CT
    preset) and ``axes`` (SLICE_AXES); a manifest's own values win."""
    if window:
        window_bounds(window)  # refuse an unknown preset before any file is read
    if axes:
        slice_axes(axes)
    return [dataclasses.replace(s, window=s.window or window or "", axes=s.axes or axes or "")
            for s in sources]
