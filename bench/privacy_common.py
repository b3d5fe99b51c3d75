"""What bench_privacy measures and privacy_report draws: shared settings and where results go."""

from __future__ import annotations

import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0, math.inf)
MEMBERS = (50, 200, 1000, 5000)
SAMPLES = 10_000


def eps_text(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:g}"
