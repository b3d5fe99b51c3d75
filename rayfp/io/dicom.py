"""DICOM decoding: pydicom >= 3 with the pylibjpeg / GDCM plugins for compressed syntaxes.

A multi-frame file is one volume (one sampling unit; grey frames that are background by
rayfp.io.image.is_foreground are not sampled). A single-slice file carries its place in its
series (SliceGeometry); rayfp.io.series groups such files into volumes.

Order of operations (PS3.3 C.11): stored values -> Modality LUT (Rescale Slope/Intercept) ->
VOI LUT or Window Center/Width (else a robust percentile window) -> MONOCHROME1 inversion.
Colour (RGB, YBR_*, PALETTE COLOR) is converted to RGB and scaled by its bit depth.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from rayfp import errors
from rayfp.io.image import (
    DecodedImage,
    ImageMeta,
    SliceGeometry,
    integer_range_to_unit,
    is_foreground,
    rescale_to_unit,
    robust_window,
    window_bounds,
)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_REQUIRED_PIXEL_MODULE = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel")


def read_dataset(path: str, data: bytes | None = None) -> pydicom.Dataset:
    """Parse a DICOM file (pixel data left encoded) or raise a typed DecodeError. ``data``: the
    file's bytes when it was fetched from a URI (``path`` then only names it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data) if data is not None else path, force=True)
    except (EOFError, OSError) as exc:
        raise errors.TruncatedFileError(path, f"file ends inside a DICOM element ({exc})") from exc
    except InvalidDicomError as exc:
        raise errors.NotAnImageError(path, f"not a DICOM file ({exc})") from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise errors.BadValueRepresentationError(path, f"unparseable element: {exc}") from exc
    if len(ds) == 0:
        raise errors.TruncatedFileError(path, "no data elements could be read: the file is cut short")
    _ensure_transfer_syntax(ds, path)
    return ds


