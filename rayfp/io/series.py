"""DICOM series: single-slice files grouped by Series Instance UID into one volume.

A series is one sampling unit (one patient's acquisition), however many files hold it. Its
slices are ordered by Image Position (Patient) along the slice normal (Instance Number when a
file lacks the geometry). Slices that are background (rayfp.io.image.is_foreground) are not
sampled; a series with no other slice keeps its middle one.

The geometry is checked and every problem is reported as a typed error
(rayfp.errors.SeriesError): mixed orientations, duplicate positions, missing slices, irregular
spacing, missing geometry. None of them drops a slice: along the acquisition axis each slice is
a real image of the same patient, whatever its neighbours.
Torch-free and Ray-free: the inventory (local and Ray) calls it on per-file records.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from rayfp import errors

DUPLICATE_TOLERANCE_MM = 1e-3
# A gap this many steps wide (to within GAP_WHOLE_TOLERANCE of a whole number) is missing
# slices; any other departure beyond SPACING_TOLERANCE of the step is irregular spacing.
GAP_FACTOR = 1.5
GAP_WHOLE_TOLERANCE = 0.2
SPACING_TOLERANCE = 0.1


class SliceRecord(Protocol):
    """What the series check reads of a file (rayfp.io.inventory.FileRecord)."""

    path: str
    position: float
    orientation: str
    instance: int
    pixel_spacing: str
    study: str
    foreground: bool


@dataclasses.dataclass(frozen=True)
class SeriesVolume:
    """One series assembled: its files in slice order, the ones sampled, its geometry and
    what is wrong with it.

    spacing: (row, column, slice) in mm, NaN where unknown; study: "PatientID/StudyUID"."""

    series: str
    ordered: list[str]
    sampled: list[str]
    spacing: tuple[float, float, float]
    study: str
    problems: list[errors.SeriesError]

    @property
    def n_background(self) -> int:
        return len(self.ordered) - len(self.sampled)


def assemble_series(series: str, records: Sequence[SliceRecord]) -> SeriesVolume:
    """Order a series' files, pick the slices to sample, check the geometry (never raises)."""
    paths = [r.path for r in records]
    problems: list[errors.SeriesError] = []
    missing = sorted(r.path for r in records if math.isnan(r.position) or not r.orientation)
    if missing:
        problems.append(errors.MissingGeometryError(
            series, f"{len(missing)} of {len(records)} files lack Image Position/Orientation "
            "(Patient); the series is ordered by Instance Number", paths=missing))
        ordered = sorted(records, key=lambda r: (r.instance, r.path))
        step = math.nan
    else:
        ordered, step = _order_by_position(series, records, problems)
    sampled = [r.path for r in ordered if r.foreground] or [ordered[len(ordered) // 2].path]
    main = collections.Counter(r.orientation for r in records).most_common(1)[0][0]
    row, column = _pixel_spacing(series, [r for r in records if r.orientation == main],
                                 problems)  # a localizer in another plane may differ
    studies = sorted({r.study for r in records})
    if len(studies) > 1:
        problems.append(errors.SeriesError(
            series, f"files name {len(studies)} patients/studies {studies[:3]}: one series "
            "UID reused across patients; it is still treated as one unit", paths=paths))
    return SeriesVolume(series, [r.path for r in ordered], sampled, (row, column, step),
                        studies[0], problems)


def _order_by_position(series: str, records: Sequence[SliceRecord],
                       problems: list[errors.SeriesError]) -> tuple[list, float]:
    by_orientation = collections.Counter(r.orientation for r in records)
    main = by_orientation.most_common(1)[0][0]
    if len(by_orientation) > 1:
        others = sorted(r.path for r in records if r.orientation != main)
        problems.append(errors.MixedOrientationError(
            series, f"{len(by_orientation)} orientations: {len(records) - len(others)} slices "
            f"at {main}, {len(others)} at others (e.g. localizers); each group is ordered on "
            "its own", paths=others))
    ordered = sorted(records, key=lambda r: (r.orientation != main, r.orientation,
                                             r.position, r.path))
    main_slices = [r for r in ordered if r.orientation == main]
    gaps = np.diff([r.position for r in main_slices])
    repeats = [pair for pair, gap in zip(zip(main_slices, main_slices[1:]), gaps)
               if gap < DUPLICATE_TOLERANCE_MM]
    if repeats:
        involved = sorted({r.path for pair in repeats for r in pair})
        problems.append(errors.DuplicateSlicesError(
            series, f"{len(repeats)} files repeat a slice position already held by another "
            f"file ({len(involved)} files involved)", paths=involved))
    steps = gaps[gaps >= DUPLICATE_TOLERANCE_MM]
    if not len(steps):
        return ordered, math.nan
    step = float(np.median(steps))
    ratio = steps / step
    whole = np.abs(ratio - np.round(ratio)) <= GAP_WHOLE_TOLERANCE
    missing_at = (ratio >= GAP_FACTOR) & whole
    if missing_at.any():
        lost = int(np.round(ratio[missing_at]).sum() - missing_at.sum())
        problems.append(errors.MissingSlicesError(
            series, f"{lost} slice(s) missing in {int(missing_at.sum())} gap(s) of the "
            f"{step:.3g} mm spacing (largest gap {steps.max():.3g} mm)"))
    irregular = (np.abs(ratio - 1.0) > SPACING_TOLERANCE) & ~missing_at
    if irregular.any():
        problems.append(errors.IrregularSpacingError(
            series, f"{int(irregular.sum())} of {len(steps)} slice steps depart from the "
            f"median {step:.3g} mm by more than {SPACING_TOLERANCE:.0%} (from "
            f"{steps.min():.3g} to {steps.max():.3g} mm)"))
    return ordered, step


def _pixel_spacing(series: str, records: Sequence[SliceRecord],
                   problems: list[errors.SeriesError]) -> tuple[float, float]:
    values = collections.Counter(r.pixel_spacing for r in records if r.pixel_spacing)
    if not values:
        return math.nan, math.nan
    if len(values) > 1:
        problems.append(errors.IrregularSpacingError(
            series, f"{len(values)} different Pixel Spacings in one series: "
                    f"{sorted(values)[:3]}"))
    text = values.most_common(1)[0][0].split(",")
    row = float(text[0])
    return row, float(text[1]) if len(text) > 1 else row
