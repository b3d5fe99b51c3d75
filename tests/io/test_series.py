"""DICOM series: single-slice files assembled into one volume (one sampling unit), ordered by
Image Position (Patient), with a typed report for every irregular series. Series are written
with pydicom from nilearn's MNI152 template (real pixel data, scanner geometry tags)."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from rayfp import errors
from rayfp.io import decode_file
from rayfp.io.image import is_foreground
from rayfp.io.inventory import take_inventory
from rayfp.io.series_writer import mni_volume, write_series
from rayfp.io.sources import discover_sources
from rayfp.io.work import plan_work, sampled_frames

SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


@pytest.fixture(scope="module")
def brain():
    """Every third axial slice of the 2 mm template: 31 slices 6 mm apart."""
    volume, spacing = mni_volume(2)
    return volume[::3], (spacing[0], spacing[1], 3 * spacing[2])


def inventory_of(folder):
    return take_inventory(discover_sources([folder]), task_id="t")


def test_a_series_is_one_unit_in_slice_order(brain, tmp_path):
    volume, spacing = brain
    # Instance numbers (and file names) run against the positions: the order must come from
    # Image Position (Patient), not from names.
    paths = write_series(volume, tmp_path, series_uid="1.2.826.0.1.1", spacing=spacing,
                         positions=[-6.0 * z for z in range(len(volume))])
    inv = inventory_of(tmp_path)
    assert inv.n_images == 1 and inv.modality == "MR" and inv.series_problems == []
    (series,) = inv.series
    assert series.ordered == paths[::-1] and series.study == "anon/1.2.826.0.1.1.0"
    assert series.spacing == pytest.approx(spacing)
    foreground = [p for p, plane in zip(paths, volume / volume.max())
                  if is_foreground(plane)]
    assert 0 < series.n_background == len(paths) - len(foreground)  # air above the head
    assert [ref.path for ref in inv.images] == foreground[::-1]
    assert {inv.unit_key(ref) for ref in inv.images} == {"series:1.2.826.0.1.1"}
    # The pixels are the template's: one window for the whole series.
    middle = decode_file(paths[15])[0].pixels
    assert np.corrcoef(middle.ravel(), volume[15].ravel())[0, 1] > 0.999
    # Views go to the unit and spread over its slices; each carries the series' key.
    work = plan_work(inv, samples=200, seed=1)
    assert sum(item.n_views for item in work) == 200 and len(work) > 0.7 * len(foreground)
    frame = next(sampled_frames(work[0]))
    assert frame.image == "series:1.2.826.0.1.1"


def test_several_series_in_one_folder_are_several_units(brain, tmp_path):
    volume, spacing = brain
    write_series(volume[:10], tmp_path, series_uid="1.2.3.1", spacing=spacing, prefix="a")
    write_series(volume[10:20], tmp_path, series_uid="1.2.3.2", spacing=spacing, prefix="b",
                 patient_id="other")
    from PIL import Image

    Image.fromarray((volume[15] / volume.max() * 255).astype(np.uint8)).save(tmp_path / "x.png")
    inv = inventory_of(tmp_path)
    assert inv.n_images == 3 and inv.series_problems == []
    assert sorted(s.series for s in inv.series) == ["1.2.3.1", "1.2.3.2"]
    starts = inv.unit_starts
    keys = [inv.unit_key(inv.images[i]) for i in starts]
    assert len(set(keys)) == 3  # each unit's images are contiguous


def _problems(inv) -> dict[type, errors.SeriesError]:
    return {type(p): p for p in inv.series_problems}


def test_missing_slices_and_irregular_spacing_are_reported(brain, tmp_path):
    volume, spacing = brain
    holes = tmp_path / "holes"
    paths = write_series(volume, holes, series_uid="1.9.1", spacing=spacing)
    for path in paths[12:15]:
        (holes / path.rsplit("/", 1)[-1]).unlink()
    inv = inventory_of(holes)
    (problem,) = inv.series_problems
    assert isinstance(problem, errors.MissingSlicesError) and problem.series == "1.9.1"
    assert "3 slice(s) missing in 1 gap(s)" in problem.detail
    assert inv.n_images == 1 and len(inv.series[0].ordered) == len(paths) - 3  # none dropped

    uneven = tmp_path / "uneven"
    steps = np.r_[0, np.cumsum([6.0] * 10 + [4.5] * 10 + [6.0] * 10)]
    write_series(volume, uneven, series_uid="1.9.2", spacing=spacing, positions=steps)
    (problem,) = inventory_of(uneven).series_problems
    assert isinstance(problem, errors.IrregularSpacingError)
    assert "10 of 30 slice steps depart from the median 6 mm" in problem.detail


def test_orientation_duplicates_and_missing_geometry_are_reported(brain, tmp_path):
    volume, spacing = brain
    paths = write_series(volume[8:20], tmp_path, series_uid="1.9.3", spacing=spacing)
    # A localizer in the same series (another plane), a slice stored twice, one file
    # without its position.
    write_series(volume[14:15], tmp_path, series_uid="1.9.3", orientation=SAGITTAL,
                 prefix="localizer")
    shutil.copy(paths[3], tmp_path / "copy-of-slice.dcm")
    inv = inventory_of(tmp_path)
    found = _problems(inv)
    assert set(found) == {errors.MixedOrientationError, errors.DuplicateSlicesError}
    assert found[errors.MixedOrientationError].paths == [str(tmp_path / "localizer0001.dcm")]
    assert found[errors.DuplicateSlicesError].paths == sorted(
        [paths[3], str(tmp_path / "copy-of-slice.dcm")])
    assert inv.n_images == 1 and len(inv.series[0].ordered) == 12 + 1 + 1

    ds = pydicom.dcmread(paths[0])
    del ds.ImagePositionPatient
    ds.save_as(paths[0])
    problem = _problems(inventory_of(tmp_path))[errors.MissingGeometryError]
    assert problem.paths == [paths[0]] and "ordered by Instance Number" in problem.detail
    assert isinstance(problem, errors.SeriesError) and isinstance(problem, ValueError)


def test_a_multi_frame_file_is_one_unit():
    """pydicom's enhanced multi-frame MR and CT: a file's frames are slices of one volume, and
    files of one series (the same MR acquisition in four encodings) are one unit."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("emri_small.dcm")
    frames = decode_file(path)
    assert len(frames) == 10 and all(f.meta.volume for f in frames)
    inv = take_inventory(discover_sources([path]), task_id="mf")
    assert (inv.n_images, len(inv.images)) == (1, 10)
    assert {inv.unit_key(ref) for ref in inv.images} == {path}
    encodings = [get_testdata_file(f"emri_small{suffix}.dcm")
                 for suffix in ("", "_big_endian", "_RLE", "_jpeg_2k_lossless")]
    ct = get_testdata_file("eCT_Supplemental.dcm")
    inv = take_inventory(discover_sources([*encodings, ct]), task_id="mf")
    assert (inv.n_images, len(inv.images)) == (2, 4 * 10 + len(decode_file(ct)))
    units = {inv.unit_key(inv.images[i]) for i in inv.unit_starts}
    assert ct in units and any(key.startswith("series:") for key in units)


