"""NIfTI volumes (.nii, .nii.gz) through nibabel: one volume is one sampling unit, its
slices are the frames views are cut from.

- Orientation: the volume is brought to the closest canonical (RAS+) orientation first, so the
  same anatomy lies along the same axis in every file.
- Slices are taken along the acquisition axis: the header's slice dimension if it names one,
  else the axis with the largest voxel size (thick slices), else the last axis; or along the
  planes ``axes`` names (rayfp.io.image.SLICE_AXES: axial, coronal, sagittal, all), each slice
  resampled to square pixels (thick slices make reformatted planes anisotropic).
- Intensities: the robust window (0.5 / 99.5 percentiles) of the whole volume, so all slices
  of a volume share one window; a CT volume in Hounsfield units can take a preset instead
  (rayfp.io.image.WINDOW_PRESETS).
- Background: a slice with fewer than 5 % of its pixels above 10 % of the window is skipped;
  a volume with no other slice keeps its middle slice (rayfp.io.image.is_foreground, the rule
  every volume follows).
- 4-D files: the first volume.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator

import numpy as np

from rayfp import errors
from rayfp.io.image import (
    FOREGROUND_LEVEL,
    FOREGROUND_SHARE,
    DecodedImage,
    ImageMeta,
    rescale_to_unit,
    robust_window,
    slice_axes,
    window_bounds,
)

NIFTI_SUFFIXES = (".nii", ".nii.gz")

def is_nifti(path: str) -> bool:
    return path.lower().endswith(NIFTI_SUFFIXES)


def _load(path: str, data: bytes | None):
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    try:
        if data is None:
            image = nib.load(path)
        else:
            raw = gzip.decompress(data) if path.lower().endswith(".gz") else data
            image = nib.Nifti1Image.from_bytes(raw)
        # Reoriented once: the canonical image's header gives the slice axis and the zooms.
        image = nib.as_closest_canonical(image)
        volume = np.asarray(image.dataobj, dtype=np.float32)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise errors.TruncatedFileError(path, f"the compressed volume is cut short ({exc})") \
            from exc
    except (OSError, ValueError, ImageFileError, HeaderDataError) as exc:
        detail = str(exc)
        if "too short" in detail or "Expected" in detail or "truncated" in detail.lower():
            raise errors.TruncatedFileError(path, f"the volume is cut short ({detail})") from exc
        raise errors.NotAnImageError(path, f"not a readable NIfTI volume ({detail})") from exc
    return image, volume  # the canonical (RAS+) image and its voxels


def slice_axis(canonical) -> int:
    """The acquisition axis of a canonical (RAS+) image: see the module's docstring."""
    try:
        named = canonical.header.get_dim_info()[2]
    except Exception:  # noqa: BLE001 - an odd header field must not stop decoding
        named = None
    if named is not None and named < 3:
        return int(named)
    zooms = np.asarray(canonical.header.get_zooms()[:3], dtype=float)
    if np.allclose(zooms, zooms.max()):
        return 2
    return int(np.argmax(zooms))


def foreground_slices(volume01: np.ndarray, axis: int) -> list[int]:
    """Indices of the slices along ``axis`` that are not background (the module's rule)."""
    moved = np.moveaxis(volume01, axis, 0)
    share = (moved > FOREGROUND_LEVEL).reshape(len(moved), -1).mean(axis=1)
    keep = [int(i) for i in np.flatnonzero(share >= FOREGROUND_SHARE)]
    return keep or [len(moved) // 2]


def iter_nifti_frames(path: str, *, max_pixels: int, data: bytes | None = None,
                      window: str | None = None, axes: str | None = None
                      ) -> Iterator[DecodedImage]:
    """Every foreground slice of the volume as a frame in [0, 1]; ``window``: a Hounsfield
    preset (CT) instead of the robust window; ``axes``: the planes (default: acquisition)."""
    planes = slice_axes(axes)  # an unknown name fails before the volume is read
    image, volume = _load(path, data)
    if volume.ndim == 4:
        volume = volume[..., 0]
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise errors.UnsupportedLayoutError(path, f"expected a 3-D volume, got shape "
                                                  f"{volume.shape}")
    if volume.size > max_pixels:
        raise errors.DecompressionBombError(path, f"{volume.size} voxels > the limit of "
                                                  f"{max_pixels}")
    if not np.isfinite(volume).all():
        volume = np.nan_to_num(volume, nan=0.0, posinf=0.0, neginf=0.0)
    if window:
        lo, hi = window_bounds(window)
    else:
        lo, hi = robust_window(volume)
    unit = rescale_to_unit(volume, lo, hi)
    zooms = [float(z) for z in image.header.get_zooms()[:3]]
    axes_used = planes if planes is not None else (slice_axis(image),)
    kept = [(axis, index) for axis in axes_used for index in foreground_slices(unit, axis)]
    for frame, (axis, index) in enumerate(kept):
        # rows top-down, as the slice is usually viewed (canonical RAS: flip the second axis)
        plane = np.rot90(np.moveaxis(unit, axis, 0)[index])  # a view (np.take copies slowly)
        rows_mm, cols_mm = [zooms[i] for i in range(3) if i != axis][::-1]
        pixels = np.ascontiguousarray(square_pixels(plane, rows_mm, cols_mm))
        yield DecodedImage(pixels, ImageMeta(os.fspath(path), "", frame, len(kept),
                                             volume=True))


def square_pixels(plane: np.ndarray, rows_mm: float, cols_mm: float) -> np.ndarray:
    """Resample a slice whose pixels are rows_mm x cols_mm to square pixels of the finer size
    (unchanged when they are within 1 %)."""
    fine = min(rows_mm, cols_mm)
    if fine <= 0 or max(rows_mm, cols_mm) <= 1.01 * fine:
        return plane
    from PIL import Image

    height = max(1, round(plane.shape[0] * rows_mm / fine))
    width = max(1, round(plane.shape[1] * cols_mm / fine))
    resized = Image.fromarray(np.ascontiguousarray(plane, np.float32), mode="F").resize(
        (width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, np.float32), 0.0, 1.0)

