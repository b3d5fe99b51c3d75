"""The knowledge cloud scaled out, on one real local Ray + Serve behind HAProxy, over HTTP: 1, 2
and 4 index shards answer exactly what the exhaustive ranking answers, and several replicas of
the ingress stay in step with the store they share."""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.request

import numpy as np
import pytest
from conftest import free_port, make_space, private_fingerprint

from rayfp.cloud.client import CloudClient
from rayfp.cloud.knowledge import KnowledgeBase
from rayfp.core.distance import get_metric
from rayfp.search.shards import shard_of
from rayfp.store.store import Store

TOKEN = "s3cret"
K = 5


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    import ray
    from ray import serve

    from rayfp.cloud.app import start_local_serve

    store = Store(tmp_path_factory.mktemp("scale") / "store")
    space = make_space(dim=12, bins=16)
    store.put_space(space)
    rng = np.random.default_rng(11)
    sources = [private_fingerprint(rng, space, f"task-{i:03d}", n=300) for i in range(60)]
    # Twins: the same counts under two ids, so ties must be broken by id across shards.
    sources += [dataclasses.replace(sources[i], task_id=f"twin-{i:03d}") for i in (4, 21, 33)]
    kb = KnowledgeBase(store)
    for fp in sources:
        kb.register_task({"modality": "synthetic"}, fp)
    queries = [private_fingerprint(rng, space, f"query-{i}", n=300) for i in range(6)]
    port = free_port()
    # HAProxy, the cluster's ingress: it balances the replicas of the second test (direct
    # ingress gives each replica a port of its own).
    # Nothing but the test sends requests, and only while no replica stops: the 30 s drain
    # behind HAProxy would add half a minute to every redeploy and to the shutdown.
    start_local_serve("127.0.0.1", port, ingress="haproxy", drain_s=2, num_cpus=2)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "space": space, "sources": sources,
               "queries": queries, "store": store}
    finally:
        serve.shutdown()
        ray.shutdown()


def deploy(cloud, app) -> CloudClient:
    from ray import serve

    serve.run(app, name="rayfp", route_prefix="/")
    return CloudClient(cloud["url"], token=TOKEN)


def app_args(cloud, **extra):
    return {"store": str(cloud["store"].root), "token": TOKEN, "min_images": 1,
            "max_epsilon": None, "hubness_queries": 0, **extra}


def get(cloud, path: str):
    with urllib.request.urlopen(cloud["url"] + path, timeout=60) as response:
        return json.loads(response.read())


def health(cloud) -> dict:
    return get(cloud, "/v1/health")


def replicas_answering(cloud, expected: int, timeout_s: float = 120.0) -> int:
    """How many distinct replicas answer /v1/health, polled until `expected` have answered or
    the time is up: HAProxy learns of a new replica a moment after Serve reports it running."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < expected and time.monotonic() < deadline:
        seen |= {health(cloud)["replica"] for _ in range(20)}
        time.sleep(0.2)
    return len(seen)


def exhaustive(target, sources, k, metric="bkld-small"):
    """Every source by the metric's direct formula, nearest first, ties by task id."""
    pairwise = get_metric(metric).pairwise
    pairs = [(s.task_id, pairwise(target, s)) for s in sources if s.task_id != target.task_id]
    return sorted(pairs, key=lambda pair: (pair[1], pair[0]))[:k]


def assert_same_ranking(answer, expected):
    assert [n["task_id"] for n in answer["neighbours"]] == [t for t, _ in expected]
    np.testing.assert_allclose([n["distance"] for n in answer["neighbours"]],
                               [d for _, d in expected], rtol=1e-9, atol=1e-12)


