"""Decoding: every intact pixel-bearing file of pydicom's corpus decodes; broken ones are typed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from rayfp import errors
from rayfp.cli.demo import dicom_corpus
from rayfp.io import decode_file, discover_sources

# Files of the corpus that are broken on purpose, and the typed error each must give.
BROKEN = {
    "JPEG-lossy.dcm": errors.CorruptCodestreamError,  # libjpeg: misplaced marker segment
    "JPEG2000-embedded-sequence-delimiter.dcm": errors.CorruptCodestreamError,
    "MR_truncated.dcm": errors.TruncatedFileError,
    "emri_small_jpeg_2k_lossless_too_short.dcm": errors.TruncatedFileError,
    "badVR.dcm": errors.BadValueRepresentationError,
    "meta_missing_tsyntax.dcm": errors.MissingTransferSyntaxError,
    "nested_priv_SQ.dcm": errors.NotAnImageError,  # Pixel Data without an image pixel module
}
CORPUS = dicom_corpus()


def _has_pixels(path: Path) -> bool:
    ds = pydicom.dcmread(path, force=True, stop_before_pixels=False)
    return "PixelData" in ds


def test_corpus_is_the_full_pydicom_and_pydicom_data_set():
    names = {p.name for p in CORPUS}
    assert len(CORPUS) >= 140
    assert set(BROKEN) <= names
    assert {"CT_small.dcm", "RG1_J2KR.dcm", "US1_J2KI.dcm", "OT-PAL-8-face.dcm"} <= names


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_every_corpus_file_decodes_or_gives_its_typed_error(path: Path):
    if path.name in BROKEN:
        with pytest.raises(BROKEN[path.name]) as info:
            decode_file(path)
        assert os.fspath(path) in str(info.value)
        return
    try:
        frames = decode_file(path)
    except errors.NotAnImageError as exc:
        # Only objects without pixel data (RT plans, SR, ECG, ...) may say so.
        assert "without pixel data" in str(exc)
        assert not _has_pixels(path)
        return
    assert frames, path
    for frame in frames:
        pixels = frame.pixels
        assert pixels.dtype == np.float32
        assert pixels.ndim in (2, 3) and (pixels.ndim == 2 or pixels.shape[2] == 3)
        assert np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert [f.meta.frame for f in frames] == list(range(len(frames)))


def test_multiframe_and_colour_conversions():
    by_name = {p.name: p for p in CORPUS}
    emri = decode_file(by_name["emri_small.dcm"])
    assert len(emri) == 10 and emri[3].meta.n_frames == 10 and emri[0].meta.modality == "MR"
    palette = decode_file(by_name["OBXXXX1A.dcm"])[0].pixels
    assert palette.shape == (600, 800, 3) and palette.max() > 0.5  # palette -> RGB, 8-bit scale
    big_endian_palette = decode_file(by_name["OBXXXX1A_expb.dcm"])[0].pixels
    np.testing.assert_allclose(big_endian_palette, palette, atol=1.01 / 255)
    ybr = decode_file(by_name["SC_ybr_full_uncompressed.dcm"])[0].pixels
    rgb = decode_file(by_name["SC_rgb.dcm"])[0].pixels
    assert np.abs(ybr - rgb).mean() < 0.02  # same picture, YBR converted to RGB


# YCbCr files of every encoding, one and many frames (color3d_jpeg_baseline.dcm is left out:
# pydicom's own whole-array conversion, the reference here, takes 13 s on it).
YBR_FILES = ["SC_ybr_full_uncompressed.dcm", "SC_ybr_full_422_uncompressed.dcm",
             "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_small_odd_jpeg.dcm",
             "examples_ybr_color.dcm", "US1_J2KR.dcm", "US1_J2KI.dcm"]


@pytest.mark.parametrize("name", YBR_FILES)
def test_colour_converted_a_frame_at_a_time_is_pydicoms_array_bit_for_bit(name):
    from rayfp.io.dicom import _decode_pixel_array

    path = {p.name: p for p in CORPUS}[name]
    expected = pydicom.dcmread(path).pixel_array
    ds = pydicom.dcmread(path)
    assert "YBR" in ds.PhotometricInterpretation  # the file is one the conversion concerns
    got = _decode_pixel_array(ds, os.fspath(path))
    assert got.dtype == expected.dtype and np.array_equal(got, expected)


def test_compressed_and_uncompressed_encodings_decode_alike():
    by_name = {p.name: p for p in CORPUS}
    lossless = decode_file(by_name["RG1_J2KR.dcm"])[0].pixels
    raw = decode_file(by_name["RG1_UNCR.dcm"])[0].pixels
    np.testing.assert_allclose(lossless, raw, atol=1e-6)
    rle = decode_file(by_name["MR_small_RLE.dcm"])[0].pixels
    np.testing.assert_allclose(rle, decode_file(by_name["MR_small.dcm"])[0].pixels, atol=1e-6)


def _write_dicom(path: Path, pixels: np.ndarray, **elements) -> Path:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_rescale_window_signed_and_monochrome1(tmp_path):
    stored = np.array([[-1000, 0], [40, 1000]], dtype=np.int16)
    # Rescale 2x - 1024, then window centre 40 width 400 -> [-160, 240]
    path = _write_dicom(tmp_path / "ct.dcm", stored, RescaleSlope=2, RescaleIntercept=-1024,
                        WindowCenter=40, WindowWidth=400)
    hu = stored.astype(np.float32) * 2 - 1024
    expected = np.clip((hu + 160) / 400, 0, 1)
    np.testing.assert_allclose(decode_file(path)[0].pixels, expected, atol=1e-6)
    inverted = _write_dicom(tmp_path / "m1.dcm", stored, RescaleSlope=2, RescaleIntercept=-1024,
                            WindowCenter=40, WindowWidth=400,
                            PhotometricInterpretation="MONOCHROME1")
    np.testing.assert_allclose(decode_file(inverted)[0].pixels, 1 - expected, atol=1e-6)


def test_robust_window_without_stored_window(tmp_path):
    values = np.arange(10_000, dtype=np.uint16).reshape(100, 100)
    values[0, 0] = 65_000  # one outlier must not squash the window
    pixels = decode_file(_write_dicom(tmp_path / "w.dcm", values))[0].pixels
    assert np.median(pixels) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("mode,dtype,suffix", [
    ("L", np.uint8, ".png"), ("I;16", np.uint16, ".png"), ("RGB", np.uint8, ".png"),
    ("RGBA", np.uint8, ".png"), ("L", np.uint8, ".jpg"), ("RGB", np.uint8, ".jpg"),
    ("I;16", np.uint16, ".tif"), ("RGB", np.uint8, ".tif"),
])
def test_raster_formats(tmp_path, rng, mode, dtype, suffix):
    channels = {"L": 0, "I;16": 0, "RGB": 3, "RGBA": 4}[mode]
    shape = (40, 60, channels) if channels else (40, 60)
    top = 4095 if dtype == np.uint16 else 255
    array = rng.integers(0, top + 1, size=shape).astype(dtype)
    path = tmp_path / f"img{suffix}"
    image = Image.fromarray(array)
    assert image.mode == mode
    image.save(path)
    (frame,) = decode_file(path)
    assert frame.pixels.shape == ((40, 60, 3) if channels else (40, 60))
    assert frame.pixels.dtype == np.float32 and 0 <= frame.pixels.min() <= frame.pixels.max() <= 1
    assert frame.pixels.std() > 0.1


def test_multipage_tiff_expands_into_frames(tmp_path, rng):
    pages = [Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8)) for _ in range(3)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    frames = decode_file(tmp_path / "stack.tif")
    assert [f.meta.frame for f in frames] == [0, 1, 2]


def test_bad_files_get_typed_errors_naming_the_file(tmp_path, rng):
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    text = tmp_path / "notes.dcm"
    text.write_text("this is not an image at all " * 20)
    png = tmp_path / "cut.png"
    Image.fromarray(rng.integers(0, 255, (200, 200), dtype=np.uint8)).save(png)
    png.write_bytes(png.read_bytes()[:300])
    cases = {empty: errors.EmptyFileError, text: errors.NotAnImageError,
             png: errors.TruncatedFileError, tmp_path / "missing.png": errors.MissingFileError}
    for path, kind in cases.items():
        with pytest.raises(kind, match=path.name):
            decode_file(path)


def test_decompression_bomb_guard_refuses_before_decoding(tmp_path):
    big = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(big)
    with pytest.raises(errors.DecompressionBombError, match="exceeds the limit of 1000"):
        decode_file(big, max_pixels=1000)
    by_name = {p.name: p for p in CORPUS}
    with pytest.raises(errors.DecompressionBombError):
        decode_file(by_name["emri_small.dcm"], max_pixels=64 * 64 * 9)  # 10 frames of 64x64


def test_discover_sources_walks_folders_and_manifests(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/x.png", "a/deep/y.dcm", "a/deep/IM0001", "a/readme.txt", "a/.hidden.png"):
        (tmp_path / name).write_bytes(b"1")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,task_id\na/x.png,t1\nother.png,t2\n")
    sources = discover_sources([tmp_path / "a", manifest])
    names = [Path(s.path).name for s in sources]
    assert names == sorted(names, key=lambda n: [s.path for s in sources][names.index(n)])
    assert {"x.png", "y.dcm", "IM0001", "other.png"} == set(names)
    assert [s.task_id for s in sources if s.path.endswith("other.png")] == ["t2"]
    with pytest.raises(errors.ConfigError, match="needs a 'path' column"):
        bad = tmp_path / "bad.csv"
        bad.write_text("file\nx\n")
        discover_sources([bad])
