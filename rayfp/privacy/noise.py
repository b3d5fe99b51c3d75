"""Where the noise of a private release comes from: the operating system's cryptographically
secure generator unless a seed is asked for explicitly (tests, experiments).

A seeded PRNG's state could in principle be recovered from enough of its outputs, and the noisy
counts are such outputs; os.urandom's cannot. Normals come from uniform 53-bit integers by the
Box-Muller transform, vectorised. Both sources offer ``name`` and ``normal(sigma, shape)``.
"""

from __future__ import annotations

import os

import numpy as np

_SCALE = 2.0 ** -53


class SeededNoiseSource:
    name = "seeded numpy PCG64"

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def normal(self, sigma: float, shape: tuple[int, ...]) -> np.ndarray:
        return self._rng.normal(0.0, sigma, size=shape)


class SecureNoiseSource:
    name = "os.urandom (Box-Muller)"

    def normal(self, sigma: float, shape: tuple[int, ...]) -> np.ndarray:
        size = int(np.prod(shape))
        pairs = (size + 1) // 2
        raw = np.frombuffer(os.urandom(16 * pairs), dtype="<u8") >> np.uint64(11)
        uniform = (raw.astype(np.float64) + 0.5) * _SCALE  # in (0, 1): log never sees 0
        u1, u2 = uniform[:pairs], uniform[pairs:]
        radius = np.sqrt(-2.0 * np.log(u1))
        normals = np.concatenate([radius * np.cos(2 * np.pi * u2),
                                  radius * np.sin(2 * np.pi * u2)])[:size]
        return sigma * normals.reshape(shape)


def noise_source(seed: int | None) -> SeededNoiseSource | SecureNoiseSource:
    """The secure source, or a seeded one when a seed is given."""
    return SecureNoiseSource() if seed is None else SeededNoiseSource(seed)
