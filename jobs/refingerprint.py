"""Move tasks into a backbone's current space: recompute fingerprints whose newest version lives
in an older space (new weights, preprocessing or edges), from their recorded image source.

    python jobs/refingerprint.py --store STORE --backbone efficientnet_lite0 [--dry-run]
    ray job submit --working-dir . -- python jobs/refingerprint.py --store STORE --space ID

Safe on a schedule: tasks already in the target space are skipped, a second concurrent run exits
at once, and old fingerprints stay readable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from rayfp.cli.flags import add_extraction_flags, add_ray_flags
from rayfp.cluster.refingerprint import (
    current_space,
    plan_refingerprint,
    run_refingerprint,
    single_run,
)
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
    add_extraction_flags(p)
    add_ray_flags(p)
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
        with single_run(store) as alone:
            if not alone:
                print("another re-fingerprint run holds the lock; nothing to do")
                return 0
            import ray

            ray.init(address=args.address)
            config = dict(store=args.store, frames_per_batch=args.frames_per_call,
                          workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                          cpus_per_worker=args.cpus_per_worker, threads=args.threads,
                          weights=args.weights)
            if os.environ.get("RAY_JOB_ID"):
                config["job_id"] = os.environ["RAY_JOB_ID"]
            run_refingerprint(items, target, config, archive=args.archive,
                              on_progress=log.info)
        return 0
    except RayfpError as exc:
        print(f"refingerprint: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
