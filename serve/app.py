# No `from __future__ import annotations` here: FastAPI must see real types in Serve replicas.
"""The knowledge cloud over HTTP: a Ray Serve deployment with a FastAPI ingress.

    serve run serve/config.yaml          # or: rayfp serve --store STORE
Handlers call rayfp.knowledge / rayfp.recommend; no science here. Concurrent nearest-task queries
are batched (@serve.batch) so each space and metric is ranked with one GEMM.
"""


import hmac
import os
import time
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application

from rayfp.distance import get_metric
from rayfp.errors import NotFoundError, RayfpError
from rayfp.fingerprint import Fingerprint
from rayfp.index import configure_threads
from rayfp.knowledge import (
    KnowledgeBase,
    fingerprint_from_payload,
    space_as_dict,
)
from rayfp.recommend import recommend
from serve.models import (
    AppArgs,
    ComponentIn,
    FingerprintIn,
    NearestOut,
    Neighbour,
    Query,
    RecommendOut,
    RecommendQuery,
    TaskIn,
)

api = FastAPI(title="rayfp knowledge cloud", version="1",
              description="Nearest known tasks and what worked for them, from task fingerprints.")


@api.exception_handler(RayfpError)
async def _rayfp_error(_: Request, exc: RayfpError) -> JSONResponse:
    status = 404 if isinstance(exc, NotFoundError) else 400
    return JSONResponse(status_code=status, content={"detail": str(exc)})


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


