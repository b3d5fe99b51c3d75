from __future__ import annotations

import json

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import make_space, random_fingerprint

from rayfp.errors import ConfigError, NotFoundError, StoreError
from rayfp.store import schemas
from rayfp.store.store import Store


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


def test_space_round_trip_and_missing_space_message(store):
    space = make_space(dim=5, bins=7, lo=-1.0, hi=2.0)
    store.put_space(space)
    loaded = store.get_space(space.space_id)
    assert loaded.space_id == space.space_id and loaded.bins == 7
    np.testing.assert_array_equal(loaded.edges_hi, space.edges_hi)
    with pytest.raises(NotFoundError, match="rayfp edges"):
        store.get_space("feedfacefeedface")


def test_fingerprint_round_trip_is_exact_and_rewrite_replaces(store, rng):
    space = make_space(dim=6, bins=9)
    store.put_space(space)
    fp = random_fingerprint(rng, space, "task/with spaces & ünïcode")
    store.put_fingerprint(fp)
    back = store.get_fingerprint(space.space_id, fp.task_id)
    assert np.array_equal(back.counts, fp.counts) and back.counts.shape == (6, 9)
    assert np.array_equal(back.feature_sum, fp.feature_sum)
    assert (back.n_samples, back.n_images, back.task_id) == (fp.n_samples, fp.n_images, fp.task_id)
    before = store.fingerprint_version()
    newer = random_fingerprint(rng, space, fp.task_id, n=900)
    store.put_fingerprint(newer)
    assert [f.n_samples for f in store.fingerprints(space.space_id)] == [900]
    assert store.get_fingerprint(space.space_id, fp.task_id).n_samples == 900
    # History without copies: the table as it was still reads, older fingerprint included.
    assert [f.n_samples for f in store.fingerprints(space.space_id, version=before)] == [
        fp.n_samples]
    assert store.fingerprint_version() == before + 1  # a re-write is one appended commit


def test_counts_are_dimension_major_in_parquet(store, rng):
    space = make_space(dim=3, bins=4)
    store.put_space(space)
    fp = random_fingerprint(rng, space, "t")
    store.put_fingerprint(fp)
    (path,) = store.fingerprint_files(space.space_id)["path"].to_pylist()
    assert path.startswith(f"space_id={space.space_id}/")
    flat = pq.read_table(store.root / "fingerprints" / path).column("counts")[0].as_py()
    assert flat[1 * 4 + 2] == fp.counts[1, 2]


def test_store_is_readable_by_pandas_pyarrow_and_duckdb(store, rng):
    from deltalake import DeltaTable

    spaces = [make_space(dim=4, bins=5), make_space(dim=4, bins=5, hi=3.0)]
    for space in spaces:
        store.put_space(space)
        for i in range(3):
            store.put_fingerprint(random_fingerprint(rng, space, f"t{i}"))
    store.put_fingerprint(random_fingerprint(rng, spaces[0], "t1", n=700))  # a re-write
    table = DeltaTable(store.root / "fingerprints")
    frame = table.to_pandas()
    assert len(frame) == 7 and set(frame["space_id"].astype(str)) == {s.space_id for s in spaces}
    # The newest row of each (space, task) is the store's content: plain SQL over the Parquet
    # data files the Delta log lists.
    files = [str(f) for f in table.file_uris()]
    rows = duckdb.sql(
        f"SELECT space_id, count(*) AS n, sum(n_samples) AS samples FROM (SELECT * FROM "
        f"read_parquet({files}, hive_partitioning=true) QUALIFY row_number() OVER (PARTITION "
        f"BY space_id, task_id ORDER BY written_at_ns DESC) = 1) GROUP BY space_id").fetchall()
    assert sorted(n for _, n, _ in rows) == [3, 3]
    expected = {s.space_id: sum(fp.n_samples for fp in store.fingerprints(s.space_id))
                for s in spaces}
    assert {space_id: samples for space_id, _, samples in rows} == expected
    spaces_frame = DeltaTable(store.root / "spaces").to_pandas()
    assert set(spaces_frame["space_id"]) == {s.space_id for s in spaces}
    assert json.loads(spaces_frame["preprocessing"][0]) == {"kind": "synthetic"}


