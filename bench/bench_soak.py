"""A mixed soak of the knowledge cloud: queries and writes for minutes, does the service drift?

    python -m bench.bench_soak [--sources 1000] [--seconds 600] [--clients 8] [--write-every 0.5]

A real Ray Serve deployment (direct ingress, the default policy: private fingerprints only)
with --sources private synthetic tasks (D = 512, B = 100). --clients - 1 threads query
(POST /v1/nearest, k = 5) as fast as they can; one thread writes every --write-every seconds:
it re-registers a known task (a new release of it), records a component, and every tenth
write registers a new task. Throughput and p50 latency per 30 s window, and the replica's
resident memory, are printed; BENCHMARKS.md gets the first and the last window side by side,
and memory growth per write against what the index itself grows by per new task.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from bench.bench_core import machine, realistic_fingerprint, synthetic_space
from bench.sections import replace_section
from rayfp.cloud.knowledge import KnowledgeBase
from rayfp.cloud.wire import encode_fingerprint
from rayfp.core.fingerprint import Fingerprint, PartialCounts
from rayfp.privacy.mechanism import PrivacySpec, release
from rayfp.store.store import Store

WINDOW_S = 30.0
TOKEN = "soak"


def private(fp: Fingerprint, seed: int) -> Fingerprint:
    partial = PartialCounts(fp.space_id, fp.counts, fp.feature_sum, fp.n_samples)
    released, record = release(partial, _SPACE[0], task_id=fp.task_id, n_images=fp.n_images,
                               spec=PrivacySpec(epsilon=1.0, seed=seed), min_images=1)
    return Fingerprint(task_id=fp.task_id, space_id=fp.space_id, counts=released.counts,
                       feature_sum=released.feature_sum, n_samples=fp.n_samples,
                       n_images=fp.n_images, privacy=record)


_SPACE: list = []


def replica_rss_mb() -> float:
    """Resident memory of the KnowledgeCloud replica process (MB), from /proc."""
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"KnowledgeCloud" not in cmdline:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def request(url: str, payload: dict, token: str | None = None) -> float:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(payload).encode()
    started = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers),
                                timeout=120) as response:
        response.read()
    return (time.perf_counter() - started) * 1e3


def heap_probe(sources: int, writes: int) -> int:
    """The same writes in this process, without Serve: Python heap growth per write (by
    tracemalloc, after the first 100 writes), next to what the index itself grows by. Resident
    memory is a poor gauge of a leak here: the store's compaction and Arrow allocate hundreds
    of MB for a moment, and the allocator keeps some of it."""
    import gc
    import tempfile
    import tracemalloc

    rng = np.random.default_rng(0)
    space = synthetic_space(512, 100)
    _SPACE.append(space)
    store = Store(Path(tempfile.mkdtemp(prefix="rayfp-heap-")) / "store")
    store.put_space(space)
    kb = KnowledgeBase(store, max_epsilon=8.0, min_images=1, hubness_queries=0)
    store.put_fingerprints([private(realistic_fingerprint(rng, space, f"task-{i}", 1000), i)
                            for i in range(sources)])
    query = private(realistic_fingerprint(rng, space, "query", 1000), 10**6)
    kb.nearest_many([(query, 5, "bkld-small")])
    tracemalloc.start()
    new_tasks, before = 0, 0
    for n in range(writes):
        task_id = f"written-{n}" if n % 10 == 9 else f"task-{n % sources}"
        fp = private(realistic_fingerprint(rng, space, task_id, 1000), 2 * 10**6 + n)
        kb.register_task({"task_id": task_id}, fp)
        kb.record_component({"task_id": task_id, "kind": "augmentation", "value": f"p{n}",
                             "score": 0.5})
        kb.nearest_many([(query, 5, "bkld-small")])  # the index follows every write
        if n == 99:
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
        elif n > 99:
            new_tasks += n % 10 == 9
    gc.collect()
    grown = (tracemalloc.get_traced_memory()[0] - before) / (writes - 100)
    index = space.dim * space.bins * new_tasks / (writes - 100)
    rows = [("writes measured (after 100 to warm up)", str(writes - 100)),
            ("Python heap growth per write (tracemalloc)", f"{grown / 1024:.1f} KB"),
            ("the index's own growth per write (uint8 counts of the new tasks)",
             f"{index / 1024:.1f} KB"),
            ("ratio", f"{grown / index:.2f}")]
    for what, result in rows:
        print(f"{what}: {result}")
    lines = ["## Knowledge cloud: heap growth per write", "", f"Machine: {machine()}  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
             f"Command: `python -m bench.bench_soak --heap --sources {sources} --writes "
             f"{writes}` (the soak's writes in one process, no Serve)", "",
             "| what | result |", "|---|---|"] + [f"| {w} | {r} |" for w, r in rows]
    replace_section("Knowledge cloud: heap growth per write", "\n".join(lines) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--write-every", type=float, default=0.5)
    parser.add_argument("--no-write", action="store_true", help="a read-only soak, to compare")
    parser.add_argument("--heap", action="store_true",
                        help="instead: heap growth per write in one process (tracemalloc)")
    parser.add_argument("--writes", type=int, default=600, help="with --heap")
    args = parser.parse_args(argv)
    if args.heap:
        return heap_probe(args.sources, args.writes)

    import tempfile

    from ray import serve

    from rayfp.cloud.app import build_app, start_local_serve

    rng = np.random.default_rng(0)
    space = synthetic_space(512, 100)
    _SPACE.append(space)
    folder = Path(tempfile.mkdtemp(prefix="rayfp-soak-"))
    store = Store(folder / "store")
    store.put_space(space)
    kb = KnowledgeBase(store, max_epsilon=8.0, min_images=1)
    sources = [private(realistic_fingerprint(rng, space, f"task-{i}", 1000), i)
               for i in range(args.sources)]
    store.put_fingerprints(sources)
    for fp in sources[:1]:
        kb.register_task({"modality": "synthetic"}, fp)
    queries = [json.dumps({"fingerprint": encode_fingerprint(private(realistic_fingerprint(
        rng, space, "query", 1000), 10**6 + i)), "k": 5}) for i in range(32)]
    port = 18000 + int(rng.integers(1000))
    start_local_serve("127.0.0.1", port, num_cpus=2)
    serve.run(build_app({"store": str(store.root), "token": TOKEN, "min_images": 1}),
              name="rayfp", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    for body in queries[:4]:  # warm up
        request(f"{url}/v1/nearest", json.loads(body))

    stop = time.perf_counter() + args.seconds
    latencies: list[tuple[float, float]] = []  # (when, ms)
    writes: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []

    def querier(i: int) -> None:
        n = i
        while time.perf_counter() < stop:
            try:
                ms = request(f"{url}/v1/nearest", json.loads(queries[n % len(queries)]))
                with lock:
                    latencies.append((time.perf_counter(), ms))
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(repr(exc)[:200])
            n += 1

    def writer() -> None:
        n = 0
        while time.perf_counter() < stop:
            started = time.perf_counter()
            new = n % 10 == 9
            task_id = f"written-{n}" if new else f"task-{n % args.sources}"
            fp = private(realistic_fingerprint(rng, space, task_id, 1000), 2 * 10**6 + n)
            try:
                request(f"{url}/v1/tasks", {"task_id": task_id,
                                            "fingerprint": encode_fingerprint(fp)}, TOKEN)
                request(f"{url}/v1/tasks/{task_id}/components",
                        {"kind": "augmentation", "value": f"policy-{n}", "score": 0.5}, TOKEN)
                with lock:
                    writes.append(time.perf_counter())
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc)[:200])
            n += 1
            time.sleep(max(0.0, args.write_every - (time.perf_counter() - started)))

    threads = [threading.Thread(target=querier, args=(i,))
               for i in range(args.clients - (0 if args.no_write else 1))]
    if not args.no_write:
        threads.append(threading.Thread(target=writer))
    began = time.perf_counter()
    rss = [(0.0, replica_rss_mb(), 0)]
    for t in threads:
        t.start()
    windows = []
    while time.perf_counter() < stop:
        time.sleep(min(WINDOW_S, max(0.0, stop - time.perf_counter())))
        now = time.perf_counter()
        with lock:
            inside = [ms for when, ms in latencies if now - WINDOW_S <= when <= now]
            n_writes = len(writes)
        rss.append((now - began, replica_rss_mb(), n_writes))
        windows.append((now - began, len(inside) / WINDOW_S,
                        float(np.percentile(inside, 50)) if inside else float("nan")))
        print(f"{now - began:6.0f} s: {windows[-1][1]:6.1f} queries/s, p50 "
              f"{windows[-1][2]:6.1f} ms, {n_writes} writes, replica {rss[-1][1]:.0f} MB",
              flush=True)
    for t in threads:
        t.join()
    serve.shutdown()
    first, last = windows[0], windows[-1]
    grown = rss[-1][1] - rss[1][1]
    n_writes = max(1, rss[-1][2] - rss[1][2])
    index_per_task_kb = space.dim * space.bins / 1024  # uint8 counts: one byte per bin
    kind = "read-only" if args.no_write else f"mixed, a write every {args.write_every:g} s"
    rows = [("first 30 s window", f"{first[1]:.1f} queries/s, p50 {first[2]:.1f} ms"),
            ("last 30 s window", f"{last[1]:.1f} queries/s, p50 {last[2]:.1f} ms"),
            ("throughput, last / first", f"{last[1] / first[1]:.2f}"),
            ("p50, last / first", f"{last[2] / first[2]:.2f}"),
            ("writes (re-registrations + components; every tenth a new task)",
             f"{rss[-1][2]}"),
            ("replica memory, after the first window -> end",
             f"{rss[1][1]:.0f} -> {rss[-1][1]:.0f} MB"),
            ("replica resident memory, (end - first window) / writes",
             f"{grown * 1024 / n_writes:.1f} KB: resident memory swings by hundreds of MB with "
             "the store's compaction (see the windows above), so the heap growth below is the "
             f"leak gauge (the index grows {index_per_task_kb:.0f} KB per new task)"
             if not args.no_write else "-"),
            ("errors", str(len(errors)) + (f" (first: {errors[0]})" if errors else ""))]
    for what, result in rows:
        print(f"{what}: {result}")
    lines = [f"## Knowledge cloud soak ({kind})", "", f"Machine: {machine()}  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
             f"Command: `python -m bench.bench_soak --sources {args.sources} --seconds "
             f"{args.seconds:g} --clients {args.clients} --write-every {args.write_every:g}"
             f"{' --no-write' if args.no_write else ''}`", "",
             "| what | result |", "|---|---|"] + [f"| {w} | {r} |" for w, r in rows]
    replace_section(f"Knowledge cloud soak ({kind})", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
