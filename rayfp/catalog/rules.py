"""The selection rules: which images and labels of a local copy make a task, declared per task in
the catalog and applied here. Five kinds cover the paper's 35 datasets:

- ``folders``: globs with a ``{class}`` path part (``MURA-v1.1/train/XR_HAND/*/*_{class}/*.png``);
  optional ``classes`` (others are reported as extra, not used), ``min_class_size`` (smaller
  classes are dropped, as Kvasir-Capsule's tasks drop those under 200) and ``exclude`` (globs on
  the file name, such as BUSI's ``*_mask*``);
- ``regex``: globs and a regular expression on the relative path whose ``label`` group is the
  class (Shenzhen: the file name's last character), with an optional ``labels`` map;
- ``csv``: a label table (``sep`` for TSV or the ``||`` of PH2), an ``image`` template over its
  columns, and either a ``label`` column whose ``values`` map allowed entries to classes (others
  are dropped: CheXpert's blank and -1) or ``one_hot`` class columns; optional ``rows`` (index
  files that choose rows, derm7pt's splits) and ``exclude`` (a table of keys to drop, ISIC's
  duplicates);
- ``video_frames``: videos and, per video, an annotation table of frame numbers and labels
  (Cholec80: every 25th frame);
- ``arrays``: the array files torchvision-style sets ship (MNIST/EMNIST IDX, CIFAR pickles, SVHN
  ``.mat``): one image per row, labels from the same files.

Hidden files (``._*`` from macOS archives, ``.DS_Store``) are never images. Torch-free: a rule
reads label files and lists folders; decoding is rayfp.catalog.materialize's and the job's.
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import functools
import glob
import gzip
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from rayfp.errors import CatalogError


@dataclasses.dataclass(frozen=True, order=True)
class Item:
    """One image of a task: a file (``frame`` None), a frame of a video, or a row of an array
    file, relative to the dataset's folder."""

    path: str
    label: str
    frame: int | None = None

    @property
    def is_file(self) -> bool:
        return self.frame is None


@dataclasses.dataclass
class Selection:
    """What a rule picked, and the differences worth naming that did not stop it."""

    items: list[Item]
    notes: list[str] = dataclasses.field(default_factory=list)

    def class_counts(self) -> collections.Counter:
        return collections.Counter(item.label for item in self.items)


def _hidden(path: str) -> bool:
    return any(part.startswith(".") for part in Path(path).parts)


def _glob(base: Path, pattern: str) -> list[str]:
    """Relative posix paths of the files matching ``pattern`` under ``base``, sorted."""
    found = glob.glob(glob.escape(str(base)) + "/" + pattern)
    rel = (Path(p).relative_to(base).as_posix() for p in found if os.path.isfile(p))
    return sorted(p for p in rel if not _hidden(p))


def _class_regex(pattern: str) -> re.Pattern:
    out = []
    for token in re.split(r"(\{class\}|\*|\?)", pattern):
        out.append({"{class}": r"(?P<label>[^/]+)", "*": r"[^/]*", "?": r"[^/]"}.get(
            token, re.escape(token)))
    return re.compile("".join(out) + "$")


def _patterns(rule: dict, field: str) -> list[str]:
    value = rule.get(field)
    if not value:
        raise CatalogError(f"rule needs {field!r}")
    return [value] if isinstance(value, str) else list(value)


def _keep_classes(items: list[Item], rule: dict, notes: list[str]) -> list[Item]:
    dropped = {str(c) for c in rule.get("exclude_classes", [])}
    if dropped:  # folders that are not classes (Caltech 101's BACKGROUND_Google)
        items = [i for i in items if i.label not in dropped]
    counts = collections.Counter(i.label for i in items)
    wanted = rule.get("classes")
    if wanted is not None:
        wanted = [str(c) for c in wanted]
        extra = sorted(set(counts) - set(wanted))
        missing = [c for c in wanted if c not in counts]
        if extra:
            notes.append(f"classes not in the rule, left out: {extra}")
        if missing:
            notes.append(f"classes with no image: {missing}")
        items = [i for i in items if i.label in set(wanted)]
    least = int(rule.get("min_class_size", 0))
    if least:
        small = sorted(c for c, n in counts.items() if n < least and
                       (wanted is None or c in set(wanted)))
        if small:
            notes.append(f"classes under {least} images dropped (as the paper): {small}")
            items = [i for i in items if i.label not in set(small)]
    return items


