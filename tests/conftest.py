"""Shared fixtures: real images from the packages, synthetic fingerprints, a seeded RNG."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from rayfp.core.fingerprint import Fingerprint, FingerprintSpace


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def make_space(dim: int = 8, bins: int = 10, *, lo: float = 0.0, hi: float = 1.0,
               backbone: str = "synthetic") -> FingerprintSpace:
    return FingerprintSpace(backbone=backbone, weights_sha256="0" * 64,
                            preprocessing={"kind": "synthetic"}, dim=dim, bins=bins,
                            edges_lo=np.full(dim, lo, np.float32),
                            edges_hi=np.full(dim, hi, np.float32))


def random_fingerprint(rng: np.random.Generator, space: FingerprintSpace, task_id: str, *,
                       n: int = 500, zero_fraction: float = 0.3) -> Fingerprint:
    """Counts with many empty bins (as real fingerprints have) that sum to n per dimension."""
    weights = rng.random((space.dim, space.bins)) * (rng.random((space.dim, space.bins))
                                                     > zero_fraction)
    weights[:, 0] += 1e-3  # every row needs some mass
    counts = np.stack([rng.multinomial(n, row / row.sum()) for row in weights])
    return Fingerprint(task_id=task_id, space_id=space.space_id, counts=counts,
                       feature_sum=rng.normal(size=space.dim) * n, n_samples=n, n_images=n // 5)


def private_fingerprint(rng: np.random.Generator, space: FingerprintSpace, task_id: str, *,
                        n: int = 500, epsilon: float = 1.0) -> Fingerprint:
    """A random fingerprint released as a site releases it: (epsilon, 1e-6)-DP, seeded noise."""
    from rayfp.core.fingerprint import PartialCounts
    from rayfp.privacy.mechanism import PrivacySpec, release

    exact = random_fingerprint(rng, space, task_id, n=n)
    partial = PartialCounts(space.space_id, exact.counts, exact.feature_sum, n)
    released, record = release(partial, space, task_id=task_id, n_images=exact.n_images,
                               spec=PrivacySpec(epsilon=epsilon, seed=int(rng.integers(2**31))),
                               min_images=1)
    return Fingerprint(task_id=task_id, space_id=space.space_id, counts=released.counts,
                       feature_sum=released.feature_sum, n_samples=n,
                       n_images=exact.n_images, privacy=record)


def paper_data_dir():
    """../shared/paper-data beside the checkout (CI lays a copy there), or $RAYFP_PAPER_DATA."""
    import os
    from pathlib import Path

    default = Path(__file__).resolve().parents[2] / "shared" / "paper-data"
    path = Path(os.environ.get("RAYFP_PAPER_DATA", default))
    if not (path / "task_splits.json").is_file():
        raise FileNotFoundError(f"the paper's released data is expected at {path} (the shared/ "
                                "folder beside the checkout) or at $RAYFP_PAPER_DATA")
    return path


def free_port() -> int:
    """A free TCP port on loopback, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
