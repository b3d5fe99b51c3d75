"""`rayfp store migrate|compact|vacuum|scrub|history`: keeping a store's Delta tables."""

from __future__ import annotations

import argparse
import json


def add_parsers(sub) -> None:
    p = sub.add_parser("store", help="migrate, compact or inspect a store's tables")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("migrate", help="copy a store of the old directory layout (rayfp "
                                           "before Delta tables) into a new store")
    q.add_argument("old", help="the old store folder (only read)")
    q.add_argument("new", help="a new, empty store: a folder or an s3:// URI")
    q = actions.add_parser("compact", help="fold superseded rows away and merge small files "
                                           "(safe while others write; history stays)")
    q.add_argument("store", help="a store folder or s3:// URI")
    q = actions.add_parser("vacuum", help="delete data files older versions need: history older "
                                          "than the retention becomes unreadable")
    q.add_argument("store", help="a store folder or s3:// URI")
    q.add_argument("--retention-hours", type=int, default=168,
                   help="keep every version younger than this (default 168, a week)")
    q = actions.add_parser("scrub", help="remove file names and folders of private tasks from "
                                         "every row, file and old version of the store "
                                         "(history before the scrub is deleted)")
    q.add_argument("store", help="a store folder or s3:// URI")
    q = actions.add_parser("history", help="the fingerprint table's commits, newest first")
    q.add_argument("store", help="a store folder or s3:// URI")
    q.add_argument("-n", type=int, default=20, help="how many commits (default 20)")
    p.set_defaults(run=cmd_store)


def cmd_store(args: argparse.Namespace) -> int:
    from rayfp.store.store import Store

    if args.action == "migrate":
        from rayfp.store.migrate import migrate

        report = migrate(args.old, args.new)
        print(f"migrated {sum(report['spaces'].values())} fingerprint(s) in "
              f"{len(report['spaces'])} space(s) and {sum(report['tables'].values())} table "
              f"row(s) into {args.new}")
    elif args.action == "compact":
        removed = Store(args.store).compact()
        print(json.dumps({"superseded_rows_removed": removed}))
        gave_way = sorted(name for name, rows in removed.items() if rows is None)
        if gave_way:
            print(f"gave way to concurrent writers on {', '.join(gave_way)}: run it again")
    elif args.action == "scrub":
        from rayfp.store.scrub import scrub

        print(json.dumps(scrub(Store(args.store))))
    elif args.action == "vacuum":
        deleted = Store(args.store).vacuum(args.retention_hours)
        print(json.dumps({"data_files_deleted": deleted}))
    else:
        for commit in Store(args.store).history()[:args.n]:
            print(f"version {commit.get('version')}  {commit.get('timestamp')}  "
                  f"{commit.get('operation')}")
    return 0