def test_the_unit_can_be_the_patient(brain, tmp_path):
    """Two series of one patient (say T1 and a second acquisition) and one of another, plus a
    PNG without any patient: 4 units as images or volumes, 3 as patients."""
    from PIL import Image

    from rayfp.privacy.mechanism import PrivacySpec

    volume, spacing = brain
    write_series(volume[:8], tmp_path, series_uid="1.5.1", patient_id="alice", prefix="a1-")
    write_series(volume[8:16], tmp_path, series_uid="1.5.2", patient_id="alice", prefix="a2-")
    write_series(volume[16:24], tmp_path, series_uid="1.5.3", patient_id="bob", prefix="b-")
    Image.fromarray((volume[12] / volume.max() * 255).astype(np.uint8)).save(tmp_path / "z.png")
    sources = discover_sources([tmp_path])
    assert take_inventory(sources, task_id="t").n_images == 4
    by_patient = take_inventory(sources, task_id="t", unit="patient")
    assert by_patient.n_images == 3
    keys = [by_patient.unit_key(by_patient.images[i]) for i in by_patient.unit_starts]
    assert keys == ["patient:alice", "patient:bob", f"{tmp_path / 'z.png'}#0"]
    assert len({by_patient.unit_key(ref) for ref in by_patient.images}) == 3  # contiguous
    with pytest.raises(errors.ConfigError, match="unit must be"):
        PrivacySpec(unit="study")