# max_ongoing_requests >= the batch size, or Serve holds queries back at the proxy (default 5)
# and a batch can never fill.
@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=32)
@serve.ingress(api)
class KnowledgeCloud:
    def __init__(self, args: AppArgs) -> None:
        # Ray pins OMP/BLAS to the replica's num_cpus (1); the ranking GEMM is memory-bound and
        # measured ~2x faster with 2 threads on this 2-core box.
        configure_threads(args.threads)
        self.args = args
        self.kb = KnowledgeBase(args.store, min_images=args.min_images)
        for space_id in self.kb.store.space_ids():
            self.kb.index(space_id)  # load before taking traffic

    def check_health(self) -> None:
        for space_id in self.kb.store.space_ids():
            self.kb.index(space_id)

    # -- helpers ------------------------------------------------------------------------------
    def _require_token(self, authorization: str | None) -> None:
        expected = f"Bearer {self.args.token}"
        if not self.args.token or not authorization or not hmac.compare_digest(
                authorization.encode(), expected.encode()):
            raise HTTPException(status_code=401, detail="writes need 'Authorization: Bearer "
                                "<token>' with the server's token",
                                headers={"WWW-Authenticate": "Bearer"})

    def _fingerprint(self, payload: FingerprintIn, task_id: str, min_images: int = 1
                     ) -> Fingerprint:
        space = self.kb.space(payload.space_id)
        return fingerprint_from_payload(space, task_id=task_id, counts=payload.counts,
                                        feature_sum=payload.feature_sum, n=payload.n,
                                        n_images=payload.n_images, min_images=min_images,
                                        counts_dtype=payload.counts_dtype,
                                        compression=payload.compression)

    # No waiting for a fuller batch: queries that arrive while one batch is ranked form the
    # next one; a 2 ms wait measured as 2 ms more latency for a single client.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _rank_batch(self, requests: list[tuple[Fingerprint, int, str]]
                          ) -> list[list[tuple[str, float]]]:
        """Queries in one batch that share a space and a bKLD metric: one GEMM."""
        results: list[list[tuple[str, float]] | None] = [None] * len(requests)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (fp, _, metric) in enumerate(requests):
            groups.setdefault((fp.space_id, metric), []).append(i)
        for (space_id, metric), members in groups.items():
            index = self.kb.index(space_id)
            if index is None:
                for i in members:
                    results[i] = []
                continue
            spec = get_metric(metric)
            if spec.weighting is not None:
                k_max = max(requests[i][1] for i in members)
                ranked = index.top_k_many([requests[i][0] for i in members], k_max,
                                          weighting=spec.weighting)
                for i, found in zip(members, ranked):
                    results[i] = found[:requests[i][1]]
            else:
                for i in members:
                    fp, k, _ = requests[i]
                    results[i] = index.top_k_metric(fp, k, metric)
        return results

    async def _neighbours(self, query: Query, timings: _Timings
                          ) -> tuple[list[Neighbour], str, int]:
        k = query.k or self.args.default_k
        metric = query.metric or self.args.default_metric
        get_metric(metric)
        if (query.fingerprint is None) == (query.task_id is None):
            raise HTTPException(status_code=422, detail="give exactly one of 'fingerprint' and "
                                                        "'task_id'")
        if query.fingerprint is not None:
            fp = self._fingerprint(query.fingerprint, task_id="<query>")
            timings.mark("decode")
            ranked = await self._rank_batch((fp, k, metric))
            timings.mark("rank")
            basis = f"fingerprint:{fp.space_id}"
            found = [Neighbour(rank=r, task_id=t, distance=d, basis=basis)
                     for r, (t, d) in enumerate(ranked, start=1)]
        else:
            found = [Neighbour(rank=r, task_id=n.task_id, distance=n.distance, basis=n.basis)
                     for r, n in enumerate(self.kb.nearest_to_task(
                         query.task_id, k=k, metric=metric, space_id=query.space_id), start=1)]
        return found, metric, k

    # -- routes -------------------------------------------------------------------------------
    @api.get("/v1/health")
    def health(self) -> dict[str, Any]:
        return {"status": "ok", "spaces": len(self.kb.store.space_ids())}

    @api.get("/v1/spaces")
    def spaces(self) -> list[dict[str, Any]]:
        return self.kb.store.summary()["spaces"]

    @api.get("/v1/spaces/{space_id}")
    def space(self, space_id: str) -> dict[str, Any]:
        return space_as_dict(self.kb.space(space_id))

    @api.get("/v1/tasks")
    def tasks(self, space_id: str | None = None) -> list[dict[str, Any]]:
        return self.kb.tasks(space_id)

    @api.post("/v1/nearest", response_model=NearestOut)
    async def nearest(self, query: Query, response: Response) -> NearestOut:
        timings = _Timings()
        found, metric, k = await self._neighbours(query, timings)
        response.headers["Server-Timing"] = timings.header()
        return NearestOut(metric=metric, k=k, neighbours=found)

    @api.post("/v1/recommend", response_model=RecommendOut)
    async def recommend_route(self, query: RecommendQuery, response: Response) -> RecommendOut:
        timings = _Timings()
        found, metric, k = await self._neighbours(query, timings)
        from rayfp.knowledge import Neighbour as KnownNeighbour

        plain = [KnownNeighbour(n.task_id, n.distance, n.basis) for n in found]
        recommendations = recommend(self.kb, plain, query.kinds)
        response.headers["Server-Timing"] = timings.header()
        return RecommendOut(metric=metric, k=k, neighbours=found,
                            recommendations=recommendations)

    @api.post("/v1/tasks", status_code=201)
    def register(self, task: TaskIn, authorization: str | None = Header(None)) -> dict[str, Any]:
        self._require_token(authorization)
        fp = self._fingerprint(task.fingerprint, task.task_id, min_images=self.args.min_images)
        meta = task.model_dump(exclude={"fingerprint"})
        self.kb.register_task(meta, fp)
        return {"task_id": fp.task_id, "space_id": fp.space_id, "n_samples": fp.n_samples}

    @api.post("/v1/tasks/{task_id}/components", status_code=201)
    def component(self, task_id: str, component: ComponentIn,
                  authorization: str | None = Header(None)) -> dict[str, Any]:
        self._require_token(authorization)
        self.kb.record_component({"task_id": task_id, **component.model_dump()})
        return {"task_id": task_id, "kind": component.kind, "value": component.value}


# Proxy -> replica over gRPC instead of Ray actor calls (Ray's inter-deployment gRPC transport,
# Serve performance guide): measured 5.0 vs 6.5 ms p50 for a 51 KB POST on loopback here. Ray
# reads it when the proxy starts, so it must be in the environment of the Ray processes:
# `RAY_SERVE_PROXY_USE_GRPC=1 serve run serve/config.yaml` (rayfp serve sets it itself).
SERVE_ENVIRONMENT = {"RAY_SERVE_PROXY_USE_GRPC": "1"}


def start_local_serve(host: str, port: int, **init_kwargs: Any) -> None:
    """Local Ray + Serve's HTTP proxy as `rayfp serve`, the tests and the benchmark use them."""
    import ray

    for name, value in SERVE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # Replicas import serve.app: give them this checkout on their path.
    ray.init(address="local", include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": root}}, **init_kwargs)
    serve.start(http_options={"host": host, "port": port})


def build_app(args: dict[str, Any]) -> Application:
    """Typed app builder: `serve run serve.app:build_app store=STORE token=...`."""
    return KnowledgeCloud.bind(AppArgs(**args))
