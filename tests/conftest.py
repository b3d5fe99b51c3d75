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


def unpack_paper_data(folder):
    """The shipped copy of the paper's released data, unpacked as the release lays it out."""
    import json
    import zipfile

    from rayfp.evaluate.data import PUBLISHED_ARCHIVE, PUBLISHED_SPLITS

    with zipfile.ZipFile(PUBLISHED_ARCHIVE) as archive:
        members = [m for m in archive.namelist() if m != "policies.jsonl"]
        archive.extractall(folder, members)
        for line in archive.read("policies.jsonl").decode().splitlines():
            row = json.loads(line)
            policy = folder / "auto_augmentations" / row["search"] / "AA" / row["folder"]
            policy.mkdir(parents=True, exist_ok=True)
            (policy / "policy_0001.json").write_text(row["policy"])
    (folder / "task_splits.json").write_text(PUBLISHED_SPLITS.read_text())
    return folder


def free_port() -> int:
    """A free TCP port on loopback, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
