"""Archive planning without Ray: listing, per-file inventory, the work plan."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayfp.archive import (
    expected_samples,
    frames_of_work_item,
    group_inventory,
    inventory_file,
    list_archive,
    plan_work,
)
from rayfp.demo import dicom_corpus
from rayfp.errors import ConfigError
from rayfp.fingerprint import sample_plan


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


def test_list_archive_from_folder_csv_and_parquet(archive, tmp_path):
    files = list_archive(archive)
    assert [(f.task_id, Path(f.path).name) for f in files] == [
        ("ct", "CT_small.dcm"), ("ct", "badVR.dcm"), ("mr", "MR_small.dcm"),
        ("mr", "MR_truncated.dcm"), ("mr", "emri_small.dcm")]
    csv = tmp_path / "m.csv"
    csv.write_text("path,task_id,modality\n" + "\n".join(f"{f.path},{f.task_id},X" for f in files))
    assert [f.path for f in list_archive(csv)] == [f.path for f in files]
    table = pa.table({"path": [f.path for f in files], "task_id": [f.task_id for f in files]})
    pq.write_table(table, tmp_path / "m.parquet")
    assert list_archive(tmp_path / "m.parquet") == sorted(list_archive(tmp_path / "m.parquet"))
    bad = tmp_path / "bad.csv"
    bad.write_text("file\nx\n")
    with pytest.raises(ConfigError, match=r"lacks columns \['path', 'task_id'\]"):
        list_archive(bad)


def test_inventory_never_raises_and_groups_by_task(archive):
    rows = [inventory_file(f.path, f.task_id) for f in list_archive(archive)]
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["emri_small.dcm"]["n_frames"] == 10
    assert by_name["MR_truncated.dcm"]["reason"] == "truncated"
    assert by_name["badVR.dcm"]["reason"] == "bad_vr"
    tasks = group_inventory(rows)
    assert tasks["mr"].n_images == 11 and tasks["mr"].modality == "MR"
    assert [Path(f["path"]).name for f in tasks["mr"].failures] == ["MR_truncated.dcm"]
    assert tasks["mr"].images == sorted(tasks["mr"].images)


def test_work_plan_is_the_cli_plan(archive):
    rows = [inventory_file(f.path, f.task_id) for f in list_archive(archive)]
    task = group_inventory(rows)["mr"]
    work = plan_work(task, samples=500, seed=3)
    assert expected_samples(work) == {"mr": 500}
    plan = sample_plan(task.n_images, 500, 3)
    planned = sorted((p, f, t, lft, fl) for item in work for p, f, t, lft, fl in zip(
        [item["path"]] * len(item["frame"]), item["frame"], item["top"], item["left"],
        item["flip"]))
    reference = sorted((task.images[i][0], task.images[i][1], int(t), int(lft), bool(fl))
                       for i, t, lft, fl in zip(plan.image_index, plan.crop_top, plan.crop_left,
                                                plan.flip))
    assert planned == reference
    emri = next(item for item in work if item["path"].endswith("emri_small.dcm"))
    frames = frames_of_work_item(emri)
    assert sum(len(r["top"]) for r in frames) == len(emri["frame"])
    assert all(r["canonical"].shape == (3, 256, 256) for r in frames)
    assert np.isfinite(frames[0]["canonical"]).all()


def test_archives_behind_uris_list_and_decode_like_local_ones(archive, tmp_path):
    """file:// goes through the same pyarrow filesystem code as s3:// or gs://."""
    local = list_archive(archive)
    remote = list_archive(f"file://{archive}")
    assert [(f.task_id, f.path) for f in remote] == [(f.task_id, f"file://{f.path}")
                                                      for f in local]
    rows = {Path(r["path"]).name: r for r in (inventory_file(f.path, f.task_id) for f in remote)}
    assert rows["emri_small.dcm"]["n_frames"] == 10 and rows["badVR.dcm"]["reason"] == "bad_vr"
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,task_id\n" + "\n".join(
        f"{Path(f.path).relative_to(archive)},{f.task_id}" for f in local))
    shutil.copy(manifest, archive / "m.csv")
    via_uri = list_archive(f"file://{archive}/m.csv")
    assert [f.path for f in via_uri] == [f"file://{f.path}" for f in local]
    (archive / "m.csv").unlink()
