"""The knowledge cloud as a real Ray Serve deployment on local Ray, over real HTTP."""

from __future__ import annotations

import dataclasses
import json
import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    free_port,
    make_space,
    private_fingerprint,
    random_fingerprint,
)

from rayfp import defaults
from rayfp.cloud.client import CloudClient, ServerError, exchange
from rayfp.cloud.knowledge import KnowledgeBase
from rayfp.cloud.paper_import import import_paper
from rayfp.cloud.wire import encode_fingerprint
from rayfp.core.distance import METRICS, bkld
from rayfp.search.kernels import KERNELS
from rayfp.store.store import Store

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret"
MAX_BYTES = 2 * 2**20
BODY_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    import ray
    from ray import serve

    from rayfp.cloud.app import build_app, start_local_serve

    store = Store(tmp_path_factory.mktemp("cloud") / "store")
    import_paper(None, store)
    space = make_space(dim=16, bins=10)
    store.put_space(space)
    rng = np.random.default_rng(7)
    # What sites send: differentially private releases (the server's policy refuses others).
    known = [private_fingerprint(rng, space, f"site-{i}", n=300) for i in range(6)]
    kb = KnowledgeBase(store)
    for fp in known[:5]:  # the sixth is registered over HTTP by a test
        kb.register_task({"modality": "synthetic"}, fp)
    port = free_port()
    start_local_serve("127.0.0.1", port, num_cpus=2)  # as `rayfp serve` does
    serve.run(build_app({"store": str(store.root), "token": TOKEN, "min_images": 20,
                         "max_request_bytes": MAX_BYTES, "body_timeout_s": BODY_TIMEOUT_S}),
              name="rayfp", route_prefix="/")
    try:
        yield {"url": f"http://127.0.0.1:{port}", "space": space, "known": known, "store": store}
    finally:
        serve.shutdown()
        ray.shutdown()


def http(cloud, method, path, payload=None, token=None):
    data = None if payload is None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    status, body = exchange(cloud["url"] + path, method, data, headers, timeout=60)
    return status, json.loads(body or b"{}")


def test_health_spaces_and_openapi(cloud):
    status, health = http(cloud, "GET", "/v1/health")
    assert status == 200 and (health["status"], health["spaces"]) == ("ok", 1)
    chosen = health["kernels"][cloud["space"].space_id]  # measured on this CPU at start-up
    assert chosen["kernel"] in KERNELS and set(chosen["measured_ms"]) == set(KERNELS)
    assert chosen["passed_over"] == {}  # few counts pass 127 here: every kernel was timed
    assert chosen["sources"] >= 5 and health["cpu"]["cores"] >= 1 and "simd" in health["cpu"]
    # the replica set OpenMP's short spin before anything loaded libgomp (rayfp.search.cpu),
    # or inherited it from this process (a test here called configure_threads first)
    assert health["openmp_spin"].startswith(f"GOMP_SPINCOUNT={defaults.OMP_SPINCOUNT}")
    status, spaces = http(cloud, "GET", "/v1/spaces")
    assert status == 200 and spaces[0]["space_id"] == cloud["space"].space_id
    # 5, or 6 once a test has registered site-5 over HTTP: whatever the store holds now
    assert spaces[0]["fingerprints"] == len(cloud["store"].fingerprints(
        cloud["space"].space_id)) >= 5
    released = spaces[0]["privacy"]  # the cloud knows what it holds: every source is private
    assert (released["exact"], released["epsilon_max"]) == (0, 1.0)
    assert released["private"] == spaces[0]["fingerprints"]
    fetched = CloudClient(cloud["url"]).space(cloud["space"].space_id)  # hash re-checked
    assert np.array_equal(fetched.edges_hi, cloud["space"].edges_hi)
    status, space = http(cloud, "GET", f"/v1/spaces/{cloud['space'].space_id}")
    hubness = space["hubness"]  # k-occurrence of every stored task among the others' top-k
    assert (hubness["k"], hubness["metric"]) == (3, "bkld-small")
    assert hubness["sources"] == spaces[0]["fingerprints"] == hubness["queries"]
    assert hubness["skewness"] is None or isinstance(hubness["skewness"], float)
    answer = CloudClient(cloud["url"]).nearest(task_id="site-1", k=2)  # measured above: known
    assert all(n["k_occurrence"] is not None and isinstance(n["hub"], bool)
               for n in answer["neighbours"])
    status, schema = http(cloud, "GET", "/openapi.json")
    assert status == 200 and "/v1/recommend" in schema["paths"]
    # /docs shows the real choices and how writes authenticate
    assert schema["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/tasks"]["post"]["security"] == [{"token": []}]
    metric = json.dumps(schema["components"]["schemas"]["Query"]["properties"]["metric"])
    assert all(f'"{name}"' in metric for name in METRICS.names())


