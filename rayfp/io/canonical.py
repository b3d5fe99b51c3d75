"""The deterministic half of the paper's per-sample preprocessing (docs/design.md §1.2): grey -> 3
channels, shortest side -> 256, zero-pad to >= 288x288 (centred), resize to 256x256, once per
distinct image. numpy + Pillow only, so it runs in torch-free decode workers; the random crops,
flips and normalisation run where the network is (rayfp.extract.views).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from rayfp.core.sampling import CANONICAL_SIZE, CROP_SIZE

SHORT_SIDE = 256
PAD_TO = 288

PREPROCESSING_SPEC = {
    "grey": "repeat-3",
    "resize_short_side": SHORT_SIDE,
    "pad_to": PAD_TO,
    "resize_to": CANONICAL_SIZE,
    "random_crop": CROP_SIZE,
    "hflip_p": 0.5,
    "interpolation": "pillow-bilinear-float32",
    "intensity": "unit-[0,1]",
}


def _resize_plane(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    # Pillow's bilinear filter widens its support when shrinking (antialiasing) and is exact
    # and deterministic on float32 ('F') images; it keeps decode workers free of torch.
    resized = Image.fromarray(plane, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.stack([_resize_plane(np.ascontiguousarray(c), height, width) for c in image])


def canonicalize(pixels: np.ndarray) -> np.ndarray:
    """pixels: (H, W) or (H, W, 3) float in [0, 1] -> (3, 256, 256) float32 array. Torch-free."""
    array = np.asarray(pixels, dtype=np.float32)
    if array.ndim == 2:
        array = np.repeat(array[None], 3, axis=0)
    else:
        array = np.ascontiguousarray(array.transpose(2, 0, 1))
    _, h, w = array.shape
    scale = SHORT_SIDE / min(h, w)
    h2, w2 = max(1, round(h * scale)), max(1, round(w * scale))
    image = _resize(array, h2, w2)
    pad_h, pad_w = max(0, PAD_TO - h2), max(0, PAD_TO - w2)
    image = np.pad(image, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                           (pad_w // 2, pad_w - pad_w // 2)))
    return np.clip(_resize(image, CANONICAL_SIZE, CANONICAL_SIZE), 0.0, 1.0)