def test_fingerprint_of_unknown_space_is_refused(store, rng):
    with pytest.raises(NotFoundError):
        store.put_fingerprint(random_fingerprint(rng, make_space(), "t"))


def test_upsert_replaces_by_key_and_validates_rows(store):
    store.upsert("components", [
        {"task_id": "a", "kind": "augmentation", "value": "{}", "metric": "auroc", "score": 0.7,
         "seed": 0, "provenance": "paper"},
        {"task_id": "a", "kind": "augmentation", "value": "{}", "metric": "auroc", "score": 0.8,
         "seed": 1, "provenance": "paper"},
    ])
    store.upsert("components", [
        {"task_id": "a", "kind": "augmentation", "value": "{}", "metric": "auroc", "score": 0.9,
         "seed": 1, "provenance": "rerun"}])
    rows = sorted(store.read_table("components").to_pylist(), key=lambda r: r["seed"])
    assert [r["score"] for r in rows] == [0.7, 0.9]
    assert all(r["schema_version"] == schemas.SCHEMA_VERSION for r in rows)
    with pytest.raises(ConfigError, match="do not match its schema"):
        store.upsert("tasks", [{"task_id": "x", "n_images": "many"}])


def test_newer_schema_version_is_refused(store, rng, monkeypatch):
    space = make_space()
    store.put_space(space)
    monkeypatch.setattr(schemas, "SCHEMA_VERSION", schemas.SCHEMA_VERSION + 1)
    store.put_fingerprint(random_fingerprint(rng, space, "t"))  # a newer rayfp wrote it
    monkeypatch.undo()
    with pytest.raises(StoreError, match="upgrade rayfp"):
        store.get_fingerprint(space.space_id, "t")


def test_a_version_1_store_still_reads_as_exact_counts(store, rng, monkeypatch):
    """Before privacy records (schema 1) `privacy` held only the image floor: such fingerprints
    read unchanged, count as exact (no ε) and are refused by a private-only policy."""
    import dataclasses

    from rayfp.core.release import Release
    from rayfp.errors import PrivacyPolicyError
    from rayfp.privacy.mechanism import spec_from_record
    from rayfp.privacy.policy import check_privacy

    space = make_space()
    store.put_space(space)
    written = dataclasses.replace(
        random_fingerprint(rng, space, "old"),
        privacy={"min_images": 50, "quantisation": None, "dp_epsilon": None})
    monkeypatch.setattr(schemas, "SCHEMA_VERSION", 1)
    store.put_fingerprint(written)
    monkeypatch.undo()
    fp = store.get_fingerprint(space.space_id, "old")
    assert np.array_equal(fp.counts, written.counts) and fp.privacy["min_images"] == 50
    assert Release.of(fp.privacy) is None and not spec_from_record(fp.privacy).private
    with pytest.raises(PrivacyPolicyError, match="exact counts"):
        check_privacy(fp, space, max_epsilon=8)
    assert schemas.SCHEMA_VERSION == 3


def test_fingerprint_of_a_task_needs_a_space_only_when_it_has_several(tmp_path, rng):
    store = Store(tmp_path)
    spaces = [make_space(dim=4, bins=5), make_space(dim=4, bins=6)]
    for space in spaces:
        store.put_space(space)
    store.put_fingerprint(random_fingerprint(rng, spaces[0], "one"))
    for space in spaces:
        store.put_fingerprint(random_fingerprint(rng, space, "two"))
    assert store.fingerprint_of("one").space_id == spaces[0].space_id
    assert store.fingerprint_of("two", spaces[1].space_id).space_id == spaces[1].space_id
    with pytest.raises(ConfigError, match="choose one with --space"):
        store.fingerprint_of("two")
    with pytest.raises(NotFoundError, match="no fingerprint of task 'three'"):
        store.fingerprint_of("three")


