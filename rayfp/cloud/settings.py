"""Every setting of the knowledge cloud, declared once.

`AppArgs` (the typed arguments of `rayfp.cloud.app:build_app`, rayfp/cloud/models.py), the
`rayfp serve` flags and the defaults serve/config.yaml leaves out are all generated from this
table, so a setting cannot mean one thing in one place and another elsewhere. Importing it costs
nothing (no pydantic), so `rayfp --help` stays light.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from typing import Any

from rayfp import defaults

REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    kind: type  # int, float, str or bool (a --flag / --no-flag pair)
    default: Any
    help: str
    bounds: dict[str, float] = dataclasses.field(default_factory=dict)  # ge, gt, le
    choices: str | None = None  # "metric" or "kernel": checked against the registries by AppArgs
    optional: bool = False  # None allowed (an 'inf' epsilon on the command line)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("store", str, REQUIRED, "the store: a directory or s3://bucket/prefix"),
    Setting("token", str, "", "bearer token for writes; empty refuses every write "
                              "(`rayfp serve` default: $RAYFP_TOKEN)"),
    Setting("default_k", int, defaults.K, "sources per answer when a query names none",
            {"ge": 1, "le": 100}),
    Setting("default_metric", str, defaults.METRIC, "metric when a query names none",
            choices="metric"),
    Setting("min_images", int, defaults.MIN_IMAGES,
            "refuse fingerprints of fewer distinct images", {"ge": 1}),
    Setting("max_epsilon", float, defaults.MAX_EPSILON,
            "refuse fingerprints that are not (ε <= this)-DP with 403; null ('inf' on the "
            "command line) accepts all: a cloud of public data only", {"gt": 0}, optional=True),
    Setting("threads", int, 2, "BLAS threads of a replica (Ray sets 1)", {"ge": 1}),
    Setting("replicas", int, 1, "ingress replicas; several need the haproxy ingress, which "
            "balances them. On one host, one replica a core with threads 1 ranks more queries "
            "under load, one replica with every core answers a lone query sooner "
            "(docs/cloud.md)", {"ge": 1, "le": 64}),
    Setting("max_request_bytes", int, defaults.MAX_REQUEST_BYTES,
            "larger request bodies get 413", {"ge": 1024}),
    Setting("body_timeout_s", float, defaults.BODY_TIMEOUT_S,
            "a request body not complete after this many seconds gets 408", {"gt": 0}),
    Setting("kernel", str, "auto", "index kernel: 'auto' measures each on this CPU and keeps "
                                   "the fastest", choices="kernel"),
    Setting("hubness_queries", int, 256, "stored tasks ranked against the others to flag hubs "
                                         "(in the background); 0 turns hub flags off", {"ge": 0}),
    Setting("shards", int, 1, "index shard deployments; 1: the ingress ranks itself",
            {"ge": 1}),
    Setting("shard_cpus", float, 1.0, "CPUs reserved by each shard replica", {"ge": 0}),
    Setting("access_log", bool, False, "Serve's access log, a line per request (on 2 cores "
            "its writes cost about 1 ms a request: docs/cloud.md)"),
)


def _epsilon(text: str) -> float | None:
    if text.strip().lower() in {"inf", "none", "null", "off"}:
        return None
    value = float(text)
    return None if math.isinf(value) else value


def add_setting_flags(p: argparse.ArgumentParser) -> None:
    """One flag per setting, with the setting's default and help."""
    for s in SETTINGS:
        if s.default is REQUIRED:
            p.add_argument(s.flag, required=True, help=s.help)
            continue
        default = os.environ.get("RAYFP_TOKEN", "") if s.name == "token" else s.default
        if s.kind is bool:
            p.add_argument(s.flag, action=argparse.BooleanOptionalAction, default=default,
                           help=f"{s.help} (default: {'on' if default else 'off'})")
            continue
        kind = _epsilon if s.optional else s.kind
        p.add_argument(s.flag, type=kind, default=default,
                       help=f"{s.help} (default: {'$RAYFP_TOKEN' if s.name == 'token' else default})")


def settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """The app's arguments from parsed flags."""
    return {s.name: getattr(args, s.name) for s in SETTINGS}
