"""`rayfp`: the command line of a site and of the knowledge cloud.

Every command module registers its own parsers, each with its handler (`set_defaults(run=...)`),
and imports what the handler needs inside it, so `rayfp --help` and the light commands start
fast without torch or Ray (tests/test_layout.py checks which load what).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rayfp import __version__
from rayfp.cli import audit, catalog_cmd, cloud, local, privacy_cmd, store_cmd
from rayfp.cli.local import METRIC_HELP  # noqa: F401 - the registry's names, spelled out
from rayfp.errors import MissingExtraError, RayfpError
from rayfp.evaluate import command as evaluate_command

# In the order `rayfp --help` lists them.
COMMAND_MODULES = (local, evaluate_command, cloud, catalog_cmd, audit, store_cmd, privacy_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayfp", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"rayfp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except RayfpError as exc:
        print(f"rayfp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an optional part this installation left out
        missing = MissingExtraError.of(exc)
        if missing is None:
            raise
        print(f"rayfp {args.command}: error: {missing}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
