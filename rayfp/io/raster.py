"""PNG / JPEG / TIFF decoding through Pillow: 8/16-bit grey, RGB, RGBA, palette, multi-page TIFF."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from rayfp import errors
from rayfp.io.image import (
    DecodedImage,
    ImageMeta,
    integer_range_to_unit,
    rescale_to_unit,
    robust_window,
)

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _page_to_unit(page: Image.Image) -> np.ndarray:
    mode = page.mode
    if mode in ("RGBA", "LA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        # Alpha is dropped, not composited: medical PNGs use it for masks, not transparency.
        page = page.convert("L" if mode in ("LA",) else "RGB")
        mode = page.mode
    array = np.asarray(page)
    if mode == "1":
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return integer_range_to_unit(array, 8)
    if mode == "F":
        return rescale_to_unit(array, *robust_window(array))
    # 16-bit (I;16*) and 32-bit integer grey: usually fewer significant bits than the container,
    # so window robustly like a DICOM without a stored window.
    return rescale_to_unit(array, *robust_window(array))


def iter_raster_frames(path: str, *, max_pixels: int, data: bytes | None = None
                       ) -> Iterator[DecodedImage]:
    """Decode every page of a raster image into [0, 1] float32 images."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": pixels are still fine
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data) if data is not None else path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise errors.DecompressionBombError(path, str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise errors.NotAnImageError(path, "not a DICOM, PNG, JPEG or TIFF image") from exc
    except OSError as exc:
        raise errors.TruncatedFileError(path, str(exc)) from exc
    with image:
        n_frames = int(getattr(image, "n_frames", 1))
        width, height = image.size
        if width * height * n_frames > max_pixels:
            raise errors.DecompressionBombError(
                path, f"{height}x{width}x{n_frames} = {width * height * n_frames} pixels exceeds "
                f"the limit of {max_pixels}; raise max_pixels if the file is trusted")
        try:
            for index, page in enumerate(ImageSequence.Iterator(image)):
                page.load()
                yield DecodedImage(_page_to_unit(page), ImageMeta(path, "", index, n_frames))
        except (OSError, SyntaxError, ValueError) as exc:
            text = str(exc)
            kind = errors.TruncatedFileError if "truncated" in text else errors.CorruptCodestreamError
            raise kind(path, text) from exc
