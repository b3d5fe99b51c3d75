"""The HTTP floor of a nearest-task query (bench_ingress --floor): a Serve deployment with the
knowledge cloud's own request model, middlewares and response model, whose handler ranks
nothing and answers a fixed, real answer. What a query costs outside the ranking, measured on
the same queries, port and ingress as the cloud itself."""

# No `from __future__ import annotations`: this module travels by value, and FastAPI must see
# the handler's annotations as classes, not names to look up.

import time
from typing import Any

from fastapi import FastAPI, Response
from ray import serve

from rayfp import defaults
from rayfp.cloud.app import BodyDeadline, NearestInFlight, RequestSizeLimit
from rayfp.cloud.models import NearestOut, Query

floor_api = FastAPI()
floor_api.add_middleware(RequestSizeLimit)
floor_api.add_middleware(BodyDeadline)
floor_api.add_middleware(NearestInFlight)


@serve.deployment(ray_actor_options={"num_cpus": 1})
@serve.ingress(floor_api)
class Floor:
    def __init__(self, answer: dict[str, Any]) -> None:
        floor_api.state.max_request_bytes = defaults.MAX_REQUEST_BYTES  # as the cloud's
        floor_api.state.body_timeout_s = defaults.BODY_TIMEOUT_S
        self.answer = NearestOut(**answer)

    @floor_api.post("/v1/nearest", response_model=NearestOut)
    async def nearest(self, query: Query, response: Response) -> NearestOut:
        started = time.perf_counter()
        response.headers["Server-Timing"] = (
            f"rank;dur=0, app;dur={(time.perf_counter() - started) * 1e3:.3f}")
        return self.answer


def floor_app(answer: dict[str, Any]):
    import sys

    from ray import cloudpickle

    # Replicas import installed packages only; bench/ is not one, so this module travels
    # with the deployment, by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return Floor.options(logging_config={"enable_access_log": False}).bind(answer)