def _excluded(name: str, rule: dict) -> bool:
    return any(fnmatch.fnmatch(name, g) for g in rule.get("exclude", []))


def select_folders(base: Path, rule: dict) -> Selection:
    items, notes = [], []
    for pattern in _patterns(rule, "patterns"):
        if "{class}" not in pattern:
            raise CatalogError(f"folders pattern {pattern!r} has no {{class}} part")
        regex = _class_regex(pattern)
        for rel in _glob(base, pattern.replace("{class}", "*")):
            match = regex.match(rel)
            if match and not _excluded(Path(rel).name, rule):
                items.append(Item(rel, match["label"]))
    return Selection(_keep_classes(items, rule, notes), notes)


def select_regex(base: Path, rule: dict) -> Selection:
    try:
        regex = re.compile(rule["pattern"])
    except (KeyError, re.error) as exc:
        raise CatalogError(f"regex rule needs a valid 'pattern': {exc}") from None
    labels = {str(k): str(v) for k, v in (rule.get("labels") or {}).items()}
    items, notes, unmatched = [], [], 0
    for pattern in _patterns(rule, "patterns"):
        for rel in _glob(base, pattern):
            match = regex.search(rel)
            if not match or _excluded(Path(rel).name, rule):
                unmatched += bool(not match)
                continue
            label = match["label"]
            if labels and label not in labels:
                notes.append(f"{rel}: label {label!r} is not one of {sorted(labels)}")
                continue
            items.append(Item(rel, labels.get(label, label)))
    if unmatched:
        notes.append(f"{unmatched} files do not match {rule['pattern']!r}, left out")
    return Selection(_keep_classes(items, rule, notes), notes)


def read_label_table(path: Path, sep: str = ","):
    """The label table at ``path`` (see _parse_table); read once per version of the file, since
    CheXpert's 13 tasks share one table of 223k rows. Callers must not modify it."""
    if not path.is_file():
        raise CatalogError(f"{path}: label file is missing")
    stat = path.stat()
    return _parse_table(str(path), stat.st_mtime_ns, stat.st_size, sep)


