"""--epsilon / --delta for every command that makes or sends a fingerprint (one parser, so the
CLI and the Ray jobs read them the same way)."""

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
                        "leaves the site (see PRIVACY.md)")
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
