"""What a task's files hold: the decodable images (frames) and the files that cannot be used.

The sampling unit: a 2-D image, or a whole volume: a NIfTI file, a multi-frame DICOM file, or
the files of one DICOM series (rayfp.io.series); with ``unit="patient"``, all files of one
DICOM Patient ID.
One model for every path. `inventory_file` decodes one file and never raises (a job must not
die on one bad file); `group_inventory` turns per-file records into per-task inventories. The
local client maps `inventory_file` in a loop, the Ray job maps it over a cluster: both group the
same records with the same code, so they agree on image lists, skipped files and modality.
Torch-free and Ray-free.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from rayfp.errors import ConfigError, DecodeError, TooFewImagesError
from rayfp.io.decode import decode_file
from rayfp.io.image import DEFAULT_MAX_PIXELS, is_foreground
from rayfp.io.series import SeriesVolume, assemble_series
from rayfp.io.sources import ImageSource

UNKNOWN_MODALITY = "unknown"
# What one sampling (and privacy) unit is: "image" (a 2-D image or frame, or a whole volume:
# NIfTI, multi-frame DICOM, DICOM series), or "patient" (every file with one DICOM Patient
# ID; files without one stay image units).
UNITS = ("image", "patient")


@dataclasses.dataclass(frozen=True, order=True)
class ImageRef:
    """One distinct image: a frame of a file."""

    path: str
    frame: int


@dataclasses.dataclass(frozen=True)
class SkippedFile:
    """A file that gave no image, with a machine-readable reason (DecodeError.reason)."""

    path: str
    task_id: str
    reason: str
    detail: str


@dataclasses.dataclass(frozen=True)
class FileRecord:
    """One file's inventory: its frame count and modality, or why it cannot be used."""

    path: str
    task_id: str
    n_frames: int
    modality: str
    reason: str = ""
    detail: str = ""
    volume: bool = False  # the frames are slices of one volume: one sampling unit
    window: str = ""  # the CT window it was decoded with ("": its stored or robust one)
    axes: str = ""  # the planes a NIfTI volume was sliced along ("": acquisition)
    # A DICOM file's series and a single slice's place in it (rayfp.io.image.SliceGeometry,
    # flat so that the record travels as a plain row through Ray Data).
    series: str = ""
    study: str = ""
    position: float = float("nan")
    orientation: str = ""
    pixel_spacing: str = ""
    instance: int = 0
    foreground: bool = True
    patient: str = ""  # DICOM Patient ID ("" when the file names none)
    # Per frame: a digest of its decoded pixels. The keyed plan draws a unit's views from it,
    # so they follow the image, not its file name or place. Kept in memory, never stored.
    digests: list[str] = dataclasses.field(default_factory=list)

    def to_record(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, row: dict) -> FileRecord:
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls) if f.name in row})


