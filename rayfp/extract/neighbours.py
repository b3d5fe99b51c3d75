"""Neighbouring datasets as files, and their exact counts through the real inventory and plan,
for the stochastic DP test (rayfp.privacy.dptest, `rayfp audit --dp-test`).

An attacker who wants to exceed the claimed ε picks the swap: a canary whose name sorts first,
last or at any place between, or that keeps the leaver's name; volumes, patients, parts. The
backbone is replaced by a fixed probe (the 4x4 grid means of each crop): it makes crops and
flips visible in the counts, which is what a plan keyed by file order leaks. Torch-free.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rayfp.core.fingerprint import FingerprintSpace, PartialCounts
from rayfp.core.parts import PartPlan
from rayfp.core.sampling import CROP_SIZE
from rayfp.errors import ConfigError
from rayfp.io.inventory import take_inventory
from rayfp.io.sources import ImageSource
from rayfp.io.work import plan_work, sampled_frames
from rayfp.privacy.dptest import PROBE_DIM, sensitivity_ratio

GRID = 4  # the probe's features: GRID x GRID cell means of the crop
assert GRID * GRID == PROBE_DIM


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