def test_one_two_and_four_shards_answer_the_exhaustive_ranking(cloud):
    from rayfp.cloud.app import build_app
    from rayfp.privacy.replicates import query_replicates

    sources, space = cloud["sources"], cloud["space"]
    twin_query = dataclasses.replace(sources[21], task_id="someone-else")  # ties at 0
    confidences = {}
    for shards in (1, 2, 4):
        client = deploy(cloud, build_app(app_args(cloud, shards=shards, shard_cpus=0.25)))
        state = health(cloud)
        if shards == 1:
            assert state["kernels"][space.space_id]["sources"] == len(sources)
        else:  # each shard holds exactly the tasks that hash to it
            held = {s["shard"]: s["spaces"][space.space_id]["sources"] for s in state["shards"]}
            assert held == {i: sum(shard_of(fp.task_id, shards) == i for fp in sources)
                            for i in range(shards)}
            assert all(s["spaces"][space.space_id]["nbytes"] > 0 for s in state["shards"])
        for query in [*cloud["queries"], twin_query]:
            assert_same_ranking(client.nearest(fingerprint=query, k=K),
                                exhaustive(query, sources, K))
        assert_same_ranking(client.nearest(fingerprint=cloud["queries"][0], k=K,
                                           metric="bkld-large"),
                            exhaustive(cloud["queries"][0], sources, K, "bkld-large"))
        assert_same_ranking(client.nearest(fingerprint=cloud["queries"][1], k=K, metric="js"),
                            exhaustive(cloud["queries"][1], sources, K, "js"))
        stored = sources[7]  # a stored task by id: itself excluded
        assert_same_ranking(client.nearest(task_id=stored.task_id, k=K),
                            exhaustive(stored, sources, K))
        # Replicates: the shards' searches merge into what one index answers.
        query = cloud["queries"][2]
        replicates = query_replicates(None, query, space, replicates=8, resample_seed=1,
                                      resampling="parametric")
        answer = client.nearest(fingerprint=query, k=3, replicates=replicates)
        assert_same_ranking(answer, exhaustive(query, sources, 3))
        confidences[shards] = answer
        spaces = get(cloud, "/v1/spaces")
        assert spaces[0]["privacy"]["private"] == len(sources)  # every shard's releases
    for shards in (2, 4):
        assert confidences[shards]["confidence"] == confidences[1]["confidence"]
        for mine, one in zip(confidences[shards]["neighbours"], confidences[1]["neighbours"]):
            numbers = [key for key, value in one.items() if isinstance(value, float)]
            assert {key: mine[key] for key in numbers} == pytest.approx(
                {key: one[key] for key in numbers}, rel=1e-9)
            assert mine["task_id"] == one["task_id"] and len(numbers) >= 5

    # A registration through the ingress lands on its shard and is ranked at once.
    rng = np.random.default_rng(99)
    new = private_fingerprint(rng, space, "registered-later", n=300)
    client.register(new, modality="synthetic")
    twin_of_new = dataclasses.replace(new, task_id="looks-like-new")
    answer = client.nearest(fingerprint=twin_of_new, k=K)
    assert answer["neighbours"][0]["task_id"] == "registered-later"
    assert_same_ranking(answer, exhaustive(twin_of_new, [*sources, new], K))


def test_replicas_of_the_cloud_stay_in_step_with_the_store(cloud):
    """Two ingress replicas share the store: a task registered through one is ranked by every
    replica on the next query (each brings its index up to date incrementally)."""
    from ray import serve

    from rayfp.cloud.app import build_app

    # A clean start, not a rolling update: the previous app's replicas would hold the 2 CPUs
    # while they drain, and the second replica would wait for them.
    serve.delete("rayfp")
    client = deploy(cloud, build_app(app_args(cloud, replicas=2, threads=1)))
    assert replicas_answering(cloud, 2) == 2  # both answer
    rng = np.random.default_rng(5)
    news = [private_fingerprint(rng, cloud["space"], f"late-{i}", n=300) for i in range(4)]
    every = list(cloud["sources"])
    for new in news:  # the router spreads these over both replicas
        client.register(new, modality="synthetic")
        every.append(new)
        twin = dataclasses.replace(new, task_id=f"twin-of-{new.task_id}")
        (expected,) = exhaustive(twin, every, 1)  # bKLD(x, x) > 0: smoothing and weights
        assert expected[0] == new.task_id
        answers = [client.nearest(fingerprint=twin, k=1)["neighbours"][0] for _ in range(10)]
        assert {n["task_id"] for n in answers} == {new.task_id}
        np.testing.assert_allclose([n["distance"] for n in answers], expected[1], rtol=1e-9)
    stored = Store(cloud["store"].root).fingerprints(cloud["space"].space_id)
    assert sorted(fp.task_id for fp in stored) == sorted(
        [fp.task_id for fp in every] + ["registered-later"])
