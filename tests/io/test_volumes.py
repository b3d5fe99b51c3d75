"""3-D volumes (NIfTI): slices as frames, the volume as the sampling and privacy unit."""

from __future__ import annotations

import gzip
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from rayfp.core.sampling import sample_plan
from rayfp.errors import DecodeError
from rayfp.io import decode_file
from rayfp.io.inventory import take_inventory
from rayfp.io.nifti import FOREGROUND_LEVEL, FOREGROUND_SHARE, iter_nifti_frames
from rayfp.io.sources import discover_sources
from rayfp.io.work import plan_work


@pytest.fixture(scope="module")
def mni(tmp_path_factory):
    """nilearn's MNI152 T1 template (a real 3-D NIfTI volume) and a second volume from it."""
    import nibabel as nib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nilearn.datasets import load_mni152_template

        template = load_mni152_template(resolution=2)
    folder = tmp_path_factory.mktemp("volumes")
    nib.save(template, folder / "mni.nii.gz")
    shifted = nib.Nifti1Image(np.roll(np.asarray(template.dataobj), 7, axis=2),
                              template.affine)
    nib.save(shifted, folder / "mni-shifted.nii")
    return folder, template


def test_a_nifti_volume_decodes_to_its_foreground_slices(mni):
    folder, template = mni
    frames = decode_file(folder / "mni.nii.gz")
    depth = np.asarray(template.dataobj).shape[2]  # the template's slices are its last axis
    assert 10 < len(frames) < depth  # background slices (outside the head) are left out
    assert all(f.meta.volume and f.meta.n_frames == len(frames) for f in frames)
    for frame in frames:
        assert frame.pixels.dtype == np.float32 and 0 <= frame.pixels.min()
        assert frame.pixels.max() <= 1
        assert (frame.pixels > FOREGROUND_LEVEL).mean() >= FOREGROUND_SHARE
    assert [f.meta.frame for f in frames] == list(range(len(frames)))


