"""Decoding medical images (DICOM, PNG, JPEG, TIFF) into float32 [0, 1] arrays. Torch-free."""

from rayfp.io.decode import decode_file, iter_frames
from rayfp.io.discover import ImageSource, discover_sources
from rayfp.io.image import DEFAULT_MAX_PIXELS, DecodedImage, ImageMeta

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DecodedImage",
    "ImageMeta",
    "ImageSource",
    "decode_file",
    "discover_sources",
    "iter_frames",
]
