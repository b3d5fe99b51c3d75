"""Write a volume as a DICOM series of single-slice files (pydicom): real pixel data with
the geometry tags a scanner writes (Image Position/Orientation (Patient), Pixel Spacing, Slice
Thickness, Instance Number, one Series and Study Instance UID, a Patient ID).

Used to build series from the MNI152 template for tests, benchmarks and hostile inputs (a
series with missing slices is this series with files deleted; irregular spacing is
``positions=`` with uneven steps).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def write_series(volume: np.ndarray, folder: str | os.PathLike, *, series_uid: str,
                 patient_id: str = "anon", study_uid: str | None = None,
                 spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 positions: Sequence[float] | None = None,
                 orientation: Sequence[float] = AXIAL, modality: str = "MR",
                 prefix: str = "slice", first_instance: int = 1) -> list[str]:
    """volume: (Z, Y, X) float, any range (stored as 12-bit unsigned; the window is the
    volume's range). ``positions``: each slice's offset along the normal in mm (default: Z
    slices ``spacing[2]`` apart). Returns the paths written, in slice order.

    >>> write_series(np.random.rand(4, 32, 32), "/tmp/s", series_uid="1.2.3")  # doctest: +SKIP
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    volume = np.asarray(volume, dtype=np.float64)
    lo, hi = float(volume.min()), float(volume.max())
    stored = np.round((volume - lo) / max(hi - lo, 1e-12) * 4095).astype(np.uint16)
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    if positions is None:
        positions = [z * spacing[2] for z in range(len(volume))]
    study_uid = study_uid or f"{series_uid}.0"
    paths = []
    for z, (plane, offset) in enumerate(zip(stored, positions)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID = modality, patient_id
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.InstanceNumber = first_instance + z
        ds.ImageOrientationPatient = [f"{v:g}" for v in orientation]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in normal * float(offset)]
        ds.PixelSpacing = [f"{spacing[0]:g}", f"{spacing[1]:g}"]
        ds.SliceThickness = f"{spacing[2]:g}"
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = 2048, 4096  # the volume's own range: one window
        ds.PixelData = np.ascontiguousarray(plane).tobytes()
        path = folder / f"{prefix}{first_instance + z:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(os.fspath(path))
    return paths


def mni_volume(resolution: int = 2) -> tuple[np.ndarray, tuple[float, float, float]]:
    """nilearn's MNI152 T1 template as (Z, Y, X) axial slices (rows anterior -> posterior)
    and its voxel spacing (mm)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nilearn.datasets import load_mni152_template

        template = load_mni152_template(resolution=resolution)
    data = np.asarray(template.dataobj, dtype=np.float32)  # (X, Y, Z) in RAS
    axial = np.transpose(data, (2, 1, 0))[:, ::-1, :]  # (Z, Y, X), rows top-down
    zooms = template.header.get_zooms()[:3]
    return np.ascontiguousarray(axial), (float(zooms[1]), float(zooms[0]), float(zooms[2]))
