"""`/v1/recommend` with the paper's knowledge: latency of the learned ranking against distance
alone, over HTTP. BENCHMARKS.md's "Recommendations: learned ranking latency" section.

Starts `rayfp serve` (direct ingress, as a site would) on a store holding the paper's 71 tasks,
213 policies and 15,180 measured transfers (`rayfp import-paper`), then asks for pretraining
and augmentation candidates of every development target, one request at a time: first once
(the model is fitted on the first learned request), then REPEATS rounds timed. Also the time
to refit the model after one reported outcome.

    python -m bench.bench_recommend [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.bench_core import machine
from bench.bench_serve import free_port
from bench.sections import replace_section

ROOT = Path(__file__).resolve().parents[1]
TITLE = "Recommendations: learned ranking latency (15,180 outcomes)"
TOKEN = "bench"


def post(url: str, payload: dict, token: str | None = None) -> tuple[float, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers)
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        body = json.loads(response.read())
    return time.perf_counter() - started, body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    from rayfp.evaluate import PaperData, Protocol

    targets = Protocol(PaperData(), "development").targets()
    rayfp = ROOT / ".venv" / "bin" / "rayfp"
    work = Path(tempfile.mkdtemp(prefix="bench-recommend-"))
    store = work / "cloud"
    subprocess.run([rayfp, "import-paper", "--store", str(store)], check=True,
                   capture_output=True)
    port = free_port()
    server = subprocess.Popen([rayfp, "serve", "--store", str(store), "--port", str(port),
                               "--token", TOKEN], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v1/health", timeout=2):
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("the cloud did not start") from None
                time.sleep(1)
        kinds = ["pretraining", "augmentation"]
        first, _ = post(f"{url}/v1/recommend", {"task_id": targets[0], "kinds": kinds})
        times: dict[str, list[float]] = {"learned": [], "distance": []}
        for _ in range(args.repeats):
            for rank in times:
                for target in targets:
                    elapsed, answer = post(f"{url}/v1/recommend",
                                           {"task_id": target, "kinds": kinds, "rank": rank})
                    assert answer["recommendations"]["pretraining"], target
                    times[rank].append(elapsed)
        post(f"{url}/v1/tasks/{targets[1]}/outcomes",
             {"scenario": "pretraining", "source": targets[2], "metric": "AUROC",
              "baseline": [0.6, 0.6, 0.6], "score": [0.7, 0.7, 0.7]}, token=TOKEN)
        refit, _ = post(f"{url}/v1/recommend", {"task_id": targets[0], "kinds": kinds})
    finally:
        server.terminate()
        server.wait(30)
        subprocess.run([ROOT / ".venv" / "bin" / "ray", "stop", "--force"],
                       capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    def row(rank: str) -> str:
        values = sorted(times[rank])
        p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
        return (f"| {rank} | {len(values)} | {statistics.median(values) * 1e3:.1f} ms | "
                f"{p99 * 1e3:.1f} ms |")

    lines = [f"## {TITLE}", "", f"Machine: {machine()}  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
             "Command: `python -m bench.bench_recommend`", "",
             f"`POST /v1/recommend` by task id for each of the {len(targets)} development "
             f"targets, kinds pretraining + augmentation, k = 3, one request at a time over "
             f"HTTP (direct ingress), {args.repeats} rounds:", "",
             "| rank | requests | p50 | p99 |", "|---|---|---|---|", row("learned"),
             row("distance"), "",
             f"The first learned request fits the model (all 15,180 outcomes, α per scenario): "
             f"{first * 1e3:.0f} ms. After a reported outcome, the next request refits: "
             f"{refit * 1e3:.0f} ms. Every other request reuses the model in memory.", ""]
    section = "\n".join(lines) + "\n"
    print(section)
    replace_section(TITLE, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
