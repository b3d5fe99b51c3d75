"""Defaults and names shared by the CLI, the Ray job and the service, in one torch-free place.

Importing this module costs nothing, so light commands (`rayfp --help`, `show`, `query`) can
show the defaults in their help without loading torch or Ray.
"""

from __future__ import annotations

SAMPLES = 10_000  # N augmented views per task (docs/design.md §1.2, the paper's default)
FAST_SAMPLES = 1_000  # a legitimate fast mode: rankings are nearly flat from 100 to 10,000
# How a new space's features are computed on CPUs, recorded in the space (preprocessing
# "engine") so every site computes the same: "onnxruntime" (the backbone exported to ONNX,
# 2.2-5.3x the views/s of eager torch on 2 cores, features within 1.5e-6 relative; BENCHMARKS.md
# "CPU extraction engines") or "torch". A space without the key is "torch" (made before).
CPU_ENGINE = "onnxruntime"
EDGE_SAMPLES = FAST_SAMPLES  # views per reference task when a space's edges are computed
BINS = 100  # bins per dimension: bKLD(small); the paper's bKLD(large) uses 1,000
MIN_IMAGES = 50  # docs/design.md §5: the privacy floor of distinct images per task
SEED = 0
BATCH_SIZE = 64  # views per forward call on the local path; does not change the result
METRIC = "bkld-small"
K = 3  # sources per recommendation (the paper's k-shot protocol)
NEAREST_K = 5  # rows `rayfp nearest` prints
MAX_REQUEST_BYTES = 16 * 2**20  # the service refuses larger bodies with 413
# What the service accepts from anyone: bounds checked before any work (issue: one anonymous
# client must not be able to freeze the cloud).
MAX_SAMPLES = 1_000_000  # N of one fingerprint or task plan (the paper uses 10,000)
MAX_IMAGES = 100_000_000  # M of one task
MAX_PARTS = 1_000  # sites of one pooled task
MAX_ID_LENGTH = 200  # task and space ids
BODY_TIMEOUT_S = 10.0  # a request body not complete after this gets 408
# How long OpenMP workers (GNU libgomp: numba's thread-safe layer, torch's) spin for more work
# before they sleep, in the processes that rank (Serve replicas, index shards). libgomp's
# default, 300,000 pauses, kept a worker spinning ~9 ms after every query on the 2-core EPYC: a
# whole core taken from the event loop and the clients for longer than a query lasts. 10,000
# (~0.3 ms) alternated against it in one run (bench_ingress --env, 1,000 sources, 3 runs each):
# HTTP p99 9.4-13.0 ms against 15.0-21.1. Not set elsewhere: torch's convolutions ran ~7%
# slower with it. libgomp reads it once, when it loads (rayfp.search.cpu.openmp_spin).
OMP_SPINCOUNT = 10_000

# What a knowledge cloud records per task (docs/design.md §2 `components`).
COMPONENT_KINDS = ("architecture", "augmentation", "pretraining", "cotraining")

# Differential privacy of what leaves a site (docs/design.md §5; numbers behind them in docs/privacy.md).
DP_EPSILON = 1.0
DP_DELTA = 1e-6
DP_COUNT_SHARE = 0.9  # with a separately noised sum: the counts' share of the budget (mu^2)
DP_RELEASE_BINS = 10  # noisy counts over 10 coarse bins, spread back over the space's B
MAX_EPSILON = 8.0  # the service refuses fingerprints with a larger epsilon (or none)
# How HTTP reaches the knowledge cloud (rayfp.cloud.app.serve_environment); the first is
# `rayfp serve`'s default.
INGRESS = ("direct", "haproxy", "proxy")
