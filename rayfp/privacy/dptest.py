"""A stochastic test of the differential-privacy guarantee, built the way an attacker would.

`rayfp audit` (rayfp.privacy.audit) attacks membership with views it swaps in place; it cannot
see a leak that comes from *how the plan hands out views*. This test works at the level where
that leak lives: files on disk. It builds neighbouring datasets that differ in one unit (one
file swapped for another whose name sorts first, last, or at every place between, or whose
content changes under the same name; N mod M = 0, != 0 and N < M), runs the real inventory and
sampling plan (rayfp.io.inventory, rayfp.io.work) on both, and measures:

1. **The direct bound.** The L2 difference of the two exact count matrices, over the calibrated
   sensitivity cap·√(2D'). DP needs it <= 1 for every pair.
2. **An empirical lower bound on ε** (in the spirit of Google's DP Stochastic Tester and of
   Jagielski et al. 2020 / Nasr et al. 2021): both datasets released many times by the real
   mechanism (rayfp.privacy.mechanism.privatize) with fresh noise; the optimal test for two
   Gaussians (the projection on their difference); a threshold chosen on held-out releases;
   Clopper-Pearson bounds on its error rates. The bound must stay below the claimed ε.

The backbone is replaced by a fixed probe (grid means of the crop): sensitivity is a property
of the plan and the mechanism, not of the features, and the probe makes crops and flips visible
in the counts, which is what a position-keyed plan leaks.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rayfp.core.fingerprint import FingerprintSpace, PartialCounts
from rayfp.core.parts import PartPlan
from rayfp.core.sampling import CROP_SIZE, views_per_image_cap
from rayfp.errors import ConfigError
from rayfp.io.inventory import take_inventory
from rayfp.io.sources import ImageSource
from rayfp.io.work import plan_work, sampled_frames
from rayfp.privacy.mechanism import PrivacySpec, active_dims, privatize
from rayfp.privacy.postprocess import coarsen

GRID = 4  # the probe's features: GRID x GRID cell means of the crop
PROBE_DIM = GRID * GRID


def probe_features(canonical: np.ndarray, tops: np.ndarray, lefts: np.ndarray,
                   flips: np.ndarray) -> np.ndarray:
    """(k, 16) float64: a fixed stand-in for a backbone, the 4x4 grid means of each view's
    224 crop (flipped when the view is), averaged over channels."""
    grey = np.asarray(canonical, np.float64).mean(axis=0)
    cell = CROP_SIZE // GRID
    out = []
    for top, left, flip in zip(tops, lefts, flips):
        crop = grey[int(top):int(top) + CROP_SIZE, int(left):int(left) + CROP_SIZE]
        if flip:
            crop = crop[:, ::-1]
        out.append(crop.reshape(GRID, cell, GRID, cell).mean(axis=(1, 3)).ravel())
    return np.asarray(out).reshape(-1, PROBE_DIM)


def probe_space(bins: int = 20) -> FingerprintSpace:
    """The probe's space: intensities in [0.25, 0.75] (smooth random fields stay mostly inside;
    values outside fall in the edge bins, as in any space)."""
    return FingerprintSpace(backbone="dp-test-probe", weights_sha256="0" * 64,
                            preprocessing={"kind": "dp-test-probe"}, dim=PROBE_DIM, bins=bins,
                            edges_lo=np.full(PROBE_DIM, 0.25, np.float32),
                            edges_hi=np.full(PROBE_DIM, 0.75, np.float32))


def write_population(folder: Path, count: int, seed: int) -> list[Path]:
    """``count`` distinct PNG images (smooth random fields, 64x64 grey) as img_000.png ...:
    crops and flips of them land in visibly different bins."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        coarse = rng.random((4, 4))
        field = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize(
            (64, 64), Image.Resampling.BICUBIC))
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(field).save(path)
        paths.append(path)
    return paths


def write_volumes(folder: Path, count: int, seed: int, slices: int = 6) -> list[Path]:
    """``count`` small NIfTI volumes (vol_000.nii.gz ...), each one sampling unit whose views
    spread over its slices."""
    import nibabel as nib
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        planes = [np.asarray(Image.fromarray((rng.random((4, 4)) * 255).astype(np.uint8))
                             .resize((32, 32), Image.Resampling.BICUBIC), np.float32)
                  for _ in range(slices)]
        volume = 0.3 + 0.7 * np.stack(planes, axis=2) / 255.0  # foreground everywhere
        path = folder / f"vol_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), path)
        paths.append(path)
    return paths


