from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import make_space, random_fingerprint

from rayfp.core import schemas
from rayfp.core.store import Store
from rayfp.errors import ConfigError, NotFoundError, StoreError


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
    newer = random_fingerprint(rng, space, fp.task_id, n=900)
    store.put_fingerprint(newer)
    assert [f.n_samples for f in store.fingerprints(space.space_id)] == [900]
    files = list((store.root / "fingerprints").rglob("*"))
    assert not [f for f in files if f.name.endswith(".tmp")]  # no leftovers of atomic writes


def test_counts_are_dimension_major_in_parquet(store, rng):
    space = make_space(dim=3, bins=4)
    store.put_space(space)
    fp = random_fingerprint(rng, space, "t")
    path = store.put_fingerprint(fp)
    flat = pq.read_table(path).column("counts")[0].as_py()
    assert flat[1 * 4 + 2] == fp.counts[1, 2]
    assert path.parent.name == f"space_id={space.space_id}"


def test_store_is_readable_by_pandas_pyarrow_and_duckdb(store, rng):
    spaces = [make_space(dim=4, bins=5), make_space(dim=4, bins=5, hi=3.0)]
    for space in spaces:
        store.put_space(space)
        for i in range(3):
            store.put_fingerprint(random_fingerprint(rng, space, f"t{i}"))
    frame = pd.read_parquet(store.root / "fingerprints")
    assert len(frame) == 6 and set(frame["space_id"].astype(str)) == {s.space_id for s in spaces}
    table = pq.read_table(store.root / "fingerprints")
    assert table.num_rows == 6
    glob = str(store.root / "fingerprints" / "*" / "*.parquet")
    rows = duckdb.sql(f"SELECT space_id, count(*) AS n FROM read_parquet('{glob}', "
                      "hive_partitioning=true) GROUP BY space_id ORDER BY space_id").fetchall()
    assert sorted(n for _, n in rows) == [3, 3]
    spaces_frame = pd.read_parquet(store.root / "spaces")
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


def test_newer_schema_version_is_refused(store, rng):
    space = make_space()
    store.put_space(space)
    path = store.put_fingerprint(random_fingerprint(rng, space, "t"))
    table = pq.read_table(path)
    index = table.schema.get_field_index("schema_version")
    table = table.set_column(index, "schema_version", pa_int32([schemas.SCHEMA_VERSION + 1]))
    pq.write_table(table, path)
    with pytest.raises(StoreError, match="upgrade rayfp"):
        store.get_fingerprint(space.space_id, "t")


def test_a_version_1_store_still_reads_as_exact_counts(store, rng):
    """Before privacy records (schema 1) `privacy` held only the image floor: such fingerprints
    read unchanged, count as exact (no ε) and are refused by a private-only policy."""
    import pyarrow as pa

    from rayfp.errors import PrivacyPolicyError
    from rayfp.privacy.mechanism import epsilon_of, spec_from_record
    from rayfp.privacy.policy import check_privacy

    space = make_space()
    store.put_space(space)
    written = random_fingerprint(rng, space, "old")
    path = store.put_fingerprint(written)
    table = pq.read_table(path)
    old_privacy = json.dumps({"min_images": 50, "quantisation": None, "dp_epsilon": None})
    for name, column in (("schema_version", pa_int32([1])),
                         ("privacy", pa.array([old_privacy], pa.string()))):
        table = table.set_column(table.schema.get_field_index(name), name, column)
    pq.write_table(table, path)
    fp = store.get_fingerprint(space.space_id, "old")
    assert np.array_equal(fp.counts, written.counts) and fp.privacy["min_images"] == 50
    assert epsilon_of(fp.privacy) == float("inf") and not spec_from_record(fp.privacy).private
    with pytest.raises(PrivacyPolicyError, match="exact counts"):
        check_privacy(fp, space, max_epsilon=8)
    assert schemas.SCHEMA_VERSION == 2


def pa_int32(values):
    import pyarrow as pa

    return pa.array(values, pa.int32())


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
