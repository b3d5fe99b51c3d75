"""From files to images, torch-free and Ray-free: where a task's files are (sources), what they
hold (inventory), decoding DICOM, PNG, JPEG and TIFF into float32 [0, 1] arrays, the canonical
256x256 image and the sampled views each file must provide (work)."""

from rayfp.io.decode import decode_file, iter_frames
from rayfp.io.image import DEFAULT_MAX_PIXELS, DecodedImage, ImageMeta
from rayfp.io.sources import ImageSource, discover_sources, list_archive

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DecodedImage",
    "ImageMeta",
    "ImageSource",
    "decode_file",
    "discover_sources",
    "iter_frames",
    "list_archive",
]
