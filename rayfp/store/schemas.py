"""Explicit pyarrow schemas of the store's tables (docs/design.md §2). Column names are constants here.

Every table carries ``schema_version``; a reader refuses a newer version than it knows.
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa

from rayfp import defaults

# 2: a fingerprint's `privacy` JSON records its sampling plan and, for a differentially private
#    release, the mechanism (`dp`: ε, δ, views per image, noise). Version 1 rows read as exact
#    counts (no `dp`), which they are.
# 3: the store is Delta Lake tables (rayfp.store.delta): rows carry their write stamp
#    (written_at_ns, write_id), fingerprints their task_key, and counts are int32.
SCHEMA_VERSION = 3

SPACE_ID = "space_id"
TASK_ID = "task_id"
COUNTS = "counts"
FEATURE_SUM = "feature_sum"

SPACES = pa.schema([
    (SPACE_ID, pa.string()),
    ("backbone", pa.string()),
    ("weights_sha256", pa.string()),
    ("preprocessing", pa.string()),  # canonical JSON
    ("dim", pa.int32()),
    ("bins", pa.int32()),
    ("edges_lo", pa.list_(pa.float32())),
    ("edges_hi", pa.list_(pa.float32())),
    ("reference", pa.string()),
    ("created_at", pa.string()),
    ("schema_version", pa.int32()),
])

# space_id is the hive partition (fingerprints/space_id=<id>/...), so it is not a file column.
FINGERPRINTS = pa.schema([
    (TASK_ID, pa.string()),
    ("dim", pa.int32()),
    ("bins", pa.int32()),
    (COUNTS, pa.list_(pa.uint32())),  # D*B, dimension-major: index d * B + b
    (FEATURE_SUM, pa.list_(pa.float64())),
    ("n_samples", pa.int64()),
    ("n_images", pa.int64()),
    ("created_at", pa.string()),
    ("source", pa.string()),  # JSON: where the images came from (inputs, job id, site)
    ("privacy", pa.string()),  # JSON: min images, sampling plan, dp release (rayfp.privacy)
    ("schema_version", pa.int32()),
])

TASKS = pa.schema([
    (TASK_ID, pa.string()),
    ("name", pa.string()),
    ("modality", pa.string()),
    ("keywords", pa.list_(pa.string())),
    ("task_type", pa.string()),
    ("n_classes", pa.int64()),
    ("n_images", pa.int64()),
    ("owner", pa.string()),
    ("schema_version", pa.int32()),
])

COMPONENT_KINDS = defaults.COMPONENT_KINDS

COMPONENTS = pa.schema([
    (TASK_ID, pa.string()),
    ("kind", pa.string()),
    ("value", pa.string()),
    ("metric", pa.string()),
    ("score", pa.float64()),
    ("seed", pa.int64()),
    ("provenance", pa.string()),
    ("schema_version", pa.int32()),
])

TRANSFERS = pa.schema([
    ("scenario", pa.string()),
    ("metric", pa.string()),
    ("source", pa.string()),
    ("target", pa.string()),
    ("seed", pa.int64()),
    ("score", pa.float64()),
    ("schema_version", pa.int32()),
])

BASELINES = pa.schema([
    ("scenario", pa.string()),
    ("target", pa.string()),
    ("metric", pa.string()),
    ("seed", pa.int64()),
    ("score", pa.float64()),
    ("schema_version", pa.int32()),
])

# Files a job could not use: reported, never fatal (one row per task and path, newest wins).
FAILURES = pa.schema([
    (TASK_ID, pa.string()),
    ("path", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("job_id", pa.string()),
    ("created_at", pa.string()),
    ("schema_version", pa.int32()),
])

# A site's privacy ledger (rayfp.privacy.ledger): one row per release of a task's units, so
# that re-fingerprints, parts and replicates are composed and a budget can be kept.
RELEASES = pa.schema([
    (TASK_ID, pa.string()),
    ("release_id", pa.string()),
    ("kind", pa.string()),  # fingerprint | part | replicates
    (SPACE_ID, pa.string()),
    ("epsilon", pa.float64()),  # the release's own (ε, δ)
    ("delta", pa.float64()),
    ("noise_multiplier", pa.float64()),  # σ / sensitivity: what the accountant composes
    ("created_at", pa.string()),
    ("schema_version", pa.int32()),
])

# Distance matrices imported from elsewhere (the paper's released ones): for tasks without a
# fingerprint, nearest-task answers come from here, labelled by selector.
IMPORTED_DISTANCES = pa.schema([
    ("selector", pa.string()),
    ("source", pa.string()),
    ("target", pa.string()),
    ("distance", pa.float64()),
    ("provenance", pa.string()),
    ("schema_version", pa.int32()),
])


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """A small table kept as one Parquet file and upserted by ``key`` columns."""

    name: str
    schema: pa.Schema
    key: tuple[str, ...]


TABLES = {
    t.name: t for t in (
        TableSpec("tasks", TASKS, (TASK_ID,)),
        TableSpec("components", COMPONENTS, (TASK_ID, "kind", "value", "metric", "seed")),
        TableSpec("transfers", TRANSFERS, ("scenario", "metric", "source", "target", "seed")),
        TableSpec("baselines", BASELINES, ("scenario", "target", "metric", "seed")),
        TableSpec("failures", FAILURES, (TASK_ID, "path")),
        TableSpec("releases", RELEASES, (TASK_ID, "release_id")),
        TableSpec("imported_distances", IMPORTED_DISTANCES, ("selector", "source", "target")),
    )
}