WRITER = """
import sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, {tests!r})
from conftest import make_space, random_fingerprint
from rayfp.store.store import Store

writer, count, root, go = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
store = Store(root)
space = make_space(dim=64, bins=100)
while not go.exists():  # start together
    time.sleep(0.005)
for j in range(count):
    task = f"w{{writer}}-{{j:02d}}"
    store.put_fingerprint(random_fingerprint(np.random.default_rng([writer, j]), space, task))
    store.upsert("tasks", [{{"task_id": task, "name": task, "modality": "synthetic"}}])
"""


def test_eight_concurrent_writers_lose_nothing_and_duplicate_nothing(store, tmp_path):
    """8 processes append fingerprints and task rows to one store at once while a ninth
    compacts it: every row lands exactly once, with the content its writer wrote."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    from deltalake import DeltaTable

    writers, count = 8, 25
    space = make_space(dim=64, bins=100)
    store.put_space(space)
    store.put_fingerprint(random_fingerprint(np.random.default_rng(0), space, "w0-00"))  # stale
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(Path(__file__).parents[1])))  # conftest.py
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(count),
                               str(store.root), str(go)]) for i in range(writers)]
    time.sleep(3.0)  # let all import rayfp
    go.touch()
    compactions = 0
    while any(p.poll() is None for p in procs):
        store.compact()  # beside the writers: it may give way, it must never lose a row
        compactions += 1
    assert [p.wait() for p in procs] == [0] * writers and compactions >= 1
    expected = {f"w{i}-{j:02d}": (i, j) for i in range(writers) for j in range(count)}
    stored = Store(store.root).fingerprints(space.space_id)
    assert sorted(fp.task_id for fp in stored) == sorted(expected)
    for fp in stored:  # the newest write of w0-00 won over the stale one written before
        again = random_fingerprint(np.random.default_rng(list(expected[fp.task_id])), space,
                                   fp.task_id)
        assert np.array_equal(fp.counts, again.counts)
    assert None not in store.compact().values()  # alone, it completes
    raw = DeltaTable(store.root / "fingerprints").to_pyarrow_table(columns=["task_id"])
    assert raw.num_rows == len(expected)  # no row written twice, the stale one folded away
    tasks = store.read_table("tasks")
    assert sorted(tasks["task_id"].to_pylist()) == sorted(expected)


def write_directory_layout_store(root, space, fingerprints, tasks):
    """A store as rayfp wrote it before Delta tables (schema 2): one Parquet file per space,
    per fingerprint (hive-partitioned by space, counts uint32) and per small table."""
    import hashlib

    import pyarrow as pa

    (root / "spaces").mkdir(parents=True)
    row = {**space.to_record(), "schema_version": 2}
    row["preprocessing"] = json.dumps(row["preprocessing"], sort_keys=True)
    pq.write_table(pa.Table.from_pylist([row], schema=schemas.SPACES),
                   root / "spaces" / f"{space.space_id}.parquet")
    folder = root / "fingerprints" / f"space_id={space.space_id}"
    folder.mkdir(parents=True)
    for fp in fingerprints:
        row = {**fp.to_record(), "counts": np.asarray(fp.counts, np.uint32).ravel(),
               "privacy": json.dumps(fp.privacy), "schema_version": 2}
        del row["space_id"]
        key = hashlib.sha256(fp.task_id.encode()).hexdigest()[:24]
        pq.write_table(pa.Table.from_pydict({k: [v] for k, v in row.items()},
                                            schema=schemas.FINGERPRINTS),
                       folder / f"{key}.parquet")
    (root / "tasks").mkdir()
    pq.write_table(pa.Table.from_pylist([{**t, "schema_version": 2} for t in tasks],
                                        schema=schemas.TASKS), root / "tasks" / "tasks.parquet")
    (root / "site-only" / "views").mkdir(parents=True)
    (root / "site-only" / "views" / "kept.npz").write_bytes(b"views of a site")


def test_migrate_copies_a_directory_layout_store_and_the_old_one_is_refused(tmp_path, rng):
    from rayfp.cli.main import main as rayfp_cli

    space = make_space(dim=5, bins=6)
    fingerprints = [random_fingerprint(rng, space, f"old-{i}") for i in range(7)]
    tasks = [{"task_id": f"old-{i}", "name": f"Old {i}", "modality": "MR"} for i in range(7)]
    old, new = tmp_path / "old", tmp_path / "new"
    write_directory_layout_store(old, space, fingerprints, tasks)
    with pytest.raises(StoreError, match="rayfp store migrate"):
        Store(old).get_space(space.space_id)
    assert rayfp_cli(["store", "migrate", str(old), str(new)]) == 0
    store = Store(new)
    moved = store.fingerprints(space.space_id)
    assert [fp.task_id for fp in moved] == sorted(fp.task_id for fp in fingerprints)
    for fp in moved:
        original = next(f for f in fingerprints if f.task_id == fp.task_id)
        assert np.array_equal(fp.counts, original.counts)
        np.testing.assert_array_equal(fp.feature_sum, original.feature_sum)
    assert sorted(store.read_table("tasks")["name"].to_pylist()) == sorted(
        t["name"] for t in tasks)
    assert (new / "site-only" / "views" / "kept.npz").read_bytes() == b"views of a site"
    assert rayfp_cli(["store", "migrate", str(old), str(new)]) == 2  # never into a used store


def test_a_reader_sees_every_commit_of_another_writer_at_once(store, rng):
    """The cheap version check (is the next log entry there?) misses no commit, however fast
    they follow each other."""
    space = make_space()
    store.put_space(space)
    reader = Store(store.root)
    assert reader.fingerprint_version() is None  # nothing written yet
    for i in range(5):
        store.put_fingerprint(random_fingerprint(rng, space, f"t{i}"))
        store.put_fingerprint(random_fingerprint(rng, space, f"u{i}"))  # back to back
        assert reader.fingerprint_version() == store.fingerprint_version() == 2 * i + 1
        assert len(reader.fingerprints(space.space_id)) == 2 * i + 2


def test_compact_then_vacuum_keeps_the_present_and_drops_old_history(store, rng, capsys):
    from rayfp.cli.main import main as rayfp_cli

    space = make_space()
    store.put_space(space)
    first = random_fingerprint(rng, space, "t", n=300)
    store.put_fingerprint(first)
    other = random_fingerprint(rng, space, "u", n=500)
    store.put_fingerprint(other)
    before = store.fingerprint_version()
    store.put_fingerprint(random_fingerprint(rng, space, "t", n=900))
    assert rayfp_cli(["store", "compact", str(store.root)]) == 0
    assert '"fingerprints": 1' in capsys.readouterr().out  # the superseded row of t
    assert {fp.task_id: fp.n_samples for fp in store.fingerprints(space.space_id)} == {
        "t": 900, "u": 500}
    assert len(store.fingerprint_files(space.space_id)) == 1  # merged into one file
    old = store.fingerprints(space.space_id, version=before)  # history, before the vacuum
    assert [fp.n_samples for fp in old if fp.task_id == "t"] == [300]
    assert rayfp_cli(["store", "vacuum", str(store.root), "--retention-hours", "0"]) == 0
    assert {fp.task_id for fp in Store(store.root).fingerprints(space.space_id)} == {"t", "u"}
    with pytest.raises(StoreError, match="unreadable"):
        Store(store.root).fingerprints(space.space_id, version=before)