def _ensure_transfer_syntax(ds: pydicom.Dataset, path: str) -> None:
    """Files without any meta header (legacy ACR-NEMA style) are native: take the encoding pydicom
    detected. A meta header that exists but lacks the Transfer Syntax UID is a broken header."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    if meta is not None and len(meta) > 0:
        raise errors.MissingTransferSyntaxError(
            path, "the file meta header has no (0002,0010) Transfer Syntax UID; "
            "rewrite the header (e.g. dcmodify/gdcmconv) with the syntax of the pixel data"
        )
    implicit, little = ds.original_encoding
    syntax = ImplicitVRLittleEndian if implicit else (
        ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax


def count_frames(ds: pydicom.Dataset, path: str, *, max_pixels: int) -> int:
    """Validate the image pixel module and the decompression-bomb limit; return the frame count."""
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        kind = ds.get("Modality", "") or ds.get("SOPClassUID", "")
        raise errors.NotAnImageError(path, f"DICOM object without pixel data ({kind or 'no modality'})")
    missing = [k for k in _REQUIRED_PIXEL_MODULE if k not in ds]
    if missing:
        raise errors.NotAnImageError(
            path, f"has Pixel Data but lacks the image pixel module elements {missing}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns, then int() raises below
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            n_pixels = int(ds.Rows) * int(ds.Columns) * frames
    except (ValueError, TypeError) as exc:
        raise errors.BadValueRepresentationError(path, f"Rows/Columns/NumberOfFrames: {exc}") from exc
    if n_pixels > max_pixels:
        raise errors.DecompressionBombError(
            path, f"{ds.Rows}x{ds.Columns}x{frames} = {n_pixels} pixels exceeds the limit of "
            f"{max_pixels}; raise max_pixels if the file is trusted")
    return frames


def _decode_pixel_array(ds: pydicom.Dataset, path: str) -> np.ndarray:
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _pixels_as_rgb_per_frame(ds)
    except NotImplementedError as exc:
        raise errors.UnsupportedTransferSyntaxError(
            path, f"no installed decoder handles {syntax.name} ({syntax}); install the optional "
            "codecs: pip install 'rayfp[gpl-codecs]' (pylibjpeg-libjpeg, GPL-3)") from exc
    except (RuntimeError, ValueError) as exc:
        text = str(exc)
        if "less than expected" in text or "too short" in text or "missing" in text.lower():
            raise errors.TruncatedFileError(path, text.splitlines()[0]) from exc
        if "does not support" in text and "all available plugins" in text and not any(
            w in text for w in ("error", "Error", "failed")
        ):
            raise errors.UnsupportedTransferSyntaxError(path, text.replace("\n", " ")) from exc
        if syntax.is_compressed:
            raise errors.CorruptCodestreamError(
                path, f"{syntax.name}: " + " | ".join(t.strip() for t in text.splitlines()[1:] if t.strip())
                or text) from exc
        raise errors.BadValueRepresentationError(path, text.splitlines()[0]) from exc
    except (AttributeError, KeyError, TypeError) as exc:
        raise errors.BadValueRepresentationError(path, str(exc)) from exc


def _pixels_as_rgb_per_frame(ds: pydicom.Dataset) -> np.ndarray:
    """``ds.pixel_array``, bit for bit, with its YCbCr -> RGB step done a frame at a time.
    pydicom converts a whole multi-frame array in one pass over float32 temporaries 4x its
    size: 12.9 s for pydicom's 120-frame color3d_jpeg_baseline.dcm, 2.4 s a frame at a time
    (the same arithmetic on frames that stay in cache)."""
    from pydicom.pixels import as_pixel_options, convert_color_space, get_decoder

    decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
    pixels, properties = decoder.as_array(ds, validate=True, raw=True,
                                          **as_pixel_options(ds))
    photometric = properties.get("photometric_interpretation")
    if photometric in ("YBR_FULL", "YBR_FULL_422") and pixels.ndim >= 3:
        if not pixels.flags.writeable:
            pixels = pixels.copy()
        pixels = convert_color_space(pixels, "YBR_FULL", "RGB",
                                     per_frame=pixels.ndim == 4)
    return pixels


def _grey_frame_to_unit(frame: np.ndarray, ds: pydicom.Dataset, window: str | None = None
                        ) -> np.ndarray:
    values = apply_modality_lut(frame, ds)  # CT: Hounsfield units
    if window and str(ds.get("Modality", "")) == "CT":
        lo, hi = window_bounds(window)
    elif "VOILUTSequence" in ds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = apply_voi_lut(values, ds).astype(np.float32)
        lo, hi = float(values.min()), float(values.max())
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center = _first(ds.WindowCenter)
        width = _first(ds.WindowWidth)
        lo, hi = center - width / 2.0, center + width / 2.0
    else:
        lo, hi = robust_window(values)
    unit = rescale_to_unit(values, lo, hi)
    if ds.get("PhotometricInterpretation", "") == "MONOCHROME1":
        unit = 1.0 - unit
    return unit


def _first(value: object) -> float:
    return float(value[0]) if isinstance(value, pydicom.multival.MultiValue) else float(value)


def _colour_frame_to_unit(frame: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    photometric = ds.get("PhotometricInterpretation", "")
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frame, ds)
        # The descriptor may claim 16-bit entries while the writer stored 8-bit values in 16-bit
        # words (seen in the wild and in pydicom's OBXXXX1A_expb.dcm), so trust the data range.
        return integer_range_to_unit(rgb, 16 if int(rgb.max()) > 255 else 8)
    # pydicom converts YBR_* to RGB by default (as_rgb=True).
    return integer_range_to_unit(frame, int(ds.get("BitsStored", ds.BitsAllocated)))


def iter_dicom_frames(path: str, *, max_pixels: int, data: bytes | None = None,
                      window: str | None = None) -> Iterator[DecodedImage]:
    """Decode every frame of a DICOM file into [0, 1] float32 images; ``window``: a Hounsfield
    preset for CT (other modalities keep their stored or robust window)."""
    ds = read_dataset(path, data)
    n_frames = count_frames(ds, path, max_pixels=max_pixels)
    pixels = _decode_pixel_array(ds, path)
    samples = int(ds.SamplesPerPixel)
    photometric = ds.get("PhotometricInterpretation", "")
    colour = samples == 3 or photometric == "PALETTE COLOR"
    frame_ndim = 3 if samples == 3 else 2
    if pixels.ndim == frame_ndim:
        pixels = pixels[None]
    modality = str(ds.get("Modality", ""))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patient = str(ds.get("PatientID", "") or "").strip()
    units = []
    for index, frame in enumerate(pixels):
        unit = _colour_frame_to_unit(frame, ds) if colour else _grey_frame_to_unit(frame, ds,
                                                                                   window)
        if not np.isfinite(unit).all():
            raise errors.CorruptCodestreamError(path, f"frame {index} decodes to NaN/inf values")
        units.append(unit)
    if n_frames == 1:
        yield DecodedImage(units[0], ImageMeta(path, modality, 0, 1, slice=slice_geometry(ds),
                                               patient=patient))
        return
    kept = [u for u in units if colour or is_foreground(u)] or [units[len(units) // 2]]
    series = slice_geometry(ds)  # its series: other files of it join the same unit
    for index, unit in enumerate(kept):
        yield DecodedImage(unit, ImageMeta(path, modality, index, len(kept), volume=True,
                                           patient=patient, slice=series))


def slice_geometry(ds: pydicom.Dataset) -> SliceGeometry | None:
    """A file's series and, for a single slice, its place in it; None without a Series
    Instance UID. Geometry that cannot be parsed is left out (the series check reports it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about odd UIDs; they still group
        series = str(ds.get("SeriesInstanceUID", "") or "")
        study = f"{ds.get('PatientID', '') or ''}/{ds.get('StudyInstanceUID', '') or ''}"
    if not series:
        return None
    position, orientation, spacing = float("nan"), "", ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            iop = np.asarray([float(v) for v in ds.get("ImageOrientationPatient", [])])
            ipp = np.asarray([float(v) for v in ds.get("ImagePositionPatient", [])])
            spacing = ",".join(f"{float(v):g}" for v in ds.get("PixelSpacing", []) or [])
            instance = int(ds.get("InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        return SliceGeometry(series, study)
    if iop.shape == (6,) and np.isfinite(iop).all():
        orientation = ",".join(f"{v:.3f}" for v in np.round(iop, 3) + 0.0)
        if ipp.shape == (3,) and np.isfinite(ipp).all():
            normal = np.cross(iop[:3], iop[3:])
            position = float(ipp @ normal)
    return SliceGeometry(series, study, position, orientation, spacing, instance)


def looks_like_dicom(head: bytes) -> bool:
    """True when the 128-byte preamble is followed by 'DICM'."""
    return len(head) >= 132 and head[128:132] == b"DICM"
