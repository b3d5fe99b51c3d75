"""rayfp's benchmarks (python -m bench.NAME). rayfp comes first: importing it sets OpenMP's
spin (rayfp.defaults.OMP_SPINCOUNT) before torch, imported by most of them, loads libgomp."""

import rayfp  # noqa: F401
