"""The cloud's web page and pictures, in a real headless Chromium (Debian's package, driven by
Playwright) against a real Ray Serve deployment: the page loads with no request leaving the
service, lists the tasks, shows a task's recommendations and the distance map, and an uploaded
fingerprint file gets the same nearest tasks as `rayfp query`."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import free_port, make_space, private_fingerprint

from rayfp.cloud.knowledge import KnowledgeBase
from rayfp.cloud.paper_import import import_paper
from rayfp.cloud.wire import write_fingerprint_file
from rayfp.store.store import Store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
POLICY = json.dumps({"__version__": "1.4.24", "transform": {
    "__class_fullname__": "Compose", "p": 1.0, "transforms": [
        {"__class_fullname__": "HorizontalFlip", "p": 0.5}]}})


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    import ray
    from ray import serve

    from rayfp.cloud.app import build_app, start_local_serve

    store = Store(tmp_path_factory.mktemp("web") / "store")
    import_paper(None, store)
    space = make_space(dim=16, bins=10)
    store.put_space(space)
    rng = np.random.default_rng(3)
    kb = KnowledgeBase(store)
    for i in range(8):
        kb.register_task({"modality": ["x_ray", "fundus"][i % 2]},
                         private_fingerprint(rng, space, f"site-{i}", n=300))
        kb.record_component({"task_id": f"site-{i}", "kind": "augmentation", "value": POLICY,
                             "metric": "AUROC", "score": 0.8 + i / 100, "seed": 0,
                             "provenance": "measured at site"})
    query = private_fingerprint(rng, space, "my-task", n=300)
    port = free_port()
    start_local_serve("127.0.0.1", port, num_cpus=2)
    serve.run(build_app({"store": str(store.root), "token": "t", "min_images": 20}),
              name="rayfp", route_prefix="/")
    try:
        yield {"url": f"http://127.0.0.1:{port}", "space": space, "store": store,
               "query": query}
    finally:
        serve.shutdown()
        ray.shutdown()


def get(url: str):
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.status, response.headers, response.read()


def test_pictures_over_http_are_png_cached_and_redrawn_when_the_space_changes(cloud):
    space = cloud["space"].space_id
    url = f"{cloud['url']}/v1/spaces/{space}/distances.png"
    status, headers, body = get(url)
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert body.startswith(b"\x89PNG") and len(body) < 2**20
    assert headers["X-Rayfp-Picture"] == "drawn"
    assert get(url)[1]["X-Rayfp-Picture"] == "cached" and get(url)[2] == body
    status, headers, fp_png = get(f"{cloud['url']}/v1/tasks/site-3/fingerprint.png")
    assert status == 200 and fp_png.startswith(b"\x89PNG")
    for missing in ("/v1/tasks/svhn/fingerprint.png",  # a paper task: no fingerprint
                    "/v1/spaces/nope/distances.png",
                    f"/v1/spaces/{space}/distances.png?task_id=nope"):
        with pytest.raises(urllib.error.HTTPError) as failed:
            get(cloud["url"] + missing)
        assert failed.value.code == 404, missing


def test_the_page_lists_tasks_answers_and_shows_the_pictures_without_leaving_the_service(
        cloud, tmp_path, capsys):
    from playwright.sync_api import sync_playwright

    from rayfp.cli.main import main

    base = cloud["url"]
    site = Store(tmp_path / "site")  # the site's own store and its fingerprint file
    site.put_space(cloud["space"])
    site.put_fingerprint(cloud["query"])
    upload = tmp_path / "my-task.json"
    write_fingerprint_file(cloud["query"], upload)
    assert main(["query", "--server", base, "--task-id", "my-task", "--fingerprint-from",
                 str(site.root), "--json"]) == 0
    expected = [n["task_id"] for n in json.loads(capsys.readouterr().out)["neighbours"]]

    requests = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda r: requests.append((r.method, r.url)))
        page.goto(base + "/")
        page.wait_for_selector("#tasks tr[data-task='site-7']")
        assert "ok" in page.inner_text("#health")
        rows = page.eval_on_selector_all("#tasks tr", "rs => rs.map(r => r.dataset.task)")
        assert rows == [f"site-{i}" for i in range(8)]
        assert "ε 1" in page.inner_text("#tasks tr[data-task='site-0']")
        page.wait_for_function("document.getElementById('map').naturalWidth > 0")

        page.click("#tasks tr[data-task='site-2']")
        page.wait_for_selector("#recommendations [data-kind='augmentation'] li")
        shown = page.eval_on_selector_all("#nearest li", "ls => ls.map(l => l.dataset.task)")
        assert shown and "site-2" not in shown
        assert "HorizontalFlip" in page.inner_text("#recommendations")
        assert "evidence: component" in page.inner_text("#recommendations")
        page.wait_for_function("document.getElementById('fp').naturalWidth > 0")
        page.wait_for_function("document.getElementById('map').src.includes('task_id=site-2')"
                               " && document.getElementById('map').naturalWidth > 0")

        page.set_input_files("#upload", str(upload))
        page.wait_for_function("document.getElementById('upload-status').textContent"
                               ".includes('answered')")
        uploaded = page.eval_on_selector_all("#nearest li", "ls => ls.map(l => l.dataset.task)")
        assert uploaded == expected  # the same answer as `rayfp query`
        browser.close()
    assert requests and all(url.startswith(base + "/") for _, url in requests), requests
    # Read-only: it asks (GET, and the query route), it never writes.
    assert {(m, url.split("?")[0].removeprefix(base)) for m, url in requests if m != "GET"} \
        == {("POST", "/v1/recommend")}