def test_register_then_query_then_recommend(cloud):
    client = CloudClient(cloud["url"], token=TOKEN)
    new = cloud["known"][5]
    with pytest.raises(ServerError) as info:
        CloudClient(cloud["url"]).register(new)
    assert info.value.status == 401
    with pytest.raises(ServerError) as info:
        CloudClient(cloud["url"], token="wrong").register(new)
    assert info.value.status == 401
    assert client.register(new, modality="CT")["task_id"] == "site-5"
    status, tasks = http(cloud, "GET", f"/v1/tasks?space_id={cloud['space'].space_id}")
    assert [t["task_id"] for t in tasks] == [f"site-{i}" for i in range(6)]  # no restart

    answer = client.nearest(task_id="site-5", k=3)
    exhaustive = sorted((bkld(new, s), s.task_id) for s in cloud["known"][:5])
    assert [n["task_id"] for n in answer["neighbours"]] == [t for _, t in exhaustive[:3]]
    assert answer["neighbours"][0]["distance"] == pytest.approx(exhaustive[0][0], abs=1e-9)
    as_lists = {"fingerprint": {**encode_fingerprint(new),
                                "counts": new.counts.ravel().tolist(),
                                "feature_sum": new.feature_sum.tolist()}, "k": 3}
    status, by_lists = http(cloud, "POST", "/v1/nearest", as_lists)
    assert status == 200  # an anonymous fingerprint is ranked against every task, site-5 too
    everything = sorted((bkld(new, s), s.task_id) for s in cloud["known"])
    assert [n["task_id"] for n in by_lists["neighbours"]] == [t for _, t in everything[:3]]

    best = exhaustive[0][1]
    status, _ = http(cloud, "POST", f"/v1/tasks/{best}/components",
                     {"kind": "architecture", "value": "convnext_tiny", "metric": "AUROC",
                      "score": 0.91, "seed": 0, "provenance": "site A, 5-fold CV"}, token=TOKEN)
    assert status == 201
    rec = client.recommend(task_id="site-5", kinds=["architecture"], k=3)
    first = rec["recommendations"]["architecture"][0]
    assert (first["source"], first["value"], first["rank"]) == (best, "convnext_tiny", 1)
    assert first["provenance"] == "site A, 5-fold CV" and first["n_seeds"] == 1


def test_paper_tasks_are_answered_from_imported_distances(cloud):
    rec = CloudClient(cloud["url"]).recommend(task_id="svhn", kinds=["augmentation",
                                                                     "pretraining"], k=3)
    assert all(n["basis"].startswith("imported:") for n in rec["neighbours"])
    assert len(rec["recommendations"]["augmentation"]) == 3
    assert rec["recommendations"]["pretraining"][0]["evidence"] == "transfer"


def test_bad_input_gets_4xx_that_says_what_to_fix(cloud):
    good = encode_fingerprint(cloud["known"][0])
    cases = [
        ({"fingerprint": {**good, "space_id": "feedfacefeedface"}}, 404, "known spaces"),
        ({"fingerprint": {**good, "counts": [1.0, 2.0]}}, 400, "expected 16 x 10"),
        ({"fingerprint": {**good, "n": 0}}, 422, "greater than or equal to 1"),
        ({"task_id": "site-1", "metric": "kl"}, 422, "'bkld-small', 'bkld-large'"),
        ({"task_id": "site-1", "kinds": ["optimizer"]}, 422, "'architecture'"),
        ({"task_id": "site-1", "kinds": []}, 422, "at least 1 item"),
        ({"fingerprint": {**good, "compression": "gzip"}}, 422, "'zlib'"),
        ({}, 422, "exactly one"),
        ({"task_id": "site-1", "fingerprint": good}, 422, "exactly one"),
        ({"task_id": "no-such-task"}, 404, "no-such-task"),
    ]
    for payload, status, message in cases:
        route = "/v1/recommend" if "kinds" in payload else "/v1/nearest"
        got, body = http(cloud, "POST", route, payload)
        assert (got, message in json.dumps(body)) == (status, True), (payload, got, body)
    negative = cloud["known"][0].counts.ravel().astype(float)
    negative[0] = -1
    got, body = http(cloud, "POST", "/v1/tasks", {"task_id": "x", "fingerprint": {
        **good, "counts": negative.tolist()}}, token=TOKEN)
    assert got == 400 and "non-negative" in body["detail"]
    few = {**good, "n_images": 3}
    got, body = http(cloud, "POST", "/v1/tasks", {"task_id": "x", "fingerprint": few},
                     token=TOKEN)
    assert got == 400 and "minimum of 20" in body["detail"]


