"""One entry point that sniffs the format and dispatches to the DICOM or raster decoder."""

from __future__ import annotations

import os
from collections.abc import Iterator

from rayfp import errors
from rayfp.io.dicom import iter_dicom_frames, looks_like_dicom
from rayfp.io.image import DEFAULT_MAX_PIXELS, DecodedImage
from rayfp.io.nifti import is_nifti, iter_nifti_frames
from rayfp.io.raster import RASTER_SUFFIXES, iter_raster_frames

_PNG_MAGIC = b"\x89PNG"
_JPEG_MAGIC = b"\xff\xd8"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*")


def _is_raster(head: bytes, path: str) -> bool:
    # Check DICM first: some DICOM files carry a TIFF header in their preamble (dual personality).
    if looks_like_dicom(head):
        return False
    if head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC) or head[:4] in _TIFF_MAGICS:
        return True
    return path.lower().endswith(RASTER_SUFFIXES)


def is_uri(path: str) -> bool:
    """True for 's3://...', 'gs://...', 'file://...': anything pyarrow's filesystems open."""
    return "://" in path


def read_uri(uri: str) -> bytes:
    """The bytes of a file behind a URI, through pyarrow's filesystems (S3, GCS, HDFS, file)."""
    import pyarrow.fs as pafs

    try:
        filesystem, inner = pafs.FileSystem.from_uri(uri)
        with filesystem.open_input_file(inner) as handle:
            return handle.read()
    except FileNotFoundError as exc:
        raise errors.MissingFileError(uri, "file does not exist") from exc
    except (OSError, ValueError) as exc:
        raise errors.NotAnImageError(uri, f"cannot read: {exc}") from exc


def iter_frames(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                window: str | None = None, axes: str | None = None
                ) -> Iterator[DecodedImage]:
    """Yield every image (frame) in a file, or raise a :class:`rayfp.errors.DecodeError`.
    ``path`` is a local path or a URI (``s3://bucket/a.dcm``, ``file:///data/a.png``);
    ``window``: a Hounsfield preset for CT (DICOM or NIfTI); ``axes``: the planes a NIfTI
    volume is sliced along (rayfp.io.image.SLICE_AXES; default: its acquisition axis).

    >>> frames = list(iter_frames(pydicom.data.get_testdata_file("CT_small.dcm")))  # doctest: +SKIP
    """
    path = os.fspath(path)
    data = None
    if is_uri(path):
        data = read_uri(path)
        size, head = len(data), data[:132]
    else:
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as handle:
                head = handle.read(132)
        except FileNotFoundError as exc:
            raise errors.MissingFileError(path, "file does not exist") from exc
        except OSError as exc:
            raise errors.NotAnImageError(path, f"cannot read: {exc.strerror}") from exc
    if size == 0:
        raise errors.EmptyFileError(path, "the file is empty (0 bytes)")
    if is_nifti(path):
        yield from iter_nifti_frames(path, max_pixels=max_pixels, data=data, window=window,
                                     axes=axes)
    elif _is_raster(head, path):
        yield from iter_raster_frames(path, max_pixels=max_pixels, data=data)
    else:
        yield from iter_dicom_frames(path, max_pixels=max_pixels, data=data, window=window)


def decode_file(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                window: str | None = None, axes: str | None = None) -> list[DecodedImage]:
    """All frames of one file as a list (see :func:`iter_frames`)."""
    return list(iter_frames(path, max_pixels=max_pixels, window=window, axes=axes))
