"""A small HTTP client for the knowledge cloud (stdlib only): what `rayfp query`,
`rayfp recommend` and `rayfp fingerprint --space-from` use."""

from __future__ import annotations

import http.client
import json
import urllib.parse
import urllib.request
from typing import Any

from rayfp.cloud.wire import encode_fingerprint, encode_replicates
from rayfp.core.fingerprint import Fingerprint, FingerprintSpace
from rayfp.core.parts import TaskPart
from rayfp.errors import RayfpError

Replicates = tuple[list[Fingerprint], dict[str, Any]]


class ServerError(RayfpError):
    """The server answered with an error status (its message is kept)."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        super().__init__(f"server answered {status}: {detail}")


def _request(url: str, payload: dict | None = None, token: str | None = None,
             timeout: float = 60) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    status, body = exchange(url, "POST" if data is not None else "GET", data, headers, timeout)
    if status < 400:
        return json.loads(body)
    text = body.decode(errors="replace")
    try:
        detail = json.loads(text).get("detail", text)
    except (json.JSONDecodeError, AttributeError):
        detail = text
    raise ServerError(status, str(detail))


def exchange(url: str, method: str, data: bytes | None, headers: dict[str, str],
              timeout: float) -> tuple[int, bytes]:
    """One request on its own connection. Unlike urllib, it still reads the answer when the
    server answers before the body is all sent and closes (a 413 for an oversized body): the
    send then fails with a broken pipe, but the answer is already in the socket."""
    connection, target = _connect(url, timeout)
    try:
        try:
            connection.request(method, target, body=data, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            pass  # read what the server said before it closed
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise ServerError(0, f"cannot reach {url}: {exc}") from None
    finally:
        connection.close()


def _connect(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """The connection for ``url`` and the request target, through the environment's proxy
    (http_proxy, https_proxy, no_proxy) as urllib would."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ServerError(0, f"cannot reach {url}: not an http(s) URL")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return kind(parts.netloc, timeout=timeout), target
    via = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}").netloc
    if parts.scheme == "https":  # CONNECT through the proxy, TLS to the server
        connection = kind(via, timeout=timeout)
        connection.set_tunnel(parts.netloc)
        return connection, target
    return http.client.HTTPConnection(via, timeout=timeout), url  # absolute form for a proxy


class CloudClient:
    def __init__(self, server: str, token: str | None = None) -> None:
        self.server = server.rstrip("/")
        self.token = token

    def space(self, space_id: str) -> FingerprintSpace:
        return FingerprintSpace.from_record(_request(f"{self.server}/v1/spaces/{space_id}"))

    def nearest(self, *, task_id: str | None = None, fingerprint: Fingerprint | None = None,
                k: int | None = None, metric: str | None = None,
                replicates: Replicates | None = None) -> dict[str, Any]:
        """replicates: (fingerprints, record) from rayfp.privacy.replicates.query_replicates;
        the answer then carries `confidence` and per-neighbour rates."""
        return _request(f"{self.server}/v1/nearest",
                        self._query(task_id, fingerprint, k, metric, replicates))

    def recommend(self, *, kinds: list[str], task_id: str | None = None,
                  fingerprint: Fingerprint | None = None, k: int | None = None,
                  metric: str | None = None, replicates: Replicates | None = None,
                  rank: str = "learned") -> dict[str, Any]:
        payload = {**self._query(task_id, fingerprint, k, metric, replicates), "kinds": kinds,
                   "rank": rank}
        return _request(f"{self.server}/v1/recommend", payload)

    def report_outcome(self, task_id: str, *, scenario: str, source: str, metric: str,
                       baseline: list[float], score: list[float],
                       seeds: list[int] | None = None) -> dict[str, Any]:
        """What this site measured transferring from ``source`` (per seed, with the
        no-transfer baseline of every seed): the cloud learns from it."""
        payload = {"scenario": scenario, "source": source, "metric": metric,
                   "baseline": baseline, "score": score,
                   **({"seeds": seeds} if seeds is not None else {})}
        return _request(f"{self.server}/v1/tasks/{task_id}/outcomes", payload,
                        token=self.token)

    def send_part(self, part: TaskPart) -> dict[str, Any]:
        """One site's part of a pooled task; the answer says which parts are still missing."""
        return _request(f"{self.server}/v1/tasks/{part.task_id}/parts", part.to_record(),
                        token=self.token)

    def register(self, fp: Fingerprint, **meta: Any) -> dict[str, Any]:
        payload = {"task_id": fp.task_id, **meta, "fingerprint": encode_fingerprint(fp)}
        return _request(f"{self.server}/v1/tasks", payload, token=self.token)

    @staticmethod
    def _query(task_id, fingerprint, k, metric, replicates=None) -> dict[str, Any]:
        query: dict[str, Any] = {"k": k, "metric": metric}
        if fingerprint is not None:
            query["fingerprint"] = encode_fingerprint(fingerprint)
            if replicates is not None:
                query["replicates"] = encode_replicates(*replicates)
        else:
            query["task_id"] = task_id
        return {key: v for key, v in query.items() if v is not None}