def test_writes_check_the_token_before_the_body(cloud):
    """An anonymous write learns nothing about the schema: 401, not 422."""
    for body in ({"nonsense": True}, {"task_id": "x"}):
        assert http(cloud, "POST", "/v1/tasks", body)[0] == 401
        assert http(cloud, "POST", "/v1/tasks/site-1/components", body, token="wrong")[0] == 401
    assert http(cloud, "POST", "/v1/tasks", {"nonsense": True}, token=TOKEN)[0] == 422


def declared_post(cloud, path: str, *, declared: int, sent: bytes = b"", chunked: bool = False
                  ) -> tuple[int, dict]:
    """A POST that announces ``declared`` body bytes (or is chunked) but sends only ``sent``:
    the answer must come from the announcement, before a big body is read."""
    import http.client

    host, port = cloud["url"].removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.putrequest("POST", path)
    connection.putheader("Content-Type", "application/json")
    if chunked:
        connection.putheader("Transfer-Encoding", "chunked")
    else:
        connection.putheader("Content-Length", str(declared))
    connection.endheaders()
    try:
        if chunked:
            for start in range(0, len(sent), 2**20):
                piece = sent[start:start + 2**20]
                connection.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            connection.send(b"0\r\n\r\n")
        else:
            connection.send(sent)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the body was all sent: read its answer
    response = connection.getresponse()
    try:
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_oversized_bodies_get_413_not_500(cloud):
    payload = {"task_id": "site-1", "pad": "x" * (MAX_BYTES + 1)}
    for _ in range(5):  # the server may answer and close before the body is sent: a race
        got, body = http(cloud, "POST", "/v1/nearest", payload)
        assert got == 413 and str(MAX_BYTES) in body["detail"], (got, body)
    # a client of the product gets the server's 413, not "cannot reach" from a broken pipe
    with pytest.raises(ServerError) as refused:
        CloudClient(cloud["url"]).nearest(task_id="x" * (4 * MAX_BYTES))
    assert refused.value.status == 413 and str(MAX_BYTES) in str(refused.value)
    got, body = declared_post(cloud, "/v1/nearest", declared=30 * 2**20, sent=b"{")
    assert got == 413 and "31457280 bytes" in body["detail"], (got, body)
    pad = json.dumps({"task_id": "site-1", "pad": "x" * (3 * 2**20)}).encode()
    got, body = declared_post(cloud, "/v1/nearest", declared=0, sent=pad, chunked=True)
    assert got == 413 and str(MAX_BYTES) in body["detail"], (got, body)
    assert http(cloud, "GET", "/v1/health")[0] == 200  # and the server is fine afterwards


def test_concurrent_queries_are_batched_and_identical(cloud):
    client = CloudClient(cloud["url"])
    targets = cloud["known"][:5] * 4
    before = http(cloud, "GET", "/v1/health")[1]["batches"]
    sequential = [client.nearest(fingerprint=fp, k=2)["neighbours"] for fp in targets[:5]]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(lambda fp: client.nearest(fingerprint=fp, k=2)["neighbours"],
                                 targets))
    after = http(cloud, "GET", "/v1/health")[1]["batches"]
    assert after["queries"] - before["queries"] == 25  # every query went through the batcher
    assert 1 <= after["ranked"] - before["ranked"] <= 25
    for i, answer in enumerate(parallel):  # a GEMM and a GEMV agree to rounding
        expected = sequential[i % 5]
        assert [n["task_id"] for n in answer] == [n["task_id"] for n in expected]
        np.testing.assert_allclose([n["distance"] for n in answer],
                                   [n["distance"] for n in expected], rtol=1e-12)


