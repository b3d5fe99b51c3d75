"""No file name of a private task in any file of the store, read as a thief of the store would:
every byte of every file, old versions included (rayfp.store.scrub, rayfp.store.tasks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import make_space, private_fingerprint, random_fingerprint

from rayfp.core.fingerprint import PartialCounts, bin_indices, finalize
from rayfp.core.replicates import ViewTable
from rayfp.store.scrub import scrub
from rayfp.store.store import Store
from rayfp.store.tasks import WITHHELD, save_task_fingerprint, stored_source, withheld_failures

SPACE = make_space(dim=6, bins=10)
SECRET = "MRN-4711-Doe_Jane"  # what a hospital's file names carry


def _bytes_under(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def _old_style_store(root: Path, rng) -> Store:
    """A store as rayfp wrote it before: the private task's source lists its files, the job's
    failures name them, the site-only view table too, and a superseded release is kept."""
    store = Store(root)
    store.put_space(SPACE)
    names = [f"/pacs/{SECRET}/img_{i}.dcm" for i in range(3)]
    for attempt in range(2):  # a re-fingerprint supersedes the first release
        fp = private_fingerprint(rng, SPACE, "ct")
        store.put_fingerprint(finalize(
            PartialCounts(SPACE.space_id, fp.counts, fp.feature_sum, fp.n_samples),
            task_id="ct", n_images=fp.n_images, privacy=fp.privacy,
            source=json.dumps({"kind": "rayfp-cli", "inputs": names, "seed": attempt})))
    public = random_fingerprint(rng, SPACE, "public")
    save_task_fingerprint(store, PartialCounts(SPACE.space_id, public.counts, public.feature_sum,
                                               public.n_samples),
                          task_id="public", n_images=public.n_images, modality="mr",
                          source={"kind": "rayfp-cli", "inputs": ["/open/data/a.png"]},
                          privacy={"dp": None})
    store.upsert("failures", [{"task_id": "ct", "path": names[0], "reason": "truncated",
                               "detail": f"cannot read {names[0]}", "job_id": "j",
                               "created_at": "now"}])
    features = rng.random((9, SPACE.dim))
    store.put_views(ViewTable.from_batches(SPACE, "ct", [(
        [f"{n}#0" for n in names for _ in range(3)], bin_indices(features, SPACE), features)]))
    return store


def test_the_scrub_leaves_no_private_file_name_in_any_byte(tmp_path, rng):
    store = _old_style_store(tmp_path / "store", rng)
    assert SECRET.encode() in _bytes_under(tmp_path / "store")  # the attack works before
    report = scrub(store, progress=lambda _: None)
    assert report["private_tasks"] == 1 and report["fingerprints"] == 1
    assert report["failures"] == 1 and report["views"] == 1
    assert SECRET.encode() not in _bytes_under(tmp_path / "store")
    # What stays: the release itself, how it was made, the public task's inputs, one failure
    # row per file (reason only), the view table (images by nonce).
    again = Store(tmp_path / "store")
    source = json.loads(again.get_fingerprint(SPACE.space_id, "ct").source)
    assert source == {"kind": "rayfp-cli", "seed": 1, "n_inputs": 3, "location": WITHHELD}
    assert "/open/data/a.png" in again.get_fingerprint(SPACE.space_id, "public").source
    failures = again.read_table("failures").to_pylist()
    assert len(failures) == 1 and failures[0]["path"].startswith("withheld:")
    assert failures[0]["reason"] == "truncated" and failures[0]["detail"] == ""
    views = again.get_views(SPACE.space_id, "ct")
    assert views.n_views == 9 and len(set(views.images)) == 3
    assert scrub(again, progress=lambda _: None)["fingerprints"] == 0  # idempotent


def test_new_private_rows_keep_no_location_and_exact_ones_keep_theirs():
    source = {"kind": "rayfp-cli", "inputs": ["/a/x.png", "/a/y.png"], "seed": 3,
              "window": "lung"}
    assert stored_source(source, private=True) == {"kind": "rayfp-cli", "seed": 3,
                                                   "window": "lung", "n_inputs": 2,
                                                   "location": WITHHELD}
    assert stored_source({"kind": "rayfp-archive-job", "archive": "/pacs/2024", "job_id": "j"},
                         private=True) == {"kind": "rayfp-archive-job", "job_id": "j",
                                           "location": WITHHELD}
    assert stored_source(source, private=False) == source
    rows = withheld_failures([{"task_id": "t", "path": f"/p/{SECRET}.dcm", "reason": "bad_vr",
                               "detail": SECRET}, {"task_id": "t", "path": "/p/b.dcm",
                                                   "reason": "truncated", "detail": ""}])
    assert SECRET not in json.dumps(rows) and len({r["path"] for r in rows}) == 2
    # The salt is never kept: the same name gives another digest in another job.
    assert withheld_failures(rows[:1])[0]["path"] != rows[0]["path"]
    assert np.all([r["path"].startswith("withheld:") for r in rows])
