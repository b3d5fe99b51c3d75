"""Move tasks into a backbone's current space: recompute fingerprints whose newest version lives
in an older space (new weights, preprocessing or edges), from their recorded image source.

    python jobs/refingerprint.py --store STORE --backbone efficientnet_lite0 [--dry-run]
    ray job submit --working-dir . -- python jobs/refingerprint.py --store STORE --space ID

Safe on a schedule: tasks already in the target space are skipped, a second concurrent run exits
at once, and old fingerprints stay readable.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import sys
from pathlib import Path

from rayfp.cluster.refingerprint import current_space, files_for, plan_refingerprint
from rayfp.errors import RayfpError
from rayfp.store.store import Store


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--space", help="target space id")
    target.add_argument("--backbone", help="target = the newest space of this backbone")
    p.add_argument("--dry-run", action="store_true", help="list the work, change nothing")
    p.add_argument("--archive", help="an archive (one folder per task) holding the private "
                                     "tasks, whose stores keep no file locations")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=8, help="canonical frames per actor call")
    p.add_argument("--weights", help="backbone weights file of the target space")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS or a local Ray)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    log = logging.getLogger("rayfp.cluster.refingerprint")
    store = Store(args.store)
    try:
        target = store.get_space(args.space) if args.space else current_space(store, args.backbone)
        items = plan_refingerprint(store, target)
        print(f"target space {target.space_id} ({target.backbone}, B={target.bins}): "
              f"{len(items)} task(s) to re-fingerprint")
        for item in items:
            print("  " + item.describe())
        if args.dry_run or not items:
            return 0
        if store.object_store:  # no lock there: a second run only repeats work (its
            return _run(args, store, target, items, log)  # commits are as safe as the first's)
        Path(args.store).mkdir(parents=True, exist_ok=True)
        with open(Path(args.store) / ".refingerprint.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print("another re-fingerprint run holds the lock; nothing to do")
                return 0
            return _run(args, store, target, items, log)
    except RayfpError as exc:
        print(f"refingerprint: error: {exc}", file=sys.stderr)
        return 2


def _run(args, store, target, items, log) -> int:
    import ray

    from rayfp.cluster.pipeline import (
        ArchiveJobConfig,
        fingerprint_archive,
        new_job_id,
        take_archive_inventory,
    )

    ray.init(address=args.address)
    # Tasks sharing a recipe (samples, seed, minimum) run as one pipeline.
    groups: dict[tuple, list] = {}
    for item in items:
        groups.setdefault((item.samples, item.seed, item.min_images, item.privacy),
                          []).append(item)
    for (samples, seed, min_images, privacy), group in sorted(groups.items(),
                                                              key=lambda g: repr(g[0])):
        files = [f for item in group for f in files_for(item, archive=args.archive)]
        config = ArchiveJobConfig(
            store=args.store, samples=samples, seed=seed, min_images=min_images,
            privacy=privacy,
            frames_per_batch=args.batch_size, workers=args.workers,
            gpus_per_worker=args.gpus_per_worker, weights=args.weights,
            job_id=os.environ.get("RAY_JOB_ID") or new_job_id())
        report = fingerprint_archive(take_archive_inventory(files), target, config,
                                     on_progress=log.info,
                                     task_sources={i.task_id: i.source for i in group})
        log.info("%d re-fingerprinted into %s", len(report.written), target.space_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
