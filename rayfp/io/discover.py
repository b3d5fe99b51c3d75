"""Turn command-line inputs (files, folders, manifest CSVs) into a sorted list of image files.

The order is part of the fingerprint recipe: sampling indexes into this list, so it is sorted and
de-duplicated to make the same inputs give the same fingerprint on every machine.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path

from rayfp.errors import ConfigError
from rayfp.io.raster import RASTER_SUFFIXES

# Files in archive folders that are certainly not images (DICOM often has no suffix at all).
IGNORED_SUFFIXES = (".txt", ".json", ".csv", ".md", ".xml", ".html", ".py", ".gz", ".zip",
                    ".dump", ".icc", ".parquet", ".yaml", ".yml", ".log")
MANIFEST_SUFFIXES = (".csv",)


@dataclasses.dataclass(frozen=True, order=True)
class ImageSource:
    """One input file; ``task_id`` is set when a manifest assigns it."""

    path: str
    task_id: str = ""
    modality: str = ""


def is_candidate(path: Path) -> bool:
    """Could this file be an image? (DICOM often has no suffix at all.)"""
    if path.name.startswith("."):
        return False
    suffix = path.suffix.lower()
    return suffix in RASTER_SUFFIXES or suffix == ".dcm" or suffix not in IGNORED_SUFFIXES


def read_manifest(path: Path) -> list[ImageSource]:
    """CSV with a ``path`` column (optional ``task_id``, ``modality``); relative paths are
    resolved against the manifest's folder."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ConfigError(
                f"manifest {path} needs a 'path' column; found columns {reader.fieldnames}")
        rows = list(reader)
    sources = []
    for row in rows:
        file_path = Path(row["path"])
        if not file_path.is_absolute():
            file_path = path.parent / file_path
        sources.append(ImageSource(os.fspath(file_path), row.get("task_id") or "",
                                   row.get("modality") or ""))
    return sources


def discover_sources(inputs: Iterable[str | os.PathLike]) -> list[ImageSource]:
    """Expand files, folders (recursively) and manifest CSVs into sorted, unique sources.

    A named file is always kept (a broken one is reported by the decoder, not dropped here);
    inside folders, files with non-image suffixes (.txt, .json, ...) are skipped.
    """
    found: dict[str, ImageSource] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and is_candidate(child):
                    found.setdefault(os.fspath(child), ImageSource(os.fspath(child)))
        elif path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            for source in read_manifest(path):
                found.setdefault(source.path, source)
        elif path.exists():
            found.setdefault(os.fspath(path), ImageSource(os.fspath(path)))
        else:
            raise ConfigError(f"input {os.fspath(path)!r} does not exist (expected a file, folder "
                              "or manifest CSV)")
    return sorted(found.values())
