"""Benchmarks that cannot silently break: each runs here at a tiny size, in a copy of the
repository's bench/, docs/ and BENCHMARKS.md (so nothing here is rewritten), and fails the
suite if it errors. The numbers are not checked: benchmarks measure, tests assert."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Script -> the tiny arguments it runs with here.
TINY = {
    "bench_batches": ["--sources", "60", "--samples", "5000", "--no-write"],  # uint16 counts
    "bench_shards": ["--sources", "200", "--queries", "5", "--no-write"],
    "bench_store": ["--sizes", "10", "--commits", "3", "--writers", "2", "--no-write"],
    "bench_core": ["--quick"],
    "bench_serve": ["--sources", "20", "--queries", "10", "--no-write"],
    "bench_soak": ["--sources", "20", "--seconds", "8", "--clients", "2", "--no-write"],
    "bench_recommend": ["--repeats", "1"],
    "bench_evaluate": ["--quick"],
    # The extractor runs micro-batches of 16: fewer views would not be quicker. bf16: ~1 min
    # on AVX2.
    "bench_cpu": ["--views", "16", "--bf16-views", "0", "--repeats", "1", "--no-write"],
    "bench_privacy": ["attack", "--quick"],  # writes bench/results/ of the copy only
    "bench_confidence": ["cost", "--quick"],
    "bench_pictures": ["--sources", "30", "--repeats", "2", "--no-write"],
    "bench_engines": ["--views", "16", "--samples", "8", "--tasks", "3", "--repeats", "1",
                      "--no-write"],
    "bench_decode": ["--samples", "1000", "--repeats", "3", "--no-write"],
    "bench_build": ["--sources", "40", "--rounds", "1", "--no-write"],
    "bench_columns": ["--sources", "40", "--queries", "8", "--rounds", "1", "--no-write"],
    "bench_choose": ["--sources", "40", "--rounds", "1", "--samples", "10000", "--no-write"],
}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-repo")
    for name in ("bench", "docs"):
        shutil.copytree(REPO / name, root / name)
    shutil.copy(REPO / "BENCHMARKS.md", root / "BENCHMARKS.md")
    (root / ".venv").symlink_to(Path(sys.prefix))  # the scripts start `rayfp` from .venv
    return root


@pytest.mark.parametrize("script", sorted(TINY))
def test_the_benchmark_runs(sandbox, script):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-m", f"bench.{script}", *TINY[script]],
                         cwd=sandbox, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout[-2000:] + out.stderr[-3000:])
    assert out.stdout.strip()  # it printed what it measured


# Scripts another test runs whole: a second tiny run here would repeat it (the demo: ~85 s).
RUN_ELSEWHERE = {"bench_demo": "tests/cli/test_demo.py"}


def test_every_benchmark_is_listed_or_named_as_too_heavy():
    """A new bench script must join TINY (or be named here, with why it cannot be tiny yet)."""
    heavy = {"bench_dptest", "bench_volumes", "bench_pipeline", "bench_ingress",
             "bench_gpu_local", "bench_install"}
    scripts = {p.stem for p in (REPO / "bench").glob("bench_*.py")}
    listed = set(TINY) | heavy | set(RUN_ELSEWHERE)
    assert scripts == listed, scripts ^ listed
    for script, test in RUN_ELSEWHERE.items():  # that test really runs it
        assert f"bench.{script}" in (REPO / test).read_text(), (script, test)
