"""The flags every command that makes or sends a fingerprint shares: `rayfp fingerprint`, the
archive job and re-fingerprinting declare them here once, so they read and document them the
same way (sampling, decoding, extraction, parts, privacy)."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

from rayfp import defaults

if TYPE_CHECKING:
    from rayfp.privacy.mechanism import PrivacySpec


def parse_epsilon(text: str) -> float:
    """A positive number, or 'inf' / 'none' for the explicit opt-out (no noise)."""
    if text.strip().lower() in {"inf", "none", "off"}:
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive number or 'inf', got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"epsilon must be > 0 (or 'inf'), got {text!r}")
    return value


def add_privacy_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epsilon", type=parse_epsilon, default=defaults.DP_EPSILON,
                   help=f"differential privacy per image (default {defaults.DP_EPSILON:g}); "
                        "'inf' = exact counts, only for public data or a store that never "
                        "leaves the site (see docs/privacy.md)")
    p.add_argument("--delta", type=float, default=defaults.DP_DELTA,
                   help=f"(default {defaults.DP_DELTA:g})")
    p.add_argument("--unit", choices=("image", "patient"), default="image",
                   help="the unit sampled and protected: image (a 2-D image, or a whole "
                        "volume: NIfTI, multi-frame DICOM, DICOM series; default) or patient "
                        "(all DICOM files of one Patient ID)")
    p.add_argument("--privacy-budget", type=float, metavar="EPS",
                   help="refuse a release that would take a task's images past this ε, all "
                        "their releases composed (re-fingerprints, parts, replicates; see "
                        "`rayfp privacy budget`); default: no limit, every release recorded")
    p.add_argument("--noise-seed", type=int,
                   help="seeded noise, for tests and experiments only (default: os.urandom)")


def privacy_spec(args: argparse.Namespace) -> PrivacySpec:
    from rayfp.privacy.mechanism import PrivacySpec

    return PrivacySpec(epsilon=args.epsilon, delta=args.delta, seed=args.noise_seed,
                       unit=args.unit, budget=args.privacy_budget)


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """N, the seed, the image minimum and how volumes and CT are read."""
    p.add_argument("--samples", type=int, default=defaults.SAMPLES,
                   help=f"augmented views per task (default {defaults.SAMPLES}; 1000 is a "
                        "legitimate fast mode): drawn with replacement (the paper) for exact "
                        "counts, ceil(N/M) per image at most for a private release")
    p.add_argument("--seed", type=int, default=defaults.SEED,
                   help=f"sampling seed (default {defaults.SEED})")
    p.add_argument("--min-images", type=int, default=defaults.MIN_IMAGES,
                   help=f"refuse tasks with fewer distinct images (default {defaults.MIN_IMAGES})")
    p.add_argument("--window", help="Hounsfield window for CT (DICOM, or NIfTI in HU) without a "
                                     "manifest `window`: brain, soft-tissue, lung or bone "
                                     "(default: the stored or the robust window)")
    p.add_argument("--slice-axes",
                   help="the planes NIfTI volumes are sliced along: acquisition (default), "
                        "axial, coronal, sagittal or all three; DICOM volumes keep their "
                        "acquisition axis")


def add_extraction_flags(p: argparse.ArgumentParser) -> None:
    """The backbone's weights and CPU threads (the result never depends on them)."""
    p.add_argument("--weights", help="backbone weights file (default: the backbone's location)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: all cores here; a Ray actor's CPUs in a job)")


def add_engine_flag(p: argparse.ArgumentParser) -> None:
    """How a new space's features are computed on CPUs (recorded in the space)."""
    p.add_argument("--engine", choices=("onnxruntime", "torch"), default=defaults.CPU_ENGINE,
                   help="how a new space's features are computed on CPUs, recorded in it "
                        f"(default {defaults.CPU_ENGINE}; docs/fingerprint.md \"Engines\")")


def add_part_flags(p: argparse.ArgumentParser) -> None:
    """Where a site's part of a pooled task goes and how its noise is shared."""
    p.add_argument("--noise-share", choices=("full", "split"), default="full",
                   help="a private part's noise: full (each part (ε, δ)-DP on its own; "
                        "default) or split (σ/√K each: only with secure aggregation)")
    p.add_argument("--part-out", help="where parts go (default STORE/parts-out/)")


def add_ray_flags(p: argparse.ArgumentParser) -> None:
    """How a Ray job spreads the extraction over the cluster."""
    p.add_argument("--workers", type=int, default=1, help="feature-extractor actors")
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--frames-per-call", type=int, default=8,
                   help="canonical frames per actor call (the network still sees fixed "
                        "micro-batches, so the result does not depend on it)")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS or a local Ray)")
