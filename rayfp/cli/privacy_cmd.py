"""`rayfp privacy budget`: what each task's images have spent over all their private releases,
composed (rayfp.privacy.ledger)."""

from __future__ import annotations

import argparse


def add_parsers(sub) -> None:
    p = sub.add_parser("privacy", help="a site's privacy ledger")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("budget", help="ε spent per task, every release composed (PLD "
                                          "accountant): fingerprints, re-fingerprints, parts, "
                                          "replicates")
    q.add_argument("--store", required=True, help="the site's store folder or s3:// URI")
    q.add_argument("--task-id", help="one task (default: every task with a private release)")
    q.add_argument("--budget", type=float, help="also show what is left of this budget")
    p.set_defaults(run=cmd_privacy)


def cmd_privacy(args: argparse.Namespace) -> int:
    from rayfp.privacy.ledger import ledger, spent
    from rayfp.store.store import Store

    store = Store(args.store)
    rows = [spent(store, args.task_id)] if args.task_id else ledger(store)
    if not rows or not rows[0].releases:
        print("no private release recorded in this store")
        return 0
    print(f"{'task':24} {'releases':>8} {'ε spent':>9} {'δ':>8}"
          + (f" {'ε left of ' + format(args.budget, 'g'):>14}" if args.budget else ""))
    for row in rows:
        left = (f" {max(0.0, args.budget - row.epsilon):14.3g}" if args.budget else "")
        print(f"{row.task_id:24} {row.releases:8d} {row.epsilon:9.3g} {row.delta:8.2g}{left}")
    return 0
