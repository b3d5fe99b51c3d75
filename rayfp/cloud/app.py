# No `from __future__ import annotations` here: FastAPI must see real types in Serve replicas.
"""The knowledge cloud over HTTP: a Ray Serve deployment with a FastAPI ingress.

    serve run serve/config.yaml          # or: rayfp serve --store STORE
Handlers parse, call rayfp.cloud.knowledge / rayfp.cloud.recommend, and format; no science
here. Concurrent nearest-task queries are batched (rayfp.cloud.batching) and handed to
KnowledgeBase.nearest_many, which ranks each space and metric in one pass over its index.
"""


import asyncio
import functools
import hmac
import logging
import os
import time
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from ray import serve
from ray.serve import Application

from rayfp import defaults
from rayfp.cloud.answers import neighbours_out, search_width
from rayfp.cloud.batching import QueryBatcher
from rayfp.cloud.knowledge import KnowledgeBase, Neighbour
from rayfp.cloud.models import (
    AppArgs,
    ComponentIn,
    ConfidenceOut,
    FingerprintIn,
    NearestOut,
    OutcomeIn,
    PartIn,
    Query,
    RecommendOut,
    RecommendQuery,
    SpaceId,
    TaskId,
    TaskIn,
)
from rayfp.cloud.models import Neighbour as NeighbourOut
from rayfp.cloud.pictures import Pictures
from rayfp.cloud.ranking import LocalRanker, Ranker
from rayfp.cloud.recommend import recommend
from rayfp.cloud.sharded import IndexShard, ShardFanOut
from rayfp.cloud.wire import decode_fingerprint, decode_replicates
from rayfp.core.fingerprint import Fingerprint
from rayfp.core.parts import TaskPart
from rayfp.errors import ConfigError, ConflictError, NotFoundError, PrivacyPolicyError, RayfpError
from rayfp.evaluate.learned import SCENARIO_OF_KIND
from rayfp.privacy.replicates import check_replicates_record
from rayfp.search import cpu
from rayfp.search.index import configure_threads
from rayfp.store.store import privacy_summary

log = logging.getLogger("ray.serve")  # lands in the replica's Serve log
api = FastAPI(title="rayfp knowledge cloud", version="1",
              description="Nearest known tasks and what worked for them, from task fingerprints.")
bearer = HTTPBearer(auto_error=False, scheme_name="token",
                    description="the server's write token (`rayfp serve --token`)")


@api.exception_handler(RayfpError)
async def _rayfp_error(request: Request, exc: RayfpError) -> JSONResponse:
    status = (404 if isinstance(exc, NotFoundError)
              else 403 if isinstance(exc, PrivacyPolicyError)
              else 409 if isinstance(exc, ConflictError) else 400)
    return JSONResponse(status_code=status, content={"detail": _public(request, str(exc))})


def _public(request: Request, message: str) -> str:
    """A message for anonymous callers: the server's store location never in it."""
    root = getattr(request.app.state, "store_root", "")
    return message.replace(root, "<store>") if root else message


class ErrorOut(BaseModel):
    detail: Any


# Declared on every route, so the OpenAPI document lists what a client must handle.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "a fingerprint, part or value that does not fit"},
    401: {"model": ErrorOut, "description": "a write without the server's token"},
    403: {"model": ErrorOut, "description": "refused by the privacy policy"},
    404: {"model": ErrorOut, "description": "unknown task or space"},
    408: {"model": ErrorOut, "description": "the body did not arrive in time"},
    409: {"model": ErrorOut, "description": "conflicts with what is held (parts)"},
    413: {"model": ErrorOut, "description": "body over the size limit"},
}