def inventory_file(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> FileRecord:
    """Decode one file. The modality is the manifest's, else the file's own, else 'unknown'.
    Never raises for a bad file: unexpected decoder crashes are recorded too."""
    try:
        frames = decode_file(source.path, max_pixels=max_pixels, window=source.window or None,
                             axes=source.axes or None)
    except DecodeError as exc:
        return FileRecord(source.path, source.task_id, 0, "", exc.reason, exc.detail)
    except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not kill the job
        return FileRecord(source.path, source.task_id, 0, "", "decoder_crash",
                          f"{type(exc).__name__}: {exc}")
    meta = frames[0].meta
    modality = source.modality or meta.modality or UNKNOWN_MODALITY
    record = FileRecord(source.path, source.task_id, len(frames), modality,
                        volume=meta.volume, window=source.window, axes=source.axes,
                        patient=meta.patient, digests=[pixel_digest(f.pixels) for f in frames])
    if meta.slice is None:
        return record
    return dataclasses.replace(record, **dataclasses.asdict(meta.slice),
                               foreground=is_foreground(frames[0].pixels))


def pixel_digest(pixels: np.ndarray) -> str:
    """A frame's content: sha256 of its decoded pixels, shape and dtype (hex, 128 bits)."""
    pixels = np.ascontiguousarray(pixels)
    head = f"{pixels.dtype.str}{pixels.shape}".encode()
    return hashlib.sha256(head + pixels.tobytes()).hexdigest()[:32]


@dataclasses.dataclass
class TaskInventory:
    """The decodable images of one task (sampling indexes into this list: a unit's images are
    contiguous), the files that were skipped, the units per modality, and the DICOM series
    assembled into volumes (with their geometry problems)."""

    task_id: str
    images: list[ImageRef]
    skipped: list[SkippedFile]
    modalities: collections.Counter
    units: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> its volume's key
    windows: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> CT window
    axes: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> slice axes
    series: list[SeriesVolume] = dataclasses.field(default_factory=list)
    digests: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # path -> per frame

    @property
    def n_images(self) -> int:
        """Distinct sampling units: a 2-D image (or frame), or a whole volume. The minimum,
        the sampling plan and the privacy unit all count these."""
        return len(self.unit_starts)

    @property
    def unit_starts(self) -> np.ndarray:
        """Index in ``images`` of each unit's first image."""
        keys = [self.unit_key(ref) for ref in self.images]
        return np.array([i for i, key in enumerate(keys) if i == 0 or key != keys[i - 1]],
                        np.int64)

    def unit_key(self, ref: ImageRef) -> str:
        """What a view table and the privacy unit call the image's unit: the volume's key
        (a volume file's path, or "series:<Series Instance UID>"), else "path#frame"."""
        return self.units.get(ref.path) or f"{ref.path}#{ref.frame}"

    def unit_contents(self) -> list[bytes]:
        """Each unit's content digest, in unit order: sha256 over its images' pixel digests in
        the unit's own order. What the keyed plan draws the unit's views from (never stored)."""
        starts = self.unit_starts
        ends = np.r_[starts[1:], len(self.images)]
        out = []
        for start, end in zip(starts, ends):
            h = hashlib.sha256()
            for ref in self.images[start:end]:
                frames = self.digests.get(ref.path)
                if not frames:
                    raise ConfigError(f"{ref.path}: no content digest in the inventory; take it "
                                      "with rayfp.io.inventory.inventory_file")
                h.update(bytes.fromhex(frames[ref.frame]))
            out.append(h.digest())
        return out

    @property
    def series_problems(self) -> list:
        """Every series' geometry problems (rayfp.errors.SeriesError), by series."""
        return [problem for volume in self.series for problem in volume.problems]

    @property
    def n_background(self) -> int:
        """Slices of DICOM series that are background and are not sampled."""
        return sum(volume.n_background for volume in self.series)

    def images_of_views(self, unit_index: np.ndarray, slice_u: np.ndarray | None) -> np.ndarray:
        """Each view's image: the unit's only image, or its slice picked by ``slice_u``."""
        starts = self.unit_starts
        if len(starts) == len(self.images):
            return np.asarray(unit_index, np.int64)
        sizes = np.diff(np.r_[starts, len(self.images)])
        if slice_u is None:
            raise ValueError("a plan over volumes needs slice_u")
        pick = np.minimum((slice_u * sizes[unit_index]).astype(np.int64), sizes[unit_index] - 1)
        return starts[unit_index] + pick

    @property
    def modality(self) -> str:
        """The modality of most images; ties go to the alphabetically first ('' if none)."""
        if not self.modalities:
            return ""
        return min(self.modalities, key=lambda name: (-self.modalities[name], name))

    def require(self, min_images: int) -> None:
        if self.n_images < min_images:
            raise TooFewImagesError(
                f"task {self.task_id!r} has {self.n_images} decodable distinct images, fewer "
                f"than the minimum of {min_images} ({len(self.skipped)} files skipped); add "
                "images or lower --min-images if your privacy policy allows")


def group_inventory(records: Iterable[FileRecord], *, unit: str = "image"
                    ) -> dict[str, TaskInventory]:
    """Per-file records -> per-task inventories, sorted by task id. Images are in path order,
    a volume's at its first path, a series' slices in slice order; with ``unit="patient"`` a
    patient's images follow each other from where the first of them stands."""
    if unit not in UNITS:
        raise ConfigError(f"unit must be one of {UNITS}, got {unit!r}")
    tasks: dict[str, TaskInventory] = {}
    patients: dict[str, str] = {}
    series: dict[tuple[str, str], list[FileRecord]] = collections.defaultdict(list)
    for record in records:
        task = tasks.setdefault(record.task_id, TaskInventory(record.task_id, [], [],
                                                              collections.Counter()))
        if record.patient:
            patients[record.path] = record.patient
        if record.reason:
            task.skipped.append(SkippedFile(record.path, record.task_id, record.reason,
                                            record.detail))
        elif record.series:
            series[record.task_id, record.series].append(record)
        else:
            _add_file(task, record)
    order: dict[str, tuple[str, int]] = {}  # path -> (where its unit sorts, rank in the unit)
    for (task_id, uid), group in sorted(series.items()):
        if len(group) == 1:  # a lone file: a 2-D image or a multi-frame volume like any other
            _add_file(tasks[task_id], group[0])
        else:
            _add_series(tasks[task_id], uid, group, order)
    for task in tasks.values():
        task.images.sort(key=lambda ref: (order.get(ref.path, (ref.path, 0)), ref.frame))
        task.skipped.sort(key=lambda s: s.path)
        if unit == "patient":
            _group_by_patient(task, patients)
    return dict(sorted(tasks.items()))


def _group_by_patient(task: TaskInventory, patients: dict[str, str]) -> None:
    """Every image of one Patient ID becomes one unit ("patient:<id>"), contiguous, at the
    place of the patient's first image; images without an ID keep their unit and place."""
    first: dict[str, int] = {}
    for index, ref in enumerate(task.images):
        if ref.path in patients:
            first.setdefault(patients[ref.path], index)
    place = {ref: (first[patients[ref.path]] if ref.path in patients else index, index)
             for index, ref in enumerate(task.images)}
    task.images.sort(key=place.__getitem__)
    for ref in task.images:
        if ref.path in patients:
            task.units[ref.path] = f"patient:{patients[ref.path]}"


def _add_file(task: TaskInventory, record: FileRecord) -> None:
    task.images.extend(ImageRef(record.path, f) for f in range(record.n_frames))
    task.modalities[record.modality] += 1 if record.volume else record.n_frames
    if record.volume:
        task.units[record.path] = record.path
    _keep_decoding(task, record)


def _keep_decoding(task: TaskInventory, record: FileRecord) -> None:
    """How the file was decoded, so its views are cut from the same frames, and what it holds."""
    if record.digests:
        task.digests[record.path] = list(record.digests)
    if record.window:
        task.windows[record.path] = record.window
    if record.axes:
        task.axes[record.path] = record.axes


def _add_series(task: TaskInventory, uid: str, group: list[FileRecord],
                order: dict[str, tuple[str, int]]) -> None:
    """Several files of one series: one unit. Multi-frame files (pydicom ships one acquisition
    in several encodings) come first, then the single-slice files, assembled in slice order."""
    anchor, ranks = min(r.path for r in group), iter(range(len(group)))

    def place(record: FileRecord, frames: Iterable[int]) -> None:
        task.images.extend(ImageRef(record.path, f) for f in frames)
        task.units[record.path] = f"series:{uid}"
        order[record.path] = (anchor, next(ranks))
        _keep_decoding(task, record)

    for record in sorted((r for r in group if r.volume), key=lambda r: r.path):
        place(record, range(record.n_frames))
    slices = [r for r in group if not r.volume]
    if len(slices) >= 2:
        volume = assemble_series(uid, slices)
        by_path = {r.path: r for r in slices}
        for path in volume.sampled:
            place(by_path[path], [0])
        task.series.append(volume)
    if len(slices) == 1:
        place(slices[0], [0])
    task.modalities[collections.Counter(r.modality for r in group).most_common(1)[0][0]] += 1


def take_inventory(sources: Sequence[ImageSource], *, task_id: str = "",
                   max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False,
                   unit: str = "image") -> TaskInventory:
    """All sources as one task (the local client's case): each file decoded once, here.
    ``unit``: what one sampling and privacy unit is (UNITS)."""
    records = [dataclasses.replace(inventory_file(s, max_pixels=max_pixels), task_id=task_id)
               for s in tqdm(sources, desc="decode", unit="file", disable=not progress)]
    return group_inventory(records, unit=unit).get(
        task_id, TaskInventory(task_id, [], [], collections.Counter()))
