"""Sources, inventories and work plans (rayfp.io.sources / inventory / work), without Ray:
the one model both the local client and the Ray job use."""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayfp.cli.demo import dicom_corpus
from rayfp.core.sampling import sample_plan
from rayfp.errors import ConfigError
from rayfp.io.inventory import (
    FileRecord,
    TaskInventory,
    group_inventory,
    inventory_file,
    take_inventory,
)
from rayfp.io.sources import ImageSource, discover_sources, list_archive, read_manifest
from rayfp.io.work import expected_views, plan_work, sampled_frames


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("arch")
    corpus = {p.name: p for p in dicom_corpus()}
    for task, names in {"mr": ["MR_small.dcm", "emri_small.dcm", "MR_truncated.dcm"],
                        "ct": ["CT_small.dcm", "badVR.dcm"]}.items():
        (root / task / "sub").mkdir(parents=True)
        for name in names:
            shutil.copy(corpus[name], root / task / "sub" / name)
    return root


def records(sources) -> list[FileRecord]:
    return [inventory_file(s) for s in sources]


def test_list_archive_from_folder_csv_and_parquet(archive, tmp_path):
    files = list_archive(archive)
    assert [(f.task_id, Path(f.path).name) for f in files] == [
        ("ct", "CT_small.dcm"), ("ct", "badVR.dcm"), ("mr", "MR_small.dcm"),
        ("mr", "MR_truncated.dcm"), ("mr", "emri_small.dcm")]
    assert list_archive(f"{archive}/") == files
    csv = tmp_path / "m.csv"
    csv.write_text("path,task_id,modality\n" + "\n".join(f"{f.path},{f.task_id},X" for f in files))
    from_csv = list_archive(csv)
    assert [f.path for f in from_csv] == [f.path for f in files]
    assert {f.modality for f in from_csv} == {"X"}  # the manifest's modality travels along
    table = pa.table({"path": [f.path for f in files], "task_id": [f.task_id for f in files]})
    pq.write_table(table, tmp_path / "m.parquet")
    assert list_archive(tmp_path / "m.parquet") == files
    bad = tmp_path / "bad.csv"
    bad.write_text("file\nx\n")
    with pytest.raises(ConfigError, match=r"needs a 'path' column; found columns \['file'\]"):
        list_archive(bad)


def test_a_manifest_without_task_ids_is_one_task_named_after_it(archive, tmp_path):
    manifest = tmp_path / "knee-mri.csv"
    paths = [f.path for f in list_archive(archive) if f.task_id == "mr"]
    manifest.write_text("path\n" + "\n".join(paths))
    assert {f.task_id for f in list_archive(manifest)} == {"knee-mri"}
    assert [s.path for s in discover_sources([manifest])] == sorted(paths)


def test_one_manifest_reader_for_every_path(archive, tmp_path):
    """CSV and Parquet, relative paths resolved against the manifest, optional columns."""
    rel = tmp_path / "rel.parquet"
    shutil.copy(next(archive.rglob("CT_small.dcm")), tmp_path / "ct.dcm")
    pq.write_table(pa.table({"path": ["ct.dcm"], "modality": ["CT"]}), rel)
    assert read_manifest(rel) == [ImageSource(str(tmp_path / "ct.dcm"), "", "CT")]
    assert discover_sources([rel]) == read_manifest(rel)
    with pytest.raises(ConfigError, match="does not exist"):
        discover_sources([tmp_path / "nope"])


def test_inventory_never_raises_and_groups_by_task(archive):
    rows = records(list_archive(archive))
    by_name = {Path(r.path).name: r for r in rows}
    assert by_name["emri_small.dcm"].n_frames == 10
    assert by_name["MR_truncated.dcm"].reason == "truncated"
    assert by_name["badVR.dcm"].reason == "bad_vr"
    assert FileRecord.from_record(by_name["badVR.dcm"].to_record()) == by_name["badVR.dcm"]
    tasks = group_inventory(rows)
    # emri_small's 10 frames are one multi-frame volume: one unit, like MR_small
    assert tasks["mr"].n_images == 2 and len(tasks["mr"].images) == 11
    assert tasks["mr"].modality == "MR"
    assert [Path(f.path).name for f in tasks["mr"].skipped] == ["MR_truncated.dcm"]
    assert tasks["mr"].images == sorted(tasks["mr"].images)
    local = take_inventory(discover_sources([archive / "mr"]), task_id="mr")
    assert local == tasks["mr"]  # the local client's inventory is the job's


def test_modality_prefers_the_manifest_and_breaks_ties_by_name(archive):
    ct = next(f for f in list_archive(archive) if f.path.endswith("CT_small.dcm"))
    assert inventory_file(ct).modality == "CT"
    assert inventory_file(ImageSource(ct.path, "ct", "xray")).modality == "xray"
    tie = TaskInventory("t", [], [], collections.Counter({"mr": 2, "ct": 2, "us": 1}))
    assert tie.modality == "ct"
    assert TaskInventory("t", [], [], collections.Counter()).modality == ""


def test_work_plan_is_the_sample_plan(archive):
    task = group_inventory(records(list_archive(archive)))["mr"]
    work = plan_work(task, samples=500, seed=3)
    assert expected_views(work) == {"mr": 500}
    plan = sample_plan(task.n_images, 500, 3)
    images = task.images_of_views(plan.image_index, plan.slice_u)  # a unit's view -> a slice
    planned = sorted((item.path, f, t, lft, fl) for item in work
                     for f, t, lft, fl in zip(item.frame, item.top, item.left, item.flip))
    reference = sorted((task.images[i].path, task.images[i].frame, int(t), int(lft), bool(fl))
                       for i, t, lft, fl in zip(images, plan.crop_top, plan.crop_left,
                                                plan.flip))
    assert planned == reference
    emri = next(item for item in work if item.path.endswith("emri_small.dcm"))
    frames = list(sampled_frames(emri))
    assert sum(len(f.top) for f in frames) == emri.n_views
    assert all(f.canonical.shape == (3, 256, 256) for f in frames)
    assert np.isfinite(frames[0].canonical).all()


def test_archives_behind_uris_list_and_decode_like_local_ones(archive, tmp_path):
    """file:// goes through the same pyarrow filesystem code as s3:// or gs://."""
    local = list_archive(archive)
    remote = list_archive(f"file://{archive}")
    assert [(f.task_id, f.path) for f in remote] == [(f.task_id, f"file://{f.path}")
                                                      for f in local]
    rows = {Path(r.path).name: r for r in records(remote)}
    assert rows["emri_small.dcm"].n_frames == 10 and rows["badVR.dcm"].reason == "bad_vr"
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,task_id\n" + "\n".join(
        f"{Path(f.path).relative_to(archive)},{f.task_id}" for f in local))
    shutil.copy(manifest, archive / "m.csv")
    try:
        via_uri = list_archive(f"file://{archive}/m.csv")
        assert [f.path for f in via_uri] == [f"file://{f.path}" for f in local]
        assert [s.path for s in discover_sources([f"file://{archive}/mr"])] == [
            f.path for f in remote if f.task_id == "mr"]
    finally:
        (archive / "m.csv").unlink()