@dataclasses.dataclass(frozen=True)
class NeighbourPair:
    """Two datasets that differ in one unit: ``a`` holds ``removed``, ``b`` holds its
    replacement (file paths)."""

    name: str
    a: tuple[str, ...]
    b: tuple[str, ...]


def neighbour_pairs(members: Sequence[Path], outsider: Path, folder: Path, *,
                    every_place: bool = False, places: int | None = None
                    ) -> list[NeighbourPair]:
    """The swaps an attacker tries: one member out, a canary (the outsider's content) in,
    named to sort first, last, at every place between (``every_place``; ``places``: that
    many places, evenly spread), or under the removed member's own name. The members are
    copied into ``folder`` (m00000..., in their order) so that the canaries sort among them
    and nothing is written beside a site's own images."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "set").mkdir(exist_ok=True)
    (folder / "same-name").mkdir(exist_ok=True)
    originals = sorted(Path(m) for m in members)
    members = []
    for i, original in enumerate(originals):
        members.append(folder / "set" / f"m{i:05d}{''.join(original.suffixes)}")
        shutil.copyfile(original, members[-1])
    base = tuple(str(m) for m in members)
    suffix = "".join(Path(outsider).suffixes)

    def canary(stem: str) -> str:
        path = folder / "set" / (stem + suffix)
        shutil.copyfile(outsider, path)
        return str(path)

    pairs = [NeighbourPair("canary sorts first", base, (canary("aaa_canary"), *base[1:])),
             NeighbourPair("canary sorts last", base, (*base[1:], canary("zzz_canary")))]
    same = folder / "same-name"
    copies = []
    for m in members:
        shutil.copyfile(m if m != members[0] else outsider, same / m.name)
        copies.append(str(same / m.name))
    pairs.append(NeighbourPair("same name, other content", base, tuple(copies)))
    if every_place:
        between = range(1, len(members))
        if places is not None and places < len(between):  # evenly spread, both ends kept
            between = sorted({between[round(i * (len(between) - 1) / max(1, places - 1))]
                              for i in range(places)})
        for place in between:
            stem = members[place - 1].name.split(".")[0]
            for out in (0, len(members) - 1):  # the first or the last member leaves
                kept = tuple(p for i, p in enumerate(base) if i != out)
                pairs.append(NeighbourPair(f"canary after {stem}, member {out} out", base,
                                           (*kept, canary(f"{stem}a_canary_{out}"))))
    return pairs


def exact_counts(paths: Sequence[str], space: FingerprintSpace, *, samples: int, seed: int,
                 plan: str, part: tuple[PartPlan, int] | None = None, unit: str = "image"
                 ) -> tuple[PartialCounts, int]:
    """The task's exact counts through the real inventory and plan, probe features:
    (counts, M). ``part``: these files are part k of a task in parts (its plan, k)."""
    inventory = take_inventory([ImageSource(p, "dp-test") for p in paths], task_id="dp-test",
                               unit=unit)
    drawn = part[0].views_of(part[1], inventory.unit_contents()) if part else None
    features = [np.zeros((0, PROBE_DIM))]
    for item in plan_work(inventory, samples=samples, seed=seed, plan=plan, drawn=drawn):
        for frame in sampled_frames(item):
            features.append(probe_features(frame.canonical, frame.top, frame.left, frame.flip))
    return (PartialCounts.from_features(np.concatenate(features), space, clip_sum=True),
            inventory.n_images)


def sensitivity_ratio(a: PartialCounts, b: PartialCounts, space: FingerprintSpace,
                      n_images: int) -> float:
    """||counts_b - counts_a||_2 over the noised dimensions / (cap·√(2D')): DP needs <= 1."""
    active = active_dims(space)
    diff = (b.counts - a.counts)[active].astype(np.float64)
    cap = views_per_image_cap(n_images, max(a.n, b.n), plan="keyed")
    return float(np.linalg.norm(diff) / (cap * math.sqrt(2 * int(active.sum()))))


def clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Two-sided (1 - alpha) interval for a binomial proportion k/n."""
    from scipy.stats import beta

    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def _epsilon_at(k_a: int, k_b: int, n: int, delta: float, alpha: float) -> float:
    """Lower bound on ε from a test that says "b" k_b of n times on b and k_a of n on a."""
    tpr_lo, _ = clopper_pearson(k_b, n, alpha)
    _, fpr_hi = clopper_pearson(k_a, n, alpha)
    if tpr_lo - delta <= 0:
        return 0.0
    return max(0.0, math.log((tpr_lo - delta) / fpr_hi))


def empirical_epsilon(a: PartialCounts, b: PartialCounts, space: FingerprintSpace, *,
                      n_images: int, spec: PrivacySpec, releases: int, seed: int | None,
                      alpha: float = 0.05) -> dict[str, float]:
    """Release a and b ``releases`` times each with fresh noise and bound ε from below.

    The statistic is the optimal one for two Gaussians with these means: the released coarse
    counts projected on the direction from a to b (both orientations are tried). A threshold
    is chosen on the first half of the releases, then judged on the second half only, with
    Clopper-Pearson bounds at level ``alpha`` (so the bound holds with probability 1 - alpha)."""
    bins = spec.bins_for(space)
    start, stop = coarsen(a.counts.astype(np.float64), bins), coarsen(
        b.counts.astype(np.float64), bins)
    direction = (stop - start).ravel()
    if not np.any(direction):
        return {"epsilon_lower_bound": 0.0, "releases": releases}
    rng = np.random.default_rng(seed)

    def statistics(counts: PartialCounts) -> np.ndarray:
        out = []
        for _ in range(releases):
            noise_seed = None if seed is None else int(rng.integers(2**62))
            released = privatize(counts, space, n_images=n_images,
                                 spec=dataclasses.replace(spec, seed=noise_seed))
            out.append(float((coarsen(released.partial.counts.astype(np.float64), bins)
                              - start).ravel() @ direction))
        return np.asarray(out)

    s_a, s_b = statistics(a), statistics(b)
    half = releases // 2
    best = (0.0, math.inf, 1)
    for sign in (1, -1):  # "says b" when sign * s > threshold
        pooled = np.sort(np.r_[s_a[:half], s_b[:half]] * sign)
        for threshold in pooled[::max(1, len(pooled) // 400)]:
            k_a = int((sign * s_a[:half] > threshold).sum())
            k_b = int((sign * s_b[:half] > threshold).sum())
            # Judged as it will be judged on the held-out half: by its confidence bound, so
            # a threshold far in the tail (few counts, wide intervals) does not win by luck.
            found = _epsilon_at(k_a, k_b, half, spec.delta, alpha)
            if found > best[0]:
                best = (found, float(threshold), sign)
    _, threshold, sign = best
    held_a, held_b = s_a[half:] * sign, s_b[half:] * sign
    n = len(held_a)
    k_a, k_b = int((held_a > threshold).sum()), int((held_b > threshold).sum())
    bound = _epsilon_at(k_a, k_b, n, spec.delta, alpha)
    # The other side of the same test: "says a" below the threshold.
    bound = max(bound, _epsilon_at(n - k_b, n - k_a, n, spec.delta, alpha))
    return {"epsilon_lower_bound": bound, "releases": releases, "held_out": n,
            "false_positives": k_a, "true_positives": k_b}


@dataclasses.dataclass(frozen=True)
class PairResult:
    pair: str
    plan: str
    samples: int
    members: int
    ratio: float


def run_pairs(pairs: Sequence[NeighbourPair], space: FingerprintSpace, *, samples: int,
              seed: int, plan: str, progress: Callable[[str], None] | None = None
              ) -> list[tuple[PairResult, PartialCounts, PartialCounts]]:
    """The direct bound for every pair: (result, counts of a, counts of b)."""
    cache: dict[tuple[str, ...], tuple[PartialCounts, int]] = {}
    out = []
    for pair in pairs:
        for side in (pair.a, pair.b):
            if side not in cache:
                cache[side] = exact_counts(side, space, samples=samples, seed=seed, plan=plan)
        (a, m), (b, _) = cache[pair.a], cache[pair.b]
        result = PairResult(pair.name, plan, samples, m, sensitivity_ratio(a, b, space, m))
        if progress:
            progress(f"{plan:8} N={samples:4d} M={m:3d}  {pair.name:40} "
                     f"difference / sensitivity = {result.ratio:.3f}")
        out.append((result, a, b))
    return out


def check_members(members: int, available: int) -> None:
    if members < 2 or available < members + 1:
        raise ConfigError(f"a DP test needs at least 2 members and one outsider; asked for "
                          f"{members} members of {available} images")
