"""The decoded-image record and the intensity normalisations shared by all decoders.

Every decoder returns float32 pixels in [0, 1]: (H, W) for grey, (H, W, 3) for colour.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# A robust window for images without a stored one: ignore the extreme 0.5 % on each side.
ROBUST_PERCENTILES = (0.5, 99.5)
# Hounsfield windows (centre, width) for CT in HU: chosen with --window or a manifest's
# `window` column; every other image gets its stored or the robust window.
WINDOW_PRESETS = {"brain": (40.0, 80.0), "soft-tissue": (40.0, 400.0),
                  "lung": (-600.0, 1500.0), "bone": (400.0, 1800.0)}


def window_bounds(name: str) -> tuple[float, float]:
    """(lo, hi) in HU of a preset; an unknown name is a ConfigError listing the presets."""
    from rayfp.registry import look_up

    centre, width = WINDOW_PRESETS[look_up("CT window", name, WINDOW_PRESETS)]
    return centre - width / 2.0, centre + width / 2.0


# Which slices of a volume views are cut from: the acquisition axis (default), one anatomical
# plane of the canonical RAS+ volume (axis 0 sagittal, 1 coronal, 2 axial), or all three.
# NIfTI volumes follow it; DICOM volumes keep their acquisition axis (their slices are files or
# frames: a reformat would need the whole series in one worker).
SLICE_AXES = {"acquisition": None, "sagittal": (0,), "coronal": (1,), "axial": (2,),
              "all": (0, 1, 2)}


def slice_axes(name: str | None) -> tuple[int, ...] | None:
    """The canonical axes of a SLICE_AXES name (None: the acquisition axis); an unknown
    name is a ConfigError listing the choices."""
    from rayfp.registry import look_up

    return SLICE_AXES[look_up("slice axes", name or "acquisition", SLICE_AXES)]


# Background rule for the slices of a volume (NIfTI, multi-frame DICOM, DICOM series): a slice
# with fewer than FOREGROUND_SHARE of its pixels above FOREGROUND_LEVEL of its window is
# background and is not sampled; a volume with no other slice keeps its middle one.
FOREGROUND_LEVEL = 0.10
FOREGROUND_SHARE = 0.05


def foreground_share(unit: np.ndarray) -> float:
    """The share of pixels above FOREGROUND_LEVEL in a [0, 1] slice ((H, W) or (H, W, 3))."""
    grey = unit if unit.ndim == 2 else unit.mean(axis=-1)
    return float((grey > FOREGROUND_LEVEL).mean())


def is_foreground(unit: np.ndarray) -> bool:
    return foreground_share(unit) >= FOREGROUND_SHARE


# Above this many pixels (rows x columns x frames) a file is refused before decoding.
DEFAULT_MAX_PIXELS = 2**28


@dataclasses.dataclass(frozen=True)
class ImageMeta:
    """Where a decoded image came from: ``frame`` is its index in a multi-frame file;
    ``volume``: the file's frames are slices of one volume (one sampling unit); ``slice``:
    a single-slice DICOM file's place in its series (grouped into a volume by the inventory)."""

    path: str
    modality: str = ""
    frame: int = 0
    n_frames: int = 1
    volume: bool = False
    slice: SliceGeometry | None = None  # a DICOM file's series (a single slice: its place)
    patient: str = ""  # DICOM Patient ID: the unit of `--unit patient`


@dataclasses.dataclass(frozen=True)
class SliceGeometry:
    """Where a single-slice DICOM file lies in its series (PS3.3 C.7.6.2).

    position: Image Position (Patient) projected on the slice normal (mm; NaN without IPP);
    orientation: Image Orientation (Patient) rounded to 1e-3, as text ("" without IOP);
    study: "PatientID/StudyInstanceUID"."""

    series: str
    study: str = ""
    position: float = float("nan")
    orientation: str = ""
    pixel_spacing: str = ""
    instance: int = 0


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    """pixels: (H, W) or (H, W, 3) float32 in [0, 1]."""

    pixels: np.ndarray
    meta: ImageMeta

    @property
    def is_colour(self) -> bool:
        return self.pixels.ndim == 3


def rescale_to_unit(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linearly map [lo, hi] to [0, 1] and clip; a flat window gives an all-zero image."""
    values = np.asarray(values, dtype=np.float32)
    if not hi > lo:
        return np.zeros_like(values, dtype=np.float32)
    return np.clip((values - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0).astype(np.float32)


def robust_window(values: np.ndarray) -> tuple[float, float]:
    """(lo, hi) = the 0.5 / 99.5 percentiles; falls back to min/max when those coincide."""
    finite = np.asarray(values, dtype=np.float32)
    lo, hi = np.percentile(finite, ROBUST_PERCENTILES)
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    return float(lo), float(hi)


def integer_range_to_unit(values: np.ndarray, bits: int) -> np.ndarray:
    """Scale unsigned integer samples of ``bits`` significant bits to [0, 1]."""
    return rescale_to_unit(values, 0.0, float(2**bits - 1))
