"""The demo's wall time after installation, per extraction engine, side by side in one run.

    python -m bench.bench_demo [--engines onnxruntime torch] [--samples N] [--no-write]
                               [--keep FOLDER]

Runs ``rayfp demo --quiet`` (what scripts/demo.sh runs once .venv exists) in a fresh process
per engine, records its wall time and peak memory, and checks that every engine gives each
task the same nearest neighbour. Issue 27's goal: under 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_core import ROOT, write_section
from rayfp.search import cpu

TITLE = "Demo wall time"
# Run in its own interpreter, so that ru_maxrss of its children is the demo's alone.
_PEAK = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
         "sys.exit(done.returncode)")


def rayfp() -> str:
    """The installed ``rayfp`` next to this interpreter (the repository's .venv)."""
    here = Path(sys.executable).with_name("rayfp")
    return str(here if here.exists() else ROOT / ".venv" / "bin" / "rayfp")


def run_demo(engine: str, samples: int | None, out: Path) -> dict:
    command = [rayfp(), "demo", "--out", str(out), "--quiet", "--engine", engine]
    if samples:
        command += ["--samples", str(samples)]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PEAK, *command], capture_output=True,
                          text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"rayfp demo --engine {engine} failed:\n{done.stderr[-3000:]}")
    nearest = json.loads((out / "nearest.json").read_text())["nearest"]
    return {"wall": wall, "peak_gb": int(done.stdout.split()[-1]) * 1024 / 1e9,
            "nearest": {row["task"]: row["nearest"] for row in nearest},
            "same": sum(row["same"] for row in nearest), "tasks": len(nearest)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["onnxruntime", "torch"],
                        choices=["onnxruntime", "torch"])
    parser.add_argument("--samples", type=int, help="views per task (default: the demo's)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--keep", help="leave each engine's demo output in FOLDER/ENGINE "
                                       "(tests/cli/test_demo.py checks it)")
    args = parser.parse_args(argv)
    runs, rows = {}, []
    with tempfile.TemporaryDirectory() as work:
        for engine in args.engines:
            runs[engine] = r = run_demo(engine, args.samples, Path(args.keep or work) / engine)
            rows.append((f"rayfp demo --engine {engine}",
                         f"{r['wall']:.0f} s wall, {r['peak_gb']:.1f} GB peak RSS; "
                         f"{r['same']}/{r['tasks']} same-modality nearest neighbours"))
            print(rows[-1], flush=True)
    first, *others = args.engines
    for engine in others:
        agree = sum(runs[engine]["nearest"][t] == n for t, n in runs[first]["nearest"].items())
        rows.append((f"nearest neighbours, {engine} against {first}",
                     f"{agree}/{len(runs[first]['nearest'])} identical"))
        print(rows[-1], flush=True)
    met = [engine for engine, r in runs.items() if r["wall"] <= 300]
    rows.append(("issue 27 goal: the demo under 5 minutes after installation",
                 f"met with {', '.join(met)}" if met else "not met"))
    if not args.no_write:
        write_section(rows, f"{TITLE} ({cpu.describe()['torch_capability']})",
                      "python -m bench.bench_demo --engines " + " ".join(args.engines)
                      + (f" --samples {args.samples}" if args.samples else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
