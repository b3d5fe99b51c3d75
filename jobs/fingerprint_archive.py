"""Fingerprint a whole archive on a Ray cluster (or local Ray) into a store.

    ray job submit --working-dir . -- python jobs/fingerprint_archive.py ROOT_OR_MANIFEST \\
        --store STORE --space SPACE_ID            # or: --backbone NAME --reference-tasks A B
    python jobs/fingerprint_archive.py ROOT --store STORE --backbone efficientnet_lite0 ...

ROOT has one sub-folder per task (searched recursively); a manifest is a CSV/Parquet with columns
path and optionally task_id (without it the manifest is one task named after its file) and
modality. Re-running skips tasks already fingerprinted in the
space (use --overwrite to recompute). Unreadable files go to the store's `failures` table.

A site's share of tasks pooled over several sites: --site-parts plans.json
({"task": {"part": k, "image_counts": [M_1, ..., M_K]}}) writes those tasks as parts to
--part-out (send them with `rayfp send-part`, or merge with `rayfp merge`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import ray

from rayfp import defaults
from rayfp.cli.flags import (
    add_engine_flag,
    add_extraction_flags,
    add_part_flags,
    add_privacy_flags,
    add_ray_flags,
    add_sampling_flags,
    privacy_spec,
)
from rayfp.cluster.pipeline import (
    ArchiveJobConfig,
    fingerprint_archive,
    new_job_id,
    space_for_archive,
    take_archive_inventory,
)
from rayfp.core.parts import read_site_parts
from rayfp.errors import RayfpError
from rayfp.io.sources import list_archive, with_decoding
from rayfp.store.store import Store


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("archive", help="root folder (one sub-folder per task) or manifest .csv/.parquet")
    p.add_argument("--store", required=True,
                   help="the store: a directory on a shared filesystem, or s3://bucket/prefix")
    p.add_argument("--space", help="existing space id; omit to create one (--backbone, --bins)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="when creating a space")
    p.add_argument("--bins", type=int, default=defaults.BINS, help="when creating a space")
    p.add_argument("--reference-tasks", nargs="*", help="tasks that define the edges of a new "
                   "space (default: --reference-fraction of the tasks)")
    p.add_argument("--reference-fraction", type=float, default=1.0)
    p.add_argument("--edge-samples", type=int, default=defaults.EDGE_SAMPLES,
                   help="views per reference task")
    add_engine_flag(p)
    add_sampling_flags(p)
    add_extraction_flags(p)
    add_ray_flags(p)
    p.add_argument("--site-parts", metavar="JSON",
                   help='tasks pooled over sites: {"task": {"part": k, "image_counts": '
                        '[M1, ..., MK]}}; those tasks are written as parts, not fingerprints')
    add_part_flags(p)
    add_privacy_flags(p)
    p.add_argument("--tasks", nargs="*", help="only these task ids")
    p.add_argument("--overwrite", action="store_true", help="recompute existing fingerprints")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    log = logging.getLogger("rayfp.job")
    try:
        files = with_decoding(list_archive(args.archive), window=args.window,
                              axes=args.slice_axes)
        if args.tasks:
            files = [f for f in files if f.task_id in set(args.tasks)]
        privacy = privacy_spec(args)
        site_parts = read_site_parts(args.site_parts, samples=args.samples, seed=args.seed,
                                     plan=privacy.plan) if args.site_parts else {}
        config = ArchiveJobConfig(
            store=args.store, samples=args.samples, seed=args.seed,
            frames_per_batch=args.frames_per_call, workers=args.workers,
            gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
            threads=args.threads,
            weights=args.weights, min_images=args.min_images, overwrite=args.overwrite,
            privacy=privacy, site_parts=site_parts, parts_out=args.part_out or "",
            noise_share=args.noise_share,
            job_id=os.environ.get("RAY_JOB_ID") or new_job_id(),
            source=args.archive if "://" in args.archive else os.path.abspath(args.archive))
        ray.init(address=args.address, log_to_driver=True)
        log.info("%d files in %d tasks; inventory pass", len(files),
                 len({f.task_id for f in files}))
        inventories = take_archive_inventory(files, unit=privacy.unit)
        store = Store(args.store)
        if args.space:
            space = store.get_space(args.space)
        else:
            space = space_for_archive(inventories, config, backbone=args.backbone,
                                      bins=args.bins, samples=args.edge_samples,
                                      reference=args.reference_tasks,
                                      reference_fraction=args.reference_fraction,
                                      weights=args.weights, engine=args.engine,
                                      on_progress=log.info)
        log.info("space %s (%s, D=%d, B=%d)", space.space_id, space.backbone, space.dim,
                 space.bins)
        report = fingerprint_archive(inventories, space, config, on_progress=log.info)
    except RayfpError as exc:
        print(f"fingerprint_archive: error: {exc}", file=sys.stderr)
        return 2
    log.info("done: %d written, %d already present, %d below the image minimum, %d over the "
             "privacy budget, %d files failed, %d irregular DICOM series used (see the store's "
             "failures table), %.1f images/s", len(report.written),
             len(report.skipped_existing), len(report.too_few_images), len(report.over_budget),
             report.failures, report.series_problems, report.views_per_second)
    print(f"space {space.space_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
