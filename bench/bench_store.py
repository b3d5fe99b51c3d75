"""Store writes: what one registration costs as the store grows, the Delta store against the
directory layout it replaced, side by side in one run; and 8 writers at once.

A registration writes the task's fingerprint and its row of the tasks table. The directory
layout (rayfp before Delta tables, re-enacted here as it was: one Parquet file per fingerprint,
the whole tasks table rewritten under a lock) pays for the table rewrite; the Delta store
appends one small file and one commit to each table.

    python -m bench.bench_store [--sizes 100 1000 10000] [--writers 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.bench_core import realistic_fingerprint, synthetic_space, write_section
from rayfp.store import schemas
from rayfp.store.feed import FingerprintFeed
from rayfp.store.store import Store, task_key

TITLE = "Store writes: one registration as the store grows, Delta against the directory layout"
DIM, BINS, REPEATS = 512, 100, 20


class DirectoryLayout:
    """How the old store registered a task: an atomic file per fingerprint, and the tasks
    table read, merged and rewritten whole under a file lock."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def register(self, fp) -> None:
        row = task_row(fp.task_id)
        record = {**fp.to_record(), "counts": np.asarray(fp.counts, np.uint32).ravel(),
                  "privacy": "{}", "schema_version": 2}
        del record["space_id"]
        folder = self.root / "fingerprints" / f"space_id={fp.space_id}"
        folder.mkdir(parents=True, exist_ok=True)
        self._write(pa.Table.from_pydict({k: [v] for k, v in record.items()},
                                         schema=schemas.FINGERPRINTS),
                    folder / f"{task_key(fp.task_id)}.parquet")
        path = self.root / "tasks" / "tasks.parquet"
        with open(self.root / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            old = pq.read_table(path).to_pylist() if path.exists() else []
            kept = [r for r in old if r["task_id"] != row["task_id"]]
            self._write(pa.Table.from_pylist([*kept, {**row, "schema_version": 2}],
                                             schema=schemas.TASKS), path)

    @staticmethod
    def _write(table: pa.Table, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)

    def prefill(self, fps, rows) -> None:
        folder = self.root / "fingerprints" / f"space_id={fps[0].space_id}"
        folder.mkdir(parents=True, exist_ok=True)
        for fp in fps:
            record = {**fp.to_record(), "counts": np.asarray(fp.counts, np.uint32).ravel(),
                      "privacy": "{}", "schema_version": 2}
            del record["space_id"]
            self._write(pa.Table.from_pydict({k: [v] for k, v in record.items()},
                                             schema=schemas.FINGERPRINTS),
                        folder / f"{task_key(fp.task_id)}.parquet")
        self._write(pa.Table.from_pylist([{**r, "schema_version": 2} for r in rows],
                                         schema=schemas.TASKS), self.root / "tasks" /
                    "tasks.parquet")


def task_row(task_id: str) -> dict:
    return {"task_id": task_id, "name": task_id, "modality": "synthetic", "n_images": 100}


def register(store: Store, fp) -> None:
    """A registration in the Delta store: the fingerprint and the task's row."""
    store.put_fingerprint(fp)
    store.upsert("tasks", [task_row(fp.task_id)])


def timed(register, fps) -> tuple[float, float]:
    times = []
    for fp in fps:
        t0 = time.perf_counter()
        register(fp)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def bench_growth(sizes: list[int], rng) -> list[tuple[str, str]]:
    space = synthetic_space(DIM, BINS)
    rows = []
    pool = [realistic_fingerprint(rng, space, f"s{i:06d}", 1000) for i in range(200)]
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            # 200 distinct fingerprints, the rest copies under new ids: writing costs the same
            stored = [dataclasses.replace(pool[i % 200], task_id=f"s{i:06d}")
                      for i in range(size)]
            new = [realistic_fingerprint(rng, space, f"new-{i}", 1000) for i in range(REPEATS)]
            old = DirectoryLayout(Path(tmp) / "directory")
            old.prefill(stored, [task_row(fp.task_id) for fp in stored])
            old_p50, old_p95 = timed(old.register, new)

            store = Store(Path(tmp) / "delta")
            store.put_space(space)
            t0 = time.perf_counter()
            for start in range(0, size, 1000):
                store.put_fingerprints(stored[start:start + 1000])
                store.upsert("tasks", [task_row(fp.task_id) for fp in stored[start:start + 1000]])
            prefill_s = time.perf_counter() - t0
            feed = FingerprintFeed(store, space.space_id)
            t0 = time.perf_counter()
            feed.refresh()
            load_s = time.perf_counter() - t0

            new_p50, new_p95 = timed(lambda fp, store=store: register(store, fp), new)
            t0 = time.perf_counter()
            changes = feed.refresh()
            follow_ms = (time.perf_counter() - t0) * 1e3
            line = (f"directory layout p50/p95 {old_p50:.1f}/{old_p95:.1f} ms; Delta store "
                    f"{new_p50:.1f}/{new_p95:.1f} ms; an index catches up with {REPEATS} "
                    f"registrations reading {changes.files_read} files in {follow_ms:.0f} ms "
                    f"(a cold load of all {size:,}: {load_s:.1f} s; bulk prefill "
                    f"{prefill_s:.1f} s)")
            print(f"{size:,} stored tasks: {line}", flush=True)
            rows.append((f"registration (fingerprint + task row) into {size:,} stored tasks",
                         line))
    return rows


def bench_versions(commits: int, rng) -> list[tuple[str, str]]:
    """Cost against the log's length: every commit adds a log entry (checkpoints every 100)."""
    space = synthetic_space(DIM, BINS)
    fp = realistic_fingerprint(rng, space, "x", 1000)
    marks = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "delta")
        store.put_space(space)
        times = []
        for i in range(commits):
            t0 = time.perf_counter()
            store.put_fingerprint(dataclasses.replace(fp, task_id=f"v{i:05d}"))
            times.append((time.perf_counter() - t0) * 1e3)
            if i + 1 in (100, commits // 2, commits):
                marks[i + 1] = float(np.median(times[-50:]))
        t0 = time.perf_counter()
        fresh = Store(Path(tmp) / "delta")
        fresh.fingerprint_version()
        open_ms = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        for _ in range(1000):  # what every query of the cloud pays to know it is up to date
            fresh.fingerprint_version()
        check_us = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        for _ in range(100):
            fresh.tables.table("fingerprints")  # reading the log instead
        read_log_ms = (time.perf_counter() - t0) * 10
    line = ", ".join(f"{n:,} commits: {ms:.1f} ms" for n, ms in marks.items())
    return [(f"one append by log length (median of the last 50), {commits:,} commits",
             f"{line}; opening the table after {commits:,} commits: {open_ms:.0f} ms; "
             f"is-it-up-to-date check per query: {check_us:.0f} µs (reading the log instead: "
             f"{read_log_ms:.1f} ms)")]


WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import numpy as np
from bench.bench_core import realistic_fingerprint, synthetic_space
from rayfp.store.store import Store
writer, count, store_root, go = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
space = synthetic_space({dim}, {bins})
store = Store(store_root)
fps = [realistic_fingerprint(np.random.default_rng([writer, j]), space, f"w{{writer}}-{{j}}", 1000)
       for j in range(count)]
while not go.exists():
    time.sleep(0.005)
for fp in fps:
    store.put_fingerprint(fp)
"""


def bench_writers(writers: int, count: int) -> list[tuple[str, str]]:
    space = synthetic_space(DIM, BINS)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "delta")
        store.put_space(space)
        script = Path(tmp) / "writer.py"
        script.write_text(WRITER.format(root=str(Path(__file__).parents[1]), dim=DIM, bins=BINS))
        go = Path(tmp) / "go"
        procs = [subprocess.Popen([sys.executable, str(script), str(i), str(count),
                                   str(store.root), str(go)]) for i in range(writers)]
        time.sleep(8.0)
        t0 = time.perf_counter()
        go.touch()
        codes = [p.wait() for p in procs]
        seconds = time.perf_counter() - t0
        stored = Store(store.root).fingerprints(space.space_id)
        versions = store.fingerprint_version()
    ok = codes == [0] * writers and len(stored) == writers * count
    line = (f"{writers * count} fingerprints in {seconds:.1f} s ({writers * count / seconds:.0f} "
            f"commits/s on 2 cores); stored {len(stored)}, distinct "
            f"{len({fp.task_id for fp in stored})}, table version {versions}; nothing lost: {ok}")
    print(line, flush=True)
    return [(f"{writers} processes writing {count} fingerprints each at once", line)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10_000])
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = bench_growth(args.sizes, rng)
    rows += bench_versions(args.commits, rng)
    print(rows[-1], flush=True)
    rows += bench_writers(args.writers, 25)
    if not args.no_write:
        write_section(rows, TITLE, "python -m bench.bench_store")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
