"""What each install costs: the light client against the full setup. BENCHMARKS.md's "Install
sizes and the light client" section.

Builds a fresh venv with `pip install <checkout>` (no extras: the light client) and reports
its size and install time beside the repository's full `.venv` (`rayfp[dev]`: every extra and
the test tools). Then it starts a knowledge cloud from the full venv (`rayfp serve`, the paper's
tasks imported) and times the light client's commands against it, each a fresh process as a
user runs it: `rayfp --help`, `rayfp query` and `rayfp recommend` (median of 5), plus the
import time of the query path (`python -X importtime`).

    python -m bench.bench_install [--light /tmp/rayfp-light] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.bench_core import machine
from bench.sections import replace_section

ROOT = Path(__file__).resolve().parents[1]
TITLE = "Install sizes and the light client"


def size_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[0])


def timed(argv: list[str], runs: int = 5) -> float:
    """Median wall seconds of a fresh process (it must succeed)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def import_ms(python: Path, module: str) -> float:
    """Cumulative import time of ``module`` (python -X importtime), in ms."""
    out = subprocess.run([str(python), "-X", "importtime", "-c", f"import {module}"],
                         capture_output=True, text=True, check=True)
    last = [line for line in out.stderr.splitlines() if line.rstrip().endswith(f"| {module}")]
    return int(last[-1].split("|")[1]) / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--light", default=str(Path(tempfile.gettempdir()) / "rayfp-light"))
    parser.add_argument("--reuse", action="store_true", help="keep an existing light venv")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    light = Path(args.light)
    full = ROOT / ".venv"

    install_s = None
    if not (args.reuse and (light / "bin" / "rayfp").exists()):
        shutil.rmtree(light, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(light)], check=True)
        started = time.perf_counter()
        subprocess.run([str(light / "bin" / "pip"), "install", "-q", str(ROOT)], check=True)
        install_s = time.perf_counter() - started
    print(f"light venv {light}: {size_mb(light):.0f} MB", flush=True)
    dists = subprocess.run([str(light / "bin" / "pip"), "list", "--format", "json"],
                           capture_output=True, text=True, check=True)
    names = sorted(d["name"].lower() for d in json.loads(dists.stdout))
    heavy = [n for n in ("torch", "ray", "numba", "matplotlib", "pydicom", "fastapi")
             if n in names]

    work = Path(tempfile.mkdtemp(prefix="bench-install-"))
    store = work / "cloud"
    subprocess.run([str(full / "bin" / "rayfp"), "import-paper", "--store", str(store)],
                   check=True, capture_output=True)
    server = subprocess.Popen([str(full / "bin" / "rayfp"), "serve", "--store", str(store),
                               "--port", str(args.port), "--token", "bench"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{args.port}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v1/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("the cloud did not start")
            time.sleep(1)
        rayfp = str(light / "bin" / "rayfp")
        help_s = timed([rayfp, "--help"])
        query_s = timed([rayfp, "query", "--server", url, "--task-id", "mura_xr_wrist"])
        recommend_s = timed([rayfp, "recommend", "--server", url, "--task-id", "mura_xr_wrist",
                             "--kinds", "augmentation"])
    finally:
        server.terminate()
        server.wait(30)
        subprocess.run([str(full / "bin" / "ray"), "stop", "--force"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    cloud_ms = import_ms(light / "bin" / "python", "rayfp.cli.cloud")
    client_ms = import_ms(light / "bin" / "python", "rayfp.cloud.client")

    full_mb, light_mb = size_mb(full), size_mb(light)
    lines = [f"## {TITLE}", "", f"Machine: {machine()}  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
             "Command: `python -m bench.bench_install`", "",
             "| install | venv size | what it can do |", "|---|---|---|",
             f"| `pip install rayfp` (light client) | **{light_mb:,.0f} MB**"
             + (f", installed in {install_s:.0f} s from PyPI" if install_s else "")
             + " | query, recommend, register, send parts, show, compare, nearest, evaluate, "
               "import-paper |",
             f"| `rayfp[dev]` (scripts/setup.sh: every extra + test tools) | {full_mb:,.0f} MB | "
             "everything |", "",
             f"The light venv holds {len(names)} distributions, none of "
             f"torch, Ray, numba, matplotlib, pydicom or FastAPI"
             + (f" (found: {heavy})" if heavy else "") + ".", "",
             "The light client against a local cloud (the paper's 71 tasks), each command a fresh "
             "process, median of 5:", "",
             "| command | wall time |", "|---|---|",
             f"| `rayfp --help` | {help_s * 1000:.0f} ms |",
             f"| `rayfp query --server URL --task-id mura_xr_wrist` | {query_s * 1000:.0f} ms |",
             f"| `rayfp recommend ... --kinds augmentation` | {recommend_s * 1000:.0f} ms |",
             f"| import of `rayfp.cli.cloud` (the commands' parsers; -X importtime) | "
             f"{cloud_ms:.0f} ms |",
             f"| import of `rayfp.cloud.client` (what a query loads: numpy, the wire format) | "
             f"{client_ms:.0f} ms |", ""]
    section = "\n".join(lines) + "\n"
    print(section)
    replace_section(TITLE, section)
    if heavy:
        print(f"the light client installed {heavy}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