def test_broken_volumes_get_their_typed_reason(mni, tmp_path):
    import nibabel as nib

    folder, _ = mni
    whole = (folder / "mni.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    flat = nib.Nifti1Image(np.ones((8, 8), np.float32), np.eye(4))
    nib.save(flat, tmp_path / "flat.nii")
    (tmp_path / "junk.nii").write_bytes(b"not a volume at all" * 30)
    reasons = {}
    for name in ("cut.nii.gz", "flat.nii", "junk.nii"):
        with pytest.raises(DecodeError) as info:
            decode_file(tmp_path / name)
        reasons[name] = info.value.reason
    assert reasons == {"cut.nii.gz": "truncated", "flat.nii": "unsupported_layout",
                       "junk.nii": "not_an_image"}
    inventory = take_inventory(discover_sources([tmp_path]), task_id="t")
    assert inventory.n_images == 0 and len(inventory.skipped) == 3  # a job goes on


def test_hounsfield_windows_for_ct_volumes(tmp_path):
    import nibabel as nib

    hu = np.full((16, 16, 6), -1000.0, np.float32)  # air
    hu[4:12, 4:12, :] = 40.0  # soft tissue
    hu[6:10, 6:10, :] = 700.0  # bone
    nib.save(nib.Nifti1Image(hu, np.eye(4)), tmp_path / "ct.nii.gz")
    soft = next(iter_nifti_frames(str(tmp_path / "ct.nii.gz"), max_pixels=10**6,
                                  window="soft-tissue")).pixels
    bone = next(iter_nifti_frames(str(tmp_path / "ct.nii.gz"), max_pixels=10**6,
                                  window="bone")).pixels
    assert soft.max() == 1.0 and soft.min() == 0.0  # bone saturates in the soft-tissue window
    assert 0 < bone.max() < 1.0 or bone.max() == 1.0
    assert len(np.unique(soft)) == 3 and np.sort(np.unique(bone))[1] < 0.5


def test_the_volume_is_the_sampling_unit(mni, tmp_path):
    folder, _ = mni
    for i in range(3):
        Image.fromarray(np.full((40, 40), 60 * i, np.uint8)).save(folder / f"flat{i}.png")
    inventory = take_inventory(discover_sources([folder]), task_id="mixed")
    slices = len(decode_file(folder / "mni.nii.gz"))
    assert len(inventory.images) > 2 * slices  # every slice is an image the plan can cut
    assert inventory.n_images == 2 + 3  # but the unit is the volume
    assert inventory.modalities["unknown"] == 5
    # Views go to units uniformly; within a volume they spread over its slices.
    work = plan_work(inventory, samples=2000, seed=4)
    per_file = {item.path.rsplit("/", 1)[-1]: item for item in work}
    assert set(per_file) == {"mni.nii.gz", "mni-shifted.nii", "flat0.png", "flat1.png",
                             "flat2.png"}
    assert 300 < per_file["mni.nii.gz"].n_views < 500  # about 2000 / 5
    assert len(set(per_file["mni.nii.gz"].frame)) > 0.8 * slices
    assert per_file["mni.nii.gz"].unit and not per_file["flat0.png"].unit
    # The keyed (private) plan caps views per volume, not per slice, and a volume's views
    # follow its content: the same volume under another name gets the same crops.
    keyed = plan_work(inventory, samples=2000, seed=4, plan="keyed")
    assert {item.n_views for item in keyed} == {400}
    crops = {item.path.rsplit("/", 1)[-1]: (item.top, item.left) for item in keyed}
    renamed = tmp_path / "zz-renamed.nii.gz"  # another name, another folder
    shutil.copyfile(folder / "mni.nii.gz", renamed)
    others = [p for p in sorted(folder.iterdir()) if p.name != "mni.nii.gz"]
    again = take_inventory(discover_sources([renamed, *others]), task_id="t")
    moved = {item.path.rsplit("/", 1)[-1]: (item.top, item.left)
             for item in plan_work(again, samples=2000, seed=4, plan="keyed")}
    assert moved["zz-renamed.nii.gz"] == crops["mni.nii.gz"]
    assert moved["flat0.png"] == crops["flat0.png"]
    # Without volumes nothing changes: the plan's images are the drawn indices.
    flat = take_inventory(discover_sources([folder / f"flat{i}.png" for i in range(3)]),
                          task_id="flat")
    drawn = sample_plan(3, 50, 1)
    assert np.array_equal(flat.images_of_views(drawn.image_index, drawn.slice_u),
                          drawn.image_index)
    assert gzip  # (the truncated-file test above uses .nii.gz bytes)


def test_ct_windows_from_a_flag_or_the_manifest(tmp_path):
    import pydicom.data

    from rayfp.errors import ConfigError
    from rayfp.io.image import window_bounds
    from rayfp.io.sources import read_manifest, with_decoding
    from rayfp.io.work import sampled_frames

    ct = pydicom.data.get_testdata_file("CT_small.dcm")
    mr = pydicom.data.get_testdata_file("MR_small.dcm")
    stored = decode_file(ct)[0].pixels
    lung, bone = (decode_file(ct, window=w)[0].pixels for w in ("lung", "bone"))
    assert not np.allclose(stored, lung) and not np.allclose(lung, bone)
    assert np.array_equal(decode_file(mr, window="lung")[0].pixels, decode_file(mr)[0].pixels)
    assert window_bounds("brain") == (0.0, 80.0)
    with pytest.raises(ConfigError, match="soft-tissue"):
        window_bounds("liver")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,modality,window\n{ct},CT,bone\n{mr},MR,\n")
    sources = read_manifest(manifest)
    assert [s.window for s in sources] == ["bone", ""]
    assert [s.window for s in with_decoding(sources, window="lung")] == ["bone", "lung"]  # row wins
    (tmp_path / "bad.csv").write_text(f"path,window\n{ct},liver\n")
    with pytest.raises(ConfigError, match="CT window"):
        read_manifest(tmp_path / "bad.csv")
    inventory = take_inventory(sources, task_id="ct")
    work = {item.path: item for item in plan_work(inventory, samples=4, seed=0)}
    assert work[ct].window == "bone" and work[mr].window == ""
    frame = next(sampled_frames(work[ct]))  # the views are cut from the bone-windowed image
    assert frame.canonical.shape == (3, 256, 256)
    assert not np.allclose(frame.canonical, next(sampled_frames(
        dataclasses_replace(work[ct], window=""))).canonical)


def dataclasses_replace(item, **changes):
    import dataclasses

    return dataclasses.replace(item, **changes)


def test_slices_along_any_plane_or_all_three(mni, tmp_path):
    """--slice-axes: the acquisition axis by default, one plane, or all three; thick slices
    are resampled to square pixels; the volume stays one unit; a manifest row can choose."""
    import nibabel as nib

    from rayfp.errors import ConfigError
    from rayfp.io.nifti import foreground_slices
    from rayfp.io.sources import read_manifest, with_decoding
    from rayfp.io.work import sampled_frames

    folder, template = mni
    path = folder / "mni.nii.gz"
    unit = np.asarray([f.pixels for f in decode_file(path, axes="axial")])
    assert unit.shape == np.asarray([f.pixels for f in decode_file(path)]).shape  # axial
    counts = {axes: len(decode_file(path, axes=axes))
              for axes in ("sagittal", "coronal", "axial", "all")}
    assert counts["all"] == counts["sagittal"] + counts["coronal"] + counts["axial"]
    assert len({counts["sagittal"], counts["coronal"], counts["axial"]}) > 1
    with pytest.raises(ConfigError, match="coronal"):
        decode_file(path, axes="diagonal")
    # 6 mm slices: a coronal slice is resampled from 2 x 6 mm to 2 x 2 mm pixels.
    affine = template.affine.copy()
    affine[2, 2] *= 3
    thick = tmp_path / "thick.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(template.dataobj)[:, :, ::3], affine), thick)
    depth = np.asarray(template.dataobj)[:, :, ::3].shape[2]
    coronal = decode_file(thick, axes="coronal")[0].pixels
    assert coronal.shape[0] == 3 * depth and decode_file(thick)[0].pixels.shape[0] != 3 * depth
    volume01 = np.ones((4, 5, 6), np.float32)
    assert foreground_slices(volume01, 1) == [0, 1, 2, 3, 4]

    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,slice_axes\n{path},all\n{thick},\n")
    sources = with_decoding(read_manifest(manifest), axes="coronal")
    assert [s.axes for s in sources] == ["all", "coronal"]  # the row wins
    inventory = take_inventory(sources, task_id="planes")
    assert inventory.n_images == 2 and len(inventory.images) == counts["all"] + len(
        decode_file(thick, axes="coronal"))
    work = {item.path: item for item in plan_work(inventory, samples=40, seed=2)}
    assert work[str(path)].axes == "all"
    frames = list(sampled_frames(work[str(path)]))
    assert sum(len(f.top) for f in frames) == work[str(path)].n_views