def test_answers_carry_the_time_spent_inside_the_app(cloud):
    body = json.dumps({"fingerprint": encode_fingerprint(cloud["known"][0]), "k": 2}).encode()
    request = urllib.request.Request(cloud["url"] + "/v1/nearest", data=body,
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        timing = response.headers["Server-Timing"]
    total_ms = (time.perf_counter() - started) * 1e3
    parts = dict(entry.split(";dur=") for entry in timing.split(", "))
    assert list(parts) == ["decode", "rank", "app"]
    decode, rank, app = (float(parts[name]) for name in ("decode", "rank", "app"))
    assert 0 < decode + rank <= app < total_ms


def test_cli_query_and_recommend_against_the_server(cloud, tmp_path, capsys):
    from rayfp.cli.main import main

    local = Store(tmp_path / "local")
    local.put_space(cloud["space"])
    local.put_fingerprint(cloud["known"][2])
    assert main(["query", "--server", cloud["url"], "--task-id", "site-2",
                 "--fingerprint-from", str(local.root), "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "nearest to site-2" in out and "fingerprint:" in out
    assert main(["recommend", "--server", cloud["url"], "--task-id", "svhn", "--kinds",
                 "augmentation", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert len(answer["recommendations"]["augmentation"]) == 3
    assert all(c["value"].startswith("{") for c in answer["recommendations"]["augmentation"])
    # What a person reads: transforms with their rates, and the k nearest as pretraining
    # candidates with the measured transfers from them.
    assert main(["recommend", "--server", cloud["url"], "--task-id", "svhn", "-k", "3",
                 "--kinds", "augmentation,pretraining"]) == 0
    out = capsys.readouterr().out
    assert out.count("transforms/img") == 3 and "__class_fullname__" not in out
    assert out.count("measured: score") == 3 and "no recorded evidence" not in out
    os.environ.pop("RAYFP_TOKEN", None)


def _essentials(answer: dict) -> dict:
    """What a person acts on (hub flags follow a background measurement: left out)."""
    return {"neighbours": [(n["task_id"], round(n["distance"], 9), n["basis"])
                           for n in answer["neighbours"]],
            "recommendations": {kind: [(c["source"], c["value"], c["evidence"], c.get("ranking"))
                                       for c in candidates]
                                for kind, candidates in answer.get("recommendations",
                                                                   {}).items()}}


@pytest.mark.parametrize("task_id, rank", [("svhn", "learned"), ("svhn", "distance"),
                                           ("site-1", "learned"), ("site-3", "distance")])
def test_recommend_from_a_store_without_a_service_answers_as_the_service(cloud, capsys,
                                                                         task_id, rank):
    """`rayfp recommend --store` (and `query --store`) compute the answer here, with the
    cloud's own code, from the same store: the same neighbours and the same candidates, for a
    paper task (imported distances) and a registered one (its fingerprint)."""
    from rayfp.cli.main import main

    answers = []
    for where in (["--server", cloud["url"]], ["--store", str(cloud["store"].root)]):
        assert main(["recommend", *where, "--task-id", task_id, "--kinds",
                     "augmentation,pretraining", "-k", "3", "--rank", rank, "--json"]) == 0
        answers.append(json.loads(capsys.readouterr().out))
    assert _essentials(answers[0]) == _essentials(answers[1])
    if task_id == "svhn":  # the paper's tasks carry policies
        assert answers[1]["recommendations"]["augmentation"]
    assert main(["query", "--store", str(cloud["store"].root), "--task-id", task_id,
                 "-k", "3", "--json"]) == 0
    nearest = json.loads(capsys.readouterr().out)
    assert [n["task_id"] for n in nearest["neighbours"]] == [
        n[0] for n in _essentials(answers[1])["neighbours"]]


def test_the_privacy_policy_refuses_what_it_should_over_http(cloud):
    """The server's maximum ε (8 by default): exact counts, a weaker release and a record whose
    noise does not add up are refused with 403 and the reason; answers show each neighbour's ε."""
    client = CloudClient(cloud["url"], token=TOKEN)
    rng = np.random.default_rng(11)
    space = cloud["space"]
    exact = random_fingerprint(rng, space, "exact-site", n=300)
    weak = private_fingerprint(rng, space, "weak-site", n=300, epsilon=16)
    forged = private_fingerprint(rng, space, "forged-site", n=300)
    forged_record = {**forged.privacy, "dp": {**forged.privacy["dp"], "sigma_counts": 1.0}}
    cases = [(exact, "carries exact counts"), (weak, "at most ε = 8"),
             (dataclasses.replace(forged, privacy=forged_record), "below the")]
    for fp, reason in cases:
        for call, kwargs in ((client.register, {}), (client.nearest, {"fingerprint": None})):
            with pytest.raises(ServerError) as info:
                call(fp) if not kwargs else call(fingerprint=fp)
            assert info.value.status == 403 and reason in str(info.value), str(info.value)
    assert fp.task_id not in [t["task_id"] for t in http(cloud, "GET", "/v1/tasks")[1]]
    answer = client.nearest(fingerprint=private_fingerprint(rng, space, "ok", n=300), k=3)
    assert [n["epsilon"] for n in answer["neighbours"]] == [1.0, 1.0, 1.0]



def test_a_query_with_replicates_says_how_sure_it_is(cloud, tmp_path, capsys):
    """Replicates over HTTP: ranked with the query, answered with per-neighbour rates and the
    answer's stability; their privacy is checked (parametric: free; bootstrap: composed)."""
    from rayfp.cli.main import main
    from rayfp.cloud.wire import encode_replicates
    from rayfp.core.fingerprint import PartialCounts, bin_indices, finalize
    from rayfp.core.replicates import ViewTable
    from rayfp.privacy.mechanism import PrivacySpec, release
    from rayfp.privacy.replicates import query_replicates

    client = CloudClient(cloud["url"])
    space = cloud["space"]
    query = cloud["known"][3]  # a private release without views: parametric replicates
    replicates = query_replicates(None, query, space, replicates=16, resample_seed=1,
                                  resampling="parametric")
    answer = client.nearest(fingerprint=query, k=3, replicates=replicates)
    plain = client.nearest(fingerprint=query, k=3)
    assert plain["confidence"] is None
    assert [n["task_id"] for n in answer["neighbours"]] == [
        n["task_id"] for n in plain["neighbours"]]
    confidence = answer["confidence"]
    assert confidence["replicates"] == 16 and confidence["epsilon_total"] == 1.0  # free
    assert confidence["stability"] == answer["neighbours"][0]["top1_rate"]
    assert confidence["label"] in ("confident", "moderate", "unsure")
    assert all(0 <= n["top1_rate"] <= n["topk_rate"] <= 1 for n in answer["neighbours"])
    recommended = client.recommend(fingerprint=query, kinds=["pretraining"], k=2,
                                   replicates=replicates, rank="distance")
    assert recommended["confidence"]["replicates"] == 16
    for candidate, neighbour in zip(recommended["recommendations"]["pretraining"],
                                    recommended["neighbours"]):  # each carries its rates
        assert candidate["top1_rate"] == neighbour["top1_rate"] is not None
    learned = client.recommend(fingerprint=query, kinds=["pretraining"], k=2,
                               replicates=replicates)  # paper sources by their outcomes too
    rates = {n["task_id"]: n["top1_rate"] for n in learned["neighbours"]}
    for candidate in learned["recommendations"]["pretraining"]:
        assert candidate.get("top1_rate") == rates.get(candidate["source"])

    # Bootstrap replicates of a site's images (its kept view table), released at ε = 1 more:
    # the server recomputes the sensitivity and composes the total itself.
    rng = np.random.default_rng(5)
    images, views = 60, 300  # the balanced plan: 5 views per image
    owner = np.arange(views) % images
    features = np.clip(rng.random((images, space.dim))[owner] * 0.7
                       + rng.random((views, space.dim)) * 0.3, 0, 1)
    table = ViewTable.from_batches(space, "site-x", [
        ([f"img{i}" for i in owner], bin_indices(features, space), features)])
    released, record = release(PartialCounts.from_features(features, space, clip_sum=True),
                               space, task_id="site-x", n_images=images,
                               spec=PrivacySpec(epsilon=1.0, seed=3), min_images=1)
    site = finalize(released, task_id="site-x", n_images=images, privacy=record)
    boot = query_replicates(table, site, space, replicates=8, resample_seed=2)
    answer = client.nearest(fingerprint=site, k=2, replicates=boot)
    assert 1.0 < answer["confidence"]["epsilon_total"] < 2.0
    assert answer["confidence"]["epsilon_total"] == pytest.approx(boot[1]["epsilon_total"])
    greedy = query_replicates(table, site, space, replicates=8, resample_seed=2,
                              resampling="bootstrap", spec=PrivacySpec(epsilon=9.0))
    with pytest.raises(ServerError) as info:
        client.nearest(fingerprint=site, k=2, replicates=greedy)
    assert info.value.status == 403 and "together" in str(info.value)
    forged = {**boot[1], "dp": {**boot[1]["dp"], "sigma_counts": 1.0}}
    status, body = http(cloud, "POST", "/v1/nearest", {
        "fingerprint": encode_fingerprint(site), "k": 2,
        "replicates": encode_replicates(boot[0], forged)})
    assert status == 400 and "is below" in body["detail"]

    # The CLI: --replicates with a local private fingerprint (parametric, no views needed).
    local = Store(tmp_path / "local")
    local.put_space(space)
    local.put_fingerprint(query)
    assert main(["query", "--server", cloud["url"], "--task-id", query.task_id,
                 "--fingerprint-from", str(local.root), "-k", "2", "--replicates", "8",
                 "--resampling", "parametric"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "confidence:" in out and "of 8 replicates" in out


def test_a_task_pooled_over_two_sites_is_merged_once_both_parts_arrive(cloud):
    """POST /v1/tasks/{id}/parts: waiting with what is missing, 409 for a part sent twice,
    then merged, admitted like any registration, and found by queries."""
    from rayfp.core.fingerprint import PartialCounts
    from rayfp.core.parts import PartPlan
    from rayfp.privacy.mechanism import PrivacySpec
    from rayfp.privacy.parts import release_part

    space = cloud["space"]
    plan = PartPlan("two-sites", (30, 20), 400, seed=2, plan="keyed")
    rng = np.random.default_rng(9)
    parts = []
    for k in (1, 2):
        views = plan.views_in(k)
        features = rng.random((views, space.dim))
        parts.append(release_part(PartialCounts.from_features(features, space, clip_sum=True),
                                  space, plan=plan, part=k, spec=PrivacySpec(epsilon=1.0, seed=4)))
    client = CloudClient(cloud["url"], token=TOKEN)
    with pytest.raises(ServerError) as info:
        CloudClient(cloud["url"]).send_part(parts[0])
    assert info.value.status == 401
    assert client.send_part(parts[0]) == {"task_id": "two-sites", "space_id": space.space_id,
                                          "state": "waiting", "parts": 2, "received": [1],
                                          "missing": [2]}
    with pytest.raises(ServerError) as info:
        client.send_part(parts[0])
    assert info.value.status == 409 and "arrived before" in str(info.value)
    status, _ = http(cloud, "GET", f"/v1/tasks/two-sites/parts?space_id={space.space_id}")
    assert status == 401  # which parts a task holds is the sites' business
    status, state = http(cloud, "GET", f"/v1/tasks/two-sites/parts?space_id={space.space_id}",
                         token=TOKEN)
    assert status == 200 and state["missing"] == [2]
    assert "two-sites" not in [t["task_id"] for t in http(cloud, "GET", "/v1/tasks")[1]]
    assert client.send_part(parts[1])["state"] == "merged"
    answer = client.nearest(task_id="two-sites", k=2)
    assert len(answer["neighbours"]) == 2 and answer["neighbours"][0]["task_id"] != "two-sites"
    status, body = http(cloud, "POST", "/v1/tasks/other-name/parts", parts[1].to_record(),
                        token=TOKEN)
    assert status == 400 and "the URL names 'other-name'" in body["detail"]


# -- one anonymous client must not freeze or wedge the cloud ----------------------------------
def _raw(cloud, request: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
    """Send raw bytes; (status, body) of the answer."""
    import socket

    host, port = cloud["url"].rsplit(":", 1)
    with socket.create_connection((host.split("//")[1], int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[-1]


def test_stalled_bodies_time_out_and_never_block_health(cloud):
    """64 clients announce a body and send one byte: /v1/health still answers at once, and
    each stalled request gets 408 when its body does not arrive in time."""
    import socket

    host, port = cloud["url"].split("//")[1].rsplit(":", 1)
    stalled = []
    for _ in range(64):
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.sendall(b"POST /v1/nearest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 100\r\n\r\n{")
        stalled.append(sock)
    try:
        time.sleep(0.5)
        started = time.perf_counter()
        status, _ = http(cloud, "GET", "/v1/health")
        assert status == 200 and time.perf_counter() - started < 1.0
        answers = []
        for sock in stalled:
            answers.append(sock.recv(4096).split(b" ", 2)[1])
        assert set(answers) == {b"408"}
    finally:
        for sock in stalled:
            sock.close()


def test_bad_inputs_from_an_attacker_get_4xx_never_500(cloud):
    space = cloud["space"]
    rng = np.random.default_rng(23)
    good = encode_fingerprint(private_fingerprint(rng, space, "probe", n=300))

    def query(**change):
        return http(cloud, "POST", "/v1/nearest", {"fingerprint": {**good, **change}})

    wrong_dp = {"dp": "yes"}
    cases = {
        "privacy record of the wrong type": query(privacy=wrong_dp),
        "ε as text": query(privacy={"dp": {**good["privacy"]["dp"], "epsilon": "much"}}),
        "NaN σ": query(privacy={"dp": {**good["privacy"]["dp"], "sigma_counts": "NaN"}}),
        "n_images of a billion billion": query(n_images=10**18),
        "n of ten million": query(n=10**7),
        "counts of 2^63": query(counts=[2.0**63] * (space.dim * space.bins), counts_dtype="u4",
                                compression="none"),
        "a NUL task id": http(cloud, "POST", "/v1/nearest", {"task_id": "a\x00b"}),
        "a 1 MB task id": http(cloud, "POST", "/v1/nearest", {"task_id": "x" * 2**20}),
        "an empty task id": http(cloud, "POST", "/v1/nearest", {"task_id": ""}),
    }
    for name, (status, body) in cases.items():
        assert 400 <= status < 500, (name, status, body)
    # Stored? Never: a registration with the wrong record type is refused at the door.
    status, _ = http(cloud, "POST", "/v1/tasks", {"task_id": "wrong-dp", "fingerprint": {
        **good, "privacy": wrong_dp}}, token=TOKEN)
    assert status == 422
    status, _ = http(cloud, "POST", f"/v1/tasks/{cloud['known'][0].task_id}/components",
                     {"kind": "augmentation", "value": "x" * 10**6}, token=TOKEN)
    assert status in (413, 422)
    status, body = http(cloud, "GET", "/v1/spaces/0123456789abcdef")
    assert status == 404 and str(cloud["store"].root) not in json.dumps(body)
    assert "<store>" in json.dumps(body) or "0123456789abcdef" in json.dumps(body)
    status, schema = http(cloud, "GET", "/openapi.json")
    responses = schema["paths"]["/v1/nearest"]["post"]["responses"]
    assert {"400", "403", "404", "408", "413", "422"} <= set(responses)


def _two_part_plan(space, task_id: str, *, epsilon: float = 1.0, seed: int = 2):
    from rayfp.core.fingerprint import PartialCounts
    from rayfp.core.parts import PartPlan
    from rayfp.privacy.mechanism import PrivacySpec
    from rayfp.privacy.parts import release_part

    plan = PartPlan(task_id, (30, 20, 10), 400, seed=seed, plan="keyed")
    rng = np.random.default_rng(seed)
    return [release_part(PartialCounts.from_features(rng.random((plan.views_in(k), space.dim)),
                                                     space, clip_sum=True),
                         space, plan=plan, part=k, spec=PrivacySpec(epsilon=epsilon, seed=k))
            for k in (1, 2, 3)]


def test_parts_are_checked_on_arrival_and_can_be_cleared(cloud):
    """A part the policy refuses is never held (so it cannot wedge the task); malformed parts
    get 4xx; held parts can be cleared with the token."""
    space = cloud["space"]
    client = CloudClient(cloud["url"], token=TOKEN)
    weak = _two_part_plan(space, "weak-part", epsilon=50.0)
    with pytest.raises(ServerError) as info:
        client.send_part(weak[0])
    assert info.value.status == 403 and "at most ε = 8" in str(info.value)
    parts = _two_part_plan(space, "clearable")
    forged = dataclasses.replace(parts[1], privacy={**parts[1].privacy, "dp": {
        **parts[1].privacy["dp"], "sigma_part": 1e-3}})
    with pytest.raises(ServerError) as info:
        client.send_part(forged)
    assert info.value.status == 403 and "below the" in str(info.value)
    record = parts[0].to_record()
    bad = {"seed -1": {**record, "plan": {**record["plan"], "seed": -1}},
           "dp as text": {**record, "privacy": {"dp": "yes", "noise_share": "full"}},
           "bins that do not divide B": {**record, "privacy": {**record["privacy"], "dp": {
               **record["privacy"]["dp"], "release_bins": 3}}},
           "a plan of 2e7 views": {**record, "plan": {**record["plan"], "samples": 2 * 10**7}}}
    for name, body in bad.items():
        status, answer = http(cloud, "POST", "/v1/tasks/clearable/parts", body, token=TOKEN)
        assert 400 <= status < 500, (name, status, answer)
    assert client.send_part(parts[0])["state"] == "waiting"
    path = f"/v1/tasks/clearable/parts?space_id={space.space_id}"
    assert http(cloud, "DELETE", path)[0] == 401
    status, cleared = http(cloud, "DELETE", path, token=TOKEN)
    assert status == 200 and cleared["dropped"] == 1
    assert http(cloud, "GET", path, token=TOKEN)[0] == 404
    assert client.send_part(parts[0])["state"] == "waiting"  # the sites can start again


def test_parts_sent_at_the_same_moment_merge_exactly_once(cloud):
    """Three sites send their parts at once, 20 times: each task is merged exactly once, no
    request fails, and nothing is left held."""
    space = cloud["space"]
    client = CloudClient(cloud["url"], token=TOKEN)
    for attempt in range(20):
        task = f"race-{attempt}"
        parts = _two_part_plan(space, task, seed=100 + attempt)
        with ThreadPoolExecutor(3) as pool:
            states = list(pool.map(client.send_part, parts))
        assert sorted(s["state"] for s in states).count("merged") == 1, states
        assert not {s["state"] for s in states} - {"waiting", "merged", "merging"}
        status, state = http(cloud, "GET", f"/v1/tasks/{task}/parts?space_id={space.space_id}",
                             token=TOKEN)
        assert status == 200 and state["state"] == "merged"
    assert cloud["store"].parts_of(space.space_id, "race-0") == []


def test_a_record_the_service_cannot_read_is_skipped_not_fatal(cloud):
    """A fingerprint row with an unreadable privacy record (written behind the service's back):
    queries and /v1/spaces still answer, the row is not ranked, /v1/health names it, and a new
    KnowledgeBase (a restarting replica) starts."""
    space = cloud["space"]
    rng = np.random.default_rng(31)
    bad = dataclasses.replace(private_fingerprint(rng, space, "unreadable", n=300),
                              privacy={"dp": "yes"})
    cloud["store"].put_fingerprint(bad)
    try:
        answer = CloudClient(cloud["url"]).nearest(fingerprint=private_fingerprint(
            rng, space, "q", n=300), k=10)
        assert "unreadable" not in [n["task_id"] for n in answer["neighbours"]]
        assert http(cloud, "GET", "/v1/spaces")[0] == 200
        status, health = http(cloud, "GET", "/v1/health")
        assert status == 200 and health["unreadable"] == {space.space_id: ["unreadable"]}
        restarted = KnowledgeBase(cloud["store"].root)
        assert restarted.index(space.space_id) is not None
        assert restarted.unreadable[space.space_id] == {"unreadable"}
    finally:
        cloud["store"].delete_fingerprint(space.space_id, "unreadable")


def test_a_reported_outcome_changes_the_next_recommendation_for_other_tasks(cloud):
    """Sites report what transfers did for their tasks (per seed, against the no-transfer
    baseline); the cloud learns from them: a source that kept helping other targets rises in
    the next recommendation for a task that reported nothing. Bad reports get 4xx, a repeat
    is not counted twice."""
    from rayfp.evaluate import PaperData, Protocol

    client = CloudClient(cloud["url"], token=TOKEN)
    query = {"task_id": "laryngeal_tissues", "kinds": ["pretraining"], "k": 3}
    before = client.recommend(**query)["recommendations"]["pretraining"]
    assert [c["ranking"] for c in before] == ["learned"] * 3 and all(c["why"] for c in before)
    digits = "mnist_digit_classification"
    assert digits not in [c["source"] for c in before]  # digits rarely help medical tasks
    by_distance = client.recommend(**query, rank="distance")["recommendations"]["pretraining"]
    assert [c["ranking"] for c in by_distance] == ["distance"] * 3

    good = {"scenario": "pretraining", "source": digits, "metric": "AUROC",
            "baseline": [0.5, 0.5, 0.5], "score": [1.0, 1.0, 1.0]}
    path = "/v1/tasks/svhn/outcomes"
    assert http(cloud, "POST", path, good)[0] == 401
    for bad, field in (({**good, "score": [1.5, 1.0, 1.0]}, "score"),
                       ({**good, "baseline": [0.5]}, "baseline"),
                       ({**good, "scenario": "optimizer"}, "scenario"),
                       ({**good, "metric": "AUROC; drop"}, "metric")):
        status, answer = http(cloud, "POST", path, bad, token=TOKEN)
        assert status == 422 and field in json.dumps(answer)
    status, answer = http(cloud, "POST", path, {**good, "source": "nope"}, token=TOKEN)
    assert status == 404 and "nope" in answer["detail"]
    assert http(cloud, "POST", "/v1/tasks/nobody/outcomes", good, token=TOKEN)[0] == 404

    targets = [t for t in Protocol(PaperData(), "development").targets()
               if t not in ("laryngeal_tissues", digits)]
    for target in targets:
        for metric in ("AUROC", "BA"):
            client.report_outcome(target, **{**good, "metric": metric})
    rows = cloud["store"].transfers().num_rows
    client.report_outcome(targets[0], **good)  # the same report again: replaces, not adds
    assert cloud["store"].transfers().num_rows == rows
    after = client.recommend(**query)["recommendations"]["pretraining"]
    assert after[0]["source"] == digits, after
    assert after[0]["improved"] >= len(targets) and "targets it was tried on" in after[0]["why"]