class BodyDeadline:
    """ASGI middleware: a request body that has not fully arrived ``body_timeout_s`` after the
    request began gets 408 and frees its slot, so clients that send a Content-Length and then
    stall cannot hold the replica."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        timeout = getattr(scope["app"].state, "body_timeout_s", None) \
            if scope["type"] == "http" else None
        if timeout is None:
            return await self.app(scope, receive, send)
        deadline = time.monotonic() + timeout
        complete = False

        async def timed():
            nonlocal complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(),
                                                 max(deadline - time.monotonic(), 1e-3))
            except TimeoutError:
                raise HTTPException(status_code=408, detail=f"the request body did not arrive "
                                                            f"within {timeout:g} s") from None
            complete = message["type"] != "http.request" or not message.get("more_body")
            return message

        return await self.app(scope, timed, send)


class RequestSizeLimit:
    """ASGI middleware: a body larger than the app's ``max_request_bytes`` gets 413 before it is
    read into memory (by Content-Length, or by counting a chunked body as it arrives)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = getattr(scope["app"].state, "max_request_bytes", None)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not declared.isdigit():
            response = JSONResponse(status_code=400, content={
                "detail": f"Content-Length must be a number of bytes, got {declared[:40]!r}"})
            return await response(scope, receive, send)
        if limit is not None and int(declared) > limit:
            response = JSONResponse(status_code=413, content={
                "detail": f"request body of {int(declared)} bytes is over this server's limit "
                          f"of {limit} bytes"})
            return await response(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if limit is not None and received > limit:
                raise HTTPException(status_code=413, detail=f"request body is over this "
                                                            f"server's limit of {limit} bytes")
            return message

        return await self.app(scope, counted, send)


class NearestInFlight:
    """Counts the nearest-task requests inside this replica, from their first byte (before
    FastAPI parses the body) to their last: the batcher's sign that other queries are coming.
    Queries with replicates count too, though they are ranked apart; a batch waits for them no
    longer than the batcher's bound."""

    count = 0

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope.get("path", "").endswith("/v1/nearest"):
            return await self.app(scope, receive, send)
        NearestInFlight.count += 1
        try:
            return await self.app(scope, receive, send)
        finally:
            NearestInFlight.count -= 1


api.add_middleware(RequestSizeLimit)
api.add_middleware(BodyDeadline)
api.add_middleware(NearestInFlight)


def require_token(request: Request, credentials: Annotated[
        HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """Writes need 'Authorization: Bearer <token>'; checked before the body is validated, so
    an unauthenticated caller learns nothing about the schema."""
    expected = request.app.state.token
    given = credentials.credentials if credentials is not None else ""
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(status_code=401, detail="writes need 'Authorization: Bearer "
                            "<token>' with the server's token",
                            headers={"WWW-Authenticate": "Bearer"})


class _Timings:
    """W3C Server-Timing for one request (decode, rank, app = the whole handler), so a client
    can tell the app's time apart from Serve's proxying and the network."""

    def __init__(self) -> None:
        self.started = self._last = time.perf_counter()
        self.entries: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.entries.append((name, now - self._last))
        self._last = now

    def header(self) -> str:
        entries = [*self.entries, ("app", time.perf_counter() - self.started)]
        return ", ".join(f"{name};dur={seconds * 1e3:.3f}" for name, seconds in entries)


MAX_BATCH = 32
PICTURE_TIMEOUT_S = 20.0  # a picture not drawn by then gets 503 (it keeps drawing, then cached)


@functools.cache
def web_page() -> str:
    from importlib import resources

    return resources.files("rayfp.cloud").joinpath("web", "index.html").read_text()

# Requests a replica holds at once: well above the batch size (or Serve holds queries back and
# a batch can never fill), and above what stalled clients can occupy before their bodies time
# out (BodyDeadline), so /v1/health and real queries still get in.
MAX_ONGOING = 256


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=MAX_ONGOING)
@serve.ingress(api)
class KnowledgeCloud:
    """The ingress. With shard handles (a sharded cloud), ranking is fanned out to them and
    this replica holds no index; otherwise it ranks with its own."""

    def __init__(self, args: AppArgs, shards: list[Any] | None = None) -> None:
        # Ray pins OMP/BLAS to the replica's num_cpus (1); the memory-bound ranking GEMM runs
        # faster with the cores the host has (AppArgs.threads).
        self.openmp_spin = configure_threads(args.threads)
        self.args = args
        self.cpu = cpu.describe()
        # A deployment's args are plain text (serve config, RayService): the token may instead
        # come from the replica's environment, set from a secret (deploy/rayservice.yaml).
        api.state.token = args.token or os.environ.get("RAYFP_TOKEN", "")
        api.state.max_request_bytes = args.max_request_bytes
        api.state.body_timeout_s = args.body_timeout_s
        api.state.store_root = str(args.store)
        self.batcher = QueryBatcher(self._rank, in_flight=lambda: NearestInFlight.count,
                                    max_batch=MAX_BATCH)
        self.kb = KnowledgeBase(args.store, min_images=args.min_images, kernel=args.kernel,
                                max_epsilon=args.max_epsilon,
                                hubness_queries=0 if shards else args.hubness_queries)
        self.ranker: Ranker = ShardFanOut(shards) if shards else LocalRanker(self.kb)
        self.pictures = Pictures(self.kb)
        log.info("rayfp knowledge cloud on %s%s", cpu.one_line(),
                 f", ranking on {len(shards)} shards" if shards else "")
        for space_id in [] if shards else self.kb.space_ids():
            index = self.kb.index(space_id)  # load before taking traffic
            if index is not None:
                log.info("space %s: %d sources, index kernel %s", space_id, len(index),
                         index.describe_kernel())

    def check_health(self) -> None:
        for space_id in self.kb.space_ids() if self.ranker.holds_index() else []:
            self.kb.index(space_id)

    # -- helpers ------------------------------------------------------------------------------
    def _fingerprint(self, payload: FingerprintIn, task_id: str, min_images: int = 1
                     ) -> Fingerprint:
        fp = decode_fingerprint(self.kb.space(payload.space_id), task_id=task_id,
                                counts=payload.counts, feature_sum=payload.feature_sum,
                                n=payload.n, n_images=payload.n_images, min_images=min_images,
                                counts_dtype=payload.counts_dtype,
                                compression=payload.compression,
                                privacy=None if payload.privacy is None
                                else payload.privacy.record())
        self.kb.admit(fp)
        return fp

    async def _rank(self, queries: Sequence[tuple[Fingerprint, int, str]]
                    ) -> list[list[Neighbour]]:
        return await self.ranker.nearest_many(queries)

    def _replicates(self, query: Query, fp: Fingerprint) -> tuple[list[Fingerprint], Any]:
        """The query's replicates, decoded and checked against this cloud's privacy policy
        (their own noise, and the composed ε of query and replicates)."""
        payload = query.replicates
        replicates = decode_replicates(self.kb.space(fp.space_id), fp, counts=payload.counts,
                                       feature_sum=payload.feature_sum, n=payload.n,
                                       counts_dtype=payload.counts_dtype,
                                       compression=payload.compression)
        total = check_replicates_record(payload.privacy, fp.privacy,
                                        self.kb.space(fp.space_id), len(replicates),
                                        fp.n_images)
        self.kb.admit_total(fp, total)
        return replicates, None if total is None else total[0]

    async def _neighbours(self, query: Query, timings: _Timings, *, wide: int = 0
                          ) -> tuple[list[Neighbour], str, int, ConfidenceOut | None]:
        """The query's k nearest (``wide``: at least that many, for a learned ranking that
        blends every candidate's distance), its metric, k and confidence."""
        k = query.k or self.args.default_k
        metric = query.metric or self.args.default_metric
        if query.replicates is not None:  # heavy (R fingerprints): off the event loop
            fp = await asyncio.to_thread(self._fingerprint, query.fingerprint, "<query>")
            replicates, epsilon_total = await asyncio.to_thread(self._replicates, query, fp)
            timings.mark("decode")
            search = await self.ranker.replicate_search(fp, replicates, k=k, metric=metric)
            found, confidence = self.kb.with_confidence(fp.space_id, metric, search)
            timings.mark("rank")
            return found, metric, k, ConfidenceOut(
                replicates=confidence.replicates, stability=confidence.stability,
                label=confidence.label, unsure=confidence.unsure, epsilon_total=epsilon_total,
                certified=confidence.certified)
        search_k = max(k, wide)
        if query.fingerprint is not None:
            fp = self._fingerprint(query.fingerprint, task_id="<query>")
            timings.mark("decode")
            found = await self.batcher.submit((fp, search_k, metric))
        else:
            fp = self.kb.stored_fingerprint(query.task_id, query.space_id,
                                            from_index=self.ranker.holds_index())
            found = (self.kb.nearest_imported(query.task_id, k=search_k, metric=metric)
                     if fp is None else await self.batcher.submit((fp, search_k, metric)))
        timings.mark("rank")
        return found, metric, k, None

    @staticmethod
    def _ranked(found: list[Neighbour]) -> list[NeighbourOut]:
        return [NeighbourOut(**n) for n in neighbours_out(found)]

    # -- routes -------------------------------------------------------------------------------
    @api.get("/v1/health", responses=ERRORS)
    async def health(self) -> dict[str, Any]:
        """Each space's index (kernel, sources, bytes); a sharded cloud lists every shard's."""
        out = {"status": "ok", "spaces": len(self.kb.space_ids()), "cpu": self.cpu,
               "replica": serve.get_replica_context().replica_id.unique_id,
               "batches": {"ranked": self.batcher.batches, "queries": self.batcher.queries},
               "openmp_spin": self.openmp_spin,
               "unreadable": {space: sorted(tasks) for space, tasks
                              in self.kb.unreadable.items() if tasks}}
        return {**out, **await self.ranker.describe()}

    @api.get("/v1/spaces", responses=ERRORS)
    async def spaces(self) -> list[dict[str, Any]]:
        out = []
        for s in self.kb.spaces_summary():
            epsilons = await self.ranker.epsilons(s["space_id"])
            out.append({**s, "privacy": privacy_summary(epsilons)})
        return out

    @api.get("/v1/spaces/{space_id}", responses=ERRORS)
    def space(self, space_id: SpaceId) -> dict[str, Any]:
        hubness = self.kb.hubness(space_id, self.args.default_metric)
        return {**self.kb.space(space_id).to_record(),
                "hubness": None if hubness is None else hubness.to_record()}

    @api.get("/v1/tasks", responses=ERRORS)
    async def tasks(self, space_id: str | None = None) -> list[dict[str, Any]]:
        """Every task; with ``space_id``, those fingerprinted in the space, each with its
        released ε (null: exact counts) and whether it is a hub (weak evidence)."""
        rows = await asyncio.to_thread(self.kb.tasks, space_id)
        if space_id is None:
            return rows
        epsilons = await self.ranker.epsilons(space_id)
        hubness = self.kb.hubness(space_id, self.args.default_metric, wait=False)
        hubs = set() if hubness is None else {t for t, _ in hubness.hubs()}
        return [{**r, "epsilon": epsilons.get(r["task_id"]), "hub": r["task_id"] in hubs}
                for r in rows]

    @api.post("/v1/nearest", responses=ERRORS, response_model=NearestOut)
    async def nearest(self, query: Query, response: Response) -> NearestOut:
        timings = _Timings()
        found, metric, k, confidence = await self._neighbours(query, timings)
        response.headers["Server-Timing"] = timings.header()
        return NearestOut(metric=metric, k=k, neighbours=self._ranked(found),
                          confidence=confidence)

    @api.post("/v1/recommend", responses=ERRORS, response_model=RecommendOut)
    async def recommend_route(self, query: RecommendQuery, response: Response) -> RecommendOut:
        timings = _Timings()
        found, metric, k, confidence = await self._neighbours(
            query, timings, wide=search_width(0, query.rank))
        recommendations = await asyncio.to_thread(recommend, self.kb, found, query.kinds,
                                                  rank=query.rank, target=query.task_id, k=k)
        timings.mark("recommend")
        response.headers["Server-Timing"] = timings.header()
        return RecommendOut(metric=metric, k=k, neighbours=self._ranked(found[:k]),
                            confidence=confidence, recommendations=recommendations)

    @api.post("/v1/tasks", responses=ERRORS, status_code=201,
              dependencies=[Depends(require_token)])
    def register(self, task: TaskIn) -> dict[str, Any]:
        fp = self._fingerprint(task.fingerprint, task.task_id, min_images=self.args.min_images)
        meta = task.model_dump(exclude={"fingerprint"})
        self.kb.register_task(meta, fp)
        return {"task_id": fp.task_id, "space_id": fp.space_id, "n_samples": fp.n_samples}

    @api.post("/v1/tasks/{task_id}/parts", responses=ERRORS,
              dependencies=[Depends(require_token)])
    def part(self, task_id: TaskId, part: PartIn) -> dict[str, Any]:
        """One site's part of a task pooled over K sites (`rayfp fingerprint --part k/K`):
        kept until all K are here, then merged and registered. 409 for a part that arrived
        before or does not match the others; the state says which parts are missing."""
        received = TaskPart.from_record(part.record())
        if received.task_id != task_id:
            raise ConfigError(f"the part is of {received.task_id!r}, the URL names {task_id!r}")
        return self.kb.receive_part(received)

    @api.get("/v1/tasks/{task_id}/parts", responses=ERRORS,
             dependencies=[Depends(require_token)])
    def parts(self, task_id: TaskId, space_id: SpaceId) -> dict[str, Any]:
        """Which parts of a pooled task are held (the sites' business: token only)."""
        return self.kb.parts_state(space_id, task_id)

    @api.delete("/v1/tasks/{task_id}/parts", responses=ERRORS,
                dependencies=[Depends(require_token)])
    def drop_parts(self, task_id: TaskId, space_id: SpaceId) -> dict[str, Any]:
        """Clear the parts a pooled task holds, so its sites can start again."""
        return self.kb.drop_held_parts(space_id, task_id)

    # -- what people look at (read-only, no token) ---------------------------------------------
    @api.get("/", include_in_schema=False)
    def page(self) -> HTMLResponse:
        """The web page over this API (one file, nothing fetched from elsewhere)."""
        return HTMLResponse(web_page(), headers={"Cache-Control": "no-cache"})

    async def _picture(self, draw, *args) -> Response:
        if not self.ranker.holds_index():
            raise ConfigError("pictures are drawn from an index: this sharded cloud's ingress "
                              "holds none")
        try:
            png, cached = await asyncio.wait_for(asyncio.to_thread(draw, *args),
                                                 timeout=PICTURE_TIMEOUT_S)
        except TimeoutError:
            raise HTTPException(503, f"the picture took longer than {PICTURE_TIMEOUT_S:g} s; "
                                     "it is still being drawn: try again") from None
        return Response(png, media_type="image/png",
                        headers={"Cache-Control": "max-age=60",
                                 "X-Rayfp-Picture": "cached" if cached else "drawn"})

    @api.get("/v1/spaces/{space_id}/distances.png", responses=ERRORS, response_class=Response)
    async def distances_png(self, space_id: SpaceId, metric: str | None = None,
                            task_id: str | None = None) -> Response:
        """The clustered distance map of the space's first 100 tasks by id, or of ``task_id``
        and its 29 nearest, named."""
        return await self._picture(self.pictures.distances, space_id,
                                   metric or self.args.default_metric, task_id)

    @api.get("/v1/tasks/{task_id}/fingerprint.png", responses=ERRORS, response_class=Response)
    async def fingerprint_png(self, task_id: TaskId, space_id: str | None = None) -> Response:
        """The task's fingerprint: P(bin) per feature dimension."""
        return await self._picture(self.pictures.fingerprint, task_id, space_id)

    @api.post("/v1/tasks/{task_id}/components", responses=ERRORS, status_code=201,
              dependencies=[Depends(require_token)])
    def component(self, task_id: TaskId, component: ComponentIn) -> dict[str, Any]:
        self.kb.record_component({"task_id": task_id, **component.model_dump()})
        return {"task_id": task_id, "kind": component.kind, "value": component.value}

    @api.post("/v1/tasks/{task_id}/outcomes", responses=ERRORS, status_code=201,
              dependencies=[Depends(require_token)])
    def outcome(self, task_id: TaskId, outcome: OutcomeIn) -> dict[str, Any]:
        """A transfer this task's site measured: the next recommendations learn from it."""
        scenario = SCENARIO_OF_KIND[outcome.scenario]
        seeds = outcome.seeds or list(range(len(outcome.score)))
        self.kb.record_outcomes(
            [{"scenario": scenario, "metric": outcome.metric, "source": outcome.source,
              "target": task_id, "seed": seed, "score": score}
             for seed, score in zip(seeds, outcome.score)],
            [{"scenario": scenario, "target": task_id, "metric": outcome.metric, "seed": seed,
              "score": base} for seed, base in zip(seeds, outcome.baseline)])
        return {"task_id": task_id, "scenario": outcome.scenario, "source": outcome.source,
                "metric": outcome.metric, "seeds": len(seeds)}


# How HTTP reaches the ingress replica (Ray reads these when its processes start, so they must
# be in the environment of `ray start` on a cluster). bench/bench_ingress.py measures the three
# side by side (BENCHMARKS.md "Knowledge cloud ingress"): Serve's proxy hop costs several times
# what direct ingress and HAProxy do.
#   direct   the ingress replica serves HTTP on the port itself; no proxy hop, nothing bound
#            beyond the host asked for. One replica per port: `rayfp serve`'s default.
#   haproxy  HAProxy in front of the replicas' own ports: balances several replicas and nodes
#            (a cluster's choice). Replicas then listen on all interfaces and HAProxy's stats
#            (8404) and metrics (9101) ports too: firewall them.
#   proxy    Serve's proxy actor, gRPC to the replica (Ray's inter-deployment transport).
# Every ingress: the replica runs the app on its own event loop (Serve's default hands each
# request to a second loop in another thread) and freezes the garbage collector once started.
# The handlers keep that loop free (ranking runs in the batcher's thread, writes in Starlette's
# thread pool). Measured on the AVX2 EPYC, 1,000 sources, direct ingress, with the access log off
# (build_app): an empty GET 2.3 -> 1.0 ms, one client's p50 8.3-9.0 -> 7.2 ms (BENCHMARKS.md).
REPLICA_ENVIRONMENT = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
                       "RAY_SERVE_FREEZE_GC_ON_STARTUP": "1"}
_INGRESS_VARIABLES = ("RAY_SERVE_ENABLE_DIRECT_INGRESS", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT",
                      "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT",
                      "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S",
                      "RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_PROXY_USE_GRPC",
                      *REPLICA_ENVIRONMENT)


def serve_environment(ingress: str, port: int) -> dict[str, str]:
    """The Ray environment of one ingress choice, serving HTTP on ``port``."""
    if ingress == "direct":  # the replica takes the port; Serve's idle proxy gets a free one
        return {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
                "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
                "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),  # exclusive
                # the drain waits for an outside load balancer to notice; there is none here
                "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1", **REPLICA_ENVIRONMENT}
    if ingress == "haproxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "1", **REPLICA_ENVIRONMENT}
    if ingress == "proxy":
        return {"RAY_SERVE_PROXY_USE_GRPC": "1", **REPLICA_ENVIRONMENT}
    raise ConfigError(f"ingress must be one of {list(defaults.INGRESS)}, got {ingress!r}")


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_local_serve(host: str, port: int, *, ingress: str = defaults.INGRESS[0],
                      drain_s: float | None = None, **init_kwargs: Any) -> None:
    """Local Ray + Serve answering HTTP on host:port, as `rayfp serve`, the tests and the
    benchmarks use them. Replicas import rayfp like any installed package: nothing is put on
    their path. ``drain_s``: how long a stopping ingress replica keeps answering, so that the
    balancer in front stops sending to it (default: 1 s for direct ingress, Ray's 30 s behind
    HAProxy; every update or shutdown of the app waits this long)."""
    import ray

    environment = serve_environment(ingress, port)
    if drain_s is not None:
        environment["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = str(drain_s)
    for name in _INGRESS_VARIABLES:  # a previous choice in this process must not linger
        os.environ.pop(name, None)
    os.environ.update(environment)
    ray.init(address="local", include_dashboard=False, **init_kwargs)
    proxy_port = _free_port(host) if ingress == "direct" else port
    serve.start(http_options={"host": host, "port": proxy_port})


def build_app(args: dict[str, Any]) -> Application:
    """Typed app builder: `serve run rayfp.cloud.app:build_app store=STORE token=...`.
    With shards > 1, S IndexShard deployments rank and KnowledgeCloud fans out to them."""
    app_args = AppArgs(**args)
    if app_args.replicas > 1 and os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1":
        raise ConfigError(f"replicas = {app_args.replicas}: direct ingress serves one replica "
                          "on its port; several need the haproxy ingress (`rayfp serve "
                          "--ingress haproxy`), which balances them")
    # Serve's access log writes a line per request to a file and stderr (which Ray then
    # tails): off by default, as it cost about as much as the rest of the HTTP path.
    cloud = KnowledgeCloud.options(logging_config={"enable_access_log": app_args.access_log})
    if app_args.replicas > 1:  # (a Serve config's autoscaling_config is left alone otherwise)
        # together one CPU of Ray's, as one replica: on one host they share its cores
        cloud = cloud.options(num_replicas=app_args.replicas,
                              ray_actor_options={"num_cpus": 1 / app_args.replicas})
    if app_args.shards == 1:
        return cloud.bind(app_args)
    shards = [IndexShard.options(name=f"IndexShard{i}",
                                 ray_actor_options={"num_cpus": app_args.shard_cpus})
              .bind(app_args, i) for i in range(app_args.shards)]
    return cloud.bind(app_args, shards)