@functools.lru_cache(maxsize=8)
def _parse_table(name: str, _mtime: int, _size: int, sep: str):
    """A label table as strings (no float parsing: CheXpert's "1.0" stays "1.0"). A missing or
    empty table, an unterminated quote, or a row with more or fewer fields than the header (a
    table cut off mid-row) raises CatalogError naming the file and the row: a truncated copy
    must never pass for a smaller task. ``sep``: one character, or a regular expression (PH2's
    ``||`` columns)."""
    import csv
    import io

    import pandas as pd

    path = Path(name)
    try:
        text = path.read_text(encoding="utf-8-sig")
        if len(sep) == 1:
            rows = list(csv.reader(io.StringIO(text), delimiter=sep, strict=True,
                                   skipinitialspace=True))
        else:
            rows = [re.split(sep, line) for line in text.splitlines()]
    except (csv.Error, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: cannot read the label table: {exc}") from None
    numbered = [(n, r) for n, r in enumerate(rows, 1) if any(c.strip() for c in r)]
    if not numbered:
        raise CatalogError(f"{path}: the label table is empty")
    header = [c.strip() for c in numbered[0][1]]
    ragged = [(n, len(r)) for n, r in numbered[1:] if len(r) != len(header)]
    if ragged:
        n, width = ragged[0]
        raise CatalogError(f"{path}: row {n} has {width} fields, the header has {len(header)}: "
                           f"the table is truncated or malformed ({len(ragged)} such rows)")
    return pd.DataFrame([r for _, r in numbered[1:]], columns=header, dtype=str)


def _column(frame, name: str, where: Path):
    if name not in frame.columns:
        raise CatalogError(f"{where}: no column {name!r} (columns: {list(frame.columns)[:12]})")
    return frame[name].str.strip()


def _template_paths(frame, template: str, where: Path) -> list[str]:
    fields = re.findall(r"\{([^}]+)\}", template)
    columns = {f: _column(frame, f, where).tolist() for f in fields}
    out = []
    for i in range(len(frame)):
        path = template
        for f in fields:
            path = path.replace("{" + f + "}", columns[f][i])
        out.append(path.replace("\\", "/").lstrip("/"))
    return out


def select_csv(base: Path, rule: dict, *, require_files: bool = True) -> Selection:
    sep = rule.get("sep", ",")
    table_path = base / _patterns(rule, "file")[0]
    frame = read_label_table(table_path, sep)
    notes: list[str] = []
    if "rows" in rule:  # index files that choose rows (by position in the table)
        chosen: list[int] = []
        for name in rule["rows"]["files"]:
            index = read_label_table(base / name)
            chosen += [int(v) for v in _column(index, rule["rows"]["column"], base / name)]
        frame = frame.iloc[sorted(set(chosen))].reset_index(drop=True)
    paths = _template_paths(frame, _patterns(rule, "image")[0], table_path)
    if "one_hot" in rule:
        marks = {cls: _column(frame, col, table_path).tolist()
                 for cls, col in rule["one_hot"].items()}
        labels = []
        for i in range(len(frame)):
            hot = [cls for cls in marks if marks[cls][i]]
            labels.append(hot[0] if len(hot) == 1 else None)
        ambiguous = sum(label is None for label in labels)
        if ambiguous:
            notes.append(f"{ambiguous} rows of {table_path.name} mark no class or several, "
                         "left out")
    else:
        values = {str(k): str(v) for k, v in (rule.get("values") or {}).items()}
        raw = _column(frame, _patterns(rule, "label")[0], table_path).tolist()
        labels = [values.get(v) if values else v for v in raw]
    keys = set()
    if "exclude" in rule:
        ex = rule["exclude"]
        drop = read_label_table(base / ex["file"])
        keys = set(_column(drop, ex["column"], base / ex["file"]))
        key_of = _column(frame, ex["key"], table_path).tolist()
    items = []
    for i, (path, label) in enumerate(zip(paths, labels)):
        if label is None or (keys and key_of[i] in keys):
            continue
        items.append(Item(path, label))
    if keys:
        notes.append(f"{len(paths) - len(items)} rows left out (label not used, or listed in "
                     f"{rule['exclude']['file']})")
    if require_files:
        missing = [i for i in items if not (base / i.path).is_file()]
        if missing:
            notes.append(f"{len(missing)} images named by {table_path.name} are missing "
                         f"(first: {missing[0].path})")
            items = [i for i in items if (base / i.path).is_file()]
    return Selection(_keep_classes(items, rule, notes), notes)


def select_video_frames(base: Path, rule: dict) -> Selection:
    every = int(rule.get("every", 1))
    values = {str(k): str(v) for k, v in (rule.get("values") or {}).items()}
    items, notes = [], []
    videos = [v for p in _patterns(rule, "videos") for v in _glob(base, p)]
    if not videos:
        raise CatalogError(f"{base}: no video matches {rule['videos']!r}")
    for video in videos:
        stem = Path(video).stem
        table_path = base / rule["annotations"].replace("{stem}", stem)
        frame = read_label_table(table_path, rule.get("sep", ","))
        numbers = _column(frame, rule.get("frame_column", "Frame"), table_path).tolist()
        raw = _column(frame, rule["label"], table_path).tolist()
        for number, value in zip(numbers, raw):
            try:
                index = int(number)
            except ValueError:
                raise CatalogError(f"{table_path}: frame number {number!r} is not an integer"
                                   ) from None
            if index % every:
                continue
            label = values.get(value) if values else value
            if label is not None:
                items.append(Item(video, label, index))
    return Selection(_keep_classes(items, rule, notes), notes)


# --- array files (torchvision-style sets) --------------------------------------------------


def _open(path: Path):
    if not path.is_file() and Path(str(path) + ".gz").is_file():
        path = Path(str(path) + ".gz")
    if not path.is_file():
        raise CatalogError(f"{path}: array file is missing")
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST, EMNIST; plain or .gz) as an array."""
    with _open(path) as handle:
        data = handle.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 8:
        raise CatalogError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise CatalogError(f"{path}: truncated: {body.size} bytes for shape {shape}")
    return body.reshape(shape)


def _unpickle(path: Path) -> dict:
    with _open(path) as handle:
        try:
            return pickle.load(handle, encoding="bytes")  # noqa: S301 - CIFAR's own format
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise CatalogError(f"{path}: cannot read the CIFAR batch: {exc}") from None


def read_arrays(base: Path, rule: dict, *, images: bool) -> tuple[list[np.ndarray | None],
                                                                   list[int], list[str]]:
    """(per row: the image or None, the label index, the row's file) of an arrays rule."""
    fmt = rule.get("format")
    rows: list[Any] = []
    labels: list[int] = []
    files: list[str] = []
    if fmt == "idx":
        for img_name, lab_name in zip(_patterns(rule, "images"), _patterns(rule, "labels")):
            lab = read_idx(base / lab_name)
            imgs = read_idx(base / img_name) if images else [None] * len(lab)
            if images and len(imgs) != len(lab):
                raise CatalogError(f"{base / img_name}: {len(imgs)} images, {len(lab)} labels")
            if images and rule.get("transpose"):  # EMNIST stores images transposed
                imgs = np.transpose(imgs, (0, 2, 1))
            rows += list(imgs)
            labels += lab.astype(int).tolist()
            files += [img_name] * len(lab)
    elif fmt == "cifar":
        key = rule.get("label_key", "labels").encode()
        for name in _patterns(rule, "images"):
            batch = _unpickle(base / name)
            lab = batch.get(key)
            if lab is None:
                raise CatalogError(f"{base / name}: no {key.decode()!r} in the batch")
            data = batch[b"data"] if images else [None] * len(lab)
            rows += ([np.asarray(r, np.uint8).reshape(3, 32, 32).transpose(1, 2, 0)
                      for r in data] if images else data)
            labels += [int(v) for v in lab]
            files += [name] * len(lab)
    elif fmt == "svhn":
        import scipy.io

        name = _patterns(rule, "images")[0]
        path = base / name
        if not path.is_file():
            raise CatalogError(f"{path}: array file is missing")
        try:
            mat = scipy.io.loadmat(path, variable_names=["y", "X"] if images else ["y"])
        except (ValueError, OSError) as exc:
            raise CatalogError(f"{path}: cannot read the .mat file: {exc}") from None
        lab = mat["y"].ravel().astype(int) % 10  # SVHN writes digit 0 as label 10
        rows = list(np.moveaxis(mat["X"], -1, 0)) if images else [None] * len(lab)
        labels, files = lab.tolist(), [name] * len(lab)
    else:
        raise CatalogError(f"arrays format {fmt!r} is not one of idx, cifar, svhn")
    return rows, labels, files


def select_arrays(base: Path, rule: dict) -> Selection:
    _, labels, files = read_arrays(base, rule, images=False)
    names = [str(c) for c in rule.get("classes", [])]
    seen: dict[str, int] = collections.Counter()
    items = []
    for label, name in zip(labels, files):
        items.append(Item(name, names[label] if names else str(label), seen[name]))
        seen[name] += 1
    notes: list[str] = []
    return Selection(_keep_classes(items, rule, notes), notes)


def select(base: str | Path, rule: dict, *, require_files: bool = True) -> Selection:
    """Apply one task's rule to a dataset's local folder. ``require_files=False`` counts labels
    without looking for the images (checking a label file before the images are downloaded).
    Raises CatalogError when the copy cannot be read as the rule says."""
    base = Path(base)
    if not base.is_dir():
        raise CatalogError(f"{base}: the dataset's folder is missing")
    kind = rule.get("kind")
    if kind == "folders":
        selection = select_folders(base, rule)
    elif kind == "regex":
        selection = select_regex(base, rule)
    elif kind == "csv":
        selection = select_csv(base, rule, require_files=require_files)
    elif kind == "video_frames":
        selection = select_video_frames(base, rule)
    elif kind == "arrays":
        selection = select_arrays(base, rule)
    else:
        raise CatalogError(f"unknown rule kind {kind!r}")
    if not selection.items:
        raise CatalogError(f"{base}: the rule picks no image"
                           + (f" ({'; '.join(selection.notes)})" if selection.notes else ""))
    return selection
