"""The HTTP API against a real Redis: auth on every endpoint, errors as problem+json."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from litestar.testing import TestClient

from atp_service.config import parse_config
from atp_service.http.app import create_app, serving_app
from atp_service.local.services import start_redis
from atp_service.store import keys
from atp_service.store.redis_store import initialize
from tests.conftest import ADMIN_KEY, ALL_KEY, READ_KEY, WRITE_KEY, config_text

pytestmark = pytest.mark.integration

ORDER = {
    "order_id": "AUTH-1",
    "channel": "web",
    "lines": [{"line_id": "1", "sku": "S", "quantity": 1}],
}
# (method, path, body, scope) for every endpoint that needs a key.
PROTECTED: list[tuple[str, str, Any, str]] = [
    ("GET", "/v1/availability/web/SKU-1", None, "availability:read"),
    ("POST", "/v1/availability/web/query", {"skus": ["SKU-1"]}, "availability:read"),
    ("GET", "/v1/availability/web/changes", None, "availability:read"),
    ("GET", "/v1/channels", None, "availability:read"),
    ("POST", "/v1/allocations", ORDER, "allocations:write"),
    ("POST", "/v1/allocations/batch", {"orders": [ORDER]}, "allocations:write"),
    ("GET", "/v1/allocations/AUTH-1", None, "allocations:write"),
    ("DELETE", "/v1/allocations/AUTH-1", None, "allocations:write"),
    ("PUT", "/v1/channels/web/safety-stock/SKU-1", {"quantity": 3}, "admin"),
    ("DELETE", "/v1/channels/web/safety-stock/SKU-1", None, "admin"),
]
# Writes are exercised with their key in the allocation tests (they need the broker).
READS_WITH_KEY = {
    "/v1/availability/web/SKU-1",
    "/v1/availability/web/query",
    "/v1/availability/web/changes",
    "/v1/channels",
}
KEY_FOR_SCOPE = {"availability:read": READ_KEY, "allocations:write": WRITE_KEY, "admin": ADMIN_KEY}


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient[Any]]:
    # An initialized projection, as a consumer leaves it when it starts on an empty Redis.
    initialize(redis.Redis.from_url(redis_url), keys.SINGLE, "test")
    # As served: the fast paths in front of Litestar.
    app = serving_app(create_app(parse_config(config_text(redis_url))))
    with TestClient(app) as test_client:
        yield test_client


def call(client: TestClient[Any], method: str, path: str, body: Any, key: str | None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body", "scope"), PROTECTED)
def test_every_protected_endpoint_checks_key_and_scope(
    client: TestClient[Any], method: str, path: str, body: Any, scope: str
) -> None:
    no_key = call(client, method, path, body, None)
    assert no_key.status_code == 401
    assert no_key.headers["content-type"].startswith("application/problem+json")
    assert no_key.headers["www-authenticate"] == "Bearer"
    wrong = call(client, method, path, body, "not-a-key")
    assert wrong.status_code == 401
    other_scope = next(k for s, k in KEY_FOR_SCOPE.items() if s != scope)
    forbidden = call(client, method, path, body, other_scope)
    assert forbidden.status_code == 403
    assert forbidden.json()["status"] == 403
    if path in READS_WITH_KEY:
        assert call(client, method, path, body, KEY_FOR_SCOPE[scope]).status_code == 200
        assert call(client, method, path, body, ALL_KEY).status_code == 200


def test_malformed_authorization_headers_are_401(client: TestClient[Any]) -> None:
    for header in ("Basic dGVzdA==", "Bearer", "Bearer ", READ_KEY, f"Token {READ_KEY}"):
        reply = client.get("/v1/channels", headers={"Authorization": header})
        assert reply.status_code == 401, header


def test_health_readiness_metrics_and_openapi_need_no_key(client: TestClient[Any]) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "atp_http_request_duration_seconds" in metrics.text
    schema = client.get("/schema/openapi.json").json()
    assert "/v1/availability/{channel}/{sku}" in schema["paths"]
    assert "/v1/availability/{channel}/query" in schema["paths"]
    props = schema["components"]["schemas"]["Availability"]["properties"]
    assert {"available_to_sell", "on_hand", "reserved", "safety_stock", "atp", "as_of"} <= set(
        props
    )


def test_the_document_says_what_the_server_enforces(client: TestClient[Any]) -> None:
    """What client generators and gateways read: no key on the operations routes, a key on
    every other; OPTIONS lists every method documented for a path; the order a POST
    returns links to its GET and DELETE; request bodies refuse unknown fields."""
    schema = client.get("/schema/openapi.json").json()
    headers = {"Authorization": f"Bearer {ALL_KEY}"}
    for path, item in schema["paths"].items():
        methods = {m.upper() for m in item if m in {"get", "put", "post", "delete", "patch"}}
        for method in methods:
            security = item[method.lower()].get("security")
            public = path in {"/healthz", "/readyz", "/metrics"}
            assert security == ([] if public else [{"bearer": []}]), (path, method)
        concrete = re.sub(r"\{[^}]+\}", "X-1", path)
        allow = client.options(concrete, headers=headers).headers.get("allow", "")
        assert methods <= {m.strip() for m in allow.split(",")}, (path, allow)
    created = schema["paths"]["/v1/allocations"]["post"]["responses"]
    for status in ("200", "201"):
        links = created[status]["links"]
        assert {link["operationId"] for link in links.values()} == {
            op["operationId"] for op in schema["paths"]["/v1/allocations/{order_id}"].values()
        }
    bodies = [
        op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        for item in schema["paths"].values()
        for op in item.values()
        if "requestBody" in op
    ]
    assert len(bodies) == len(BODIES)
    for name in bodies:
        assert schema["components"]["schemas"][name]["additionalProperties"] is False, name


def test_channels_lists_the_configuration(client: TestClient[Any]) -> None:
    body = client.get("/v1/channels", headers={"Authorization": f"Bearer {READ_KEY}"}).json()
    web, market = body["channels"]
    assert web == {
        "name": "web", "priority": 1, "locations": ["DC-EAST", "DC-WEST"], "safety_stock": 0,
        "inbound_horizon_days": 14, "safety_stock_overrides": {}, "safety_stock_percent": 0,
        "min_available": 0, "max_available": None, "max_order_quantity": None,
        "low_stock_threshold": 3,
    }  # fmt: skip
    assert market["safety_stock"] == 5


def test_bad_input_is_400_problem_json(client: TestClient[Any]) -> None:
    headers = {"Authorization": f"Bearer {READ_KEY}", "content-type": "application/json"}
    for body in (b"{", b"[]", b'{"skus": "SKU-1"}', b'{"skus": [1]}', b'{"skus": [""]}'):
        reply = client.post("/v1/availability/web/query", content=body, headers=headers)
        assert reply.status_code == 400, body
        problem = reply.json()
        assert problem["status"] == 400 and problem["title"] == "Bad Request" and problem["detail"]
    long_sku = "S" * 201
    reply = client.get(f"/v1/availability/web/{long_sku}", headers=headers)
    assert reply.status_code == 400


def test_redis_down_is_503_problem_json_never_500(tmp_path: Path) -> None:
    service = start_redis(tmp_path / "redis")
    initialize(redis.Redis(port=service.port), keys.SINGLE, "test")
    app = serving_app(create_app(parse_config(config_text(f"redis://127.0.0.1:{service.port}/0"))))
    headers = {"Authorization": f"Bearer {READ_KEY}"}
    with TestClient(app) as test_client:
        assert test_client.get("/readyz").status_code == 200
        assert test_client.get("/v1/availability/web/SKU-1", headers=headers).status_code == 200
        service.stop(kill=True)
        ready = test_client.get("/readyz")
        assert ready.status_code == 503
        for reply in (
            test_client.get("/v1/availability/web/SKU-2", headers=headers),
            test_client.post(
                "/v1/availability/web/query", json={"skus": ["A", "B"]}, headers=headers
            ),
        ):
            assert reply.status_code == 503, reply.text
            assert reply.headers["content-type"].startswith("application/problem+json")
            assert "Traceback" not in reply.text
            assert reply.headers["retry-after"]


def test_correlation_id_is_echoed_or_generated(client: TestClient[Any]) -> None:
    given = client.get("/healthz", headers={"X-Correlation-Id": "req-42"})
    assert given.headers["x-correlation-id"] == "req-42"
    made = client.get("/healthz").headers["x-correlation-id"]
    assert len(made) == 32 and made != client.get("/healthz").headers["x-correlation-id"]


def test_oversized_body_is_413_problem_json(redis_url: str) -> None:
    text = config_text(redis_url) + "\n[api]\nmax_body_bytes = 2000\n"
    with TestClient(serving_app(create_app(parse_config(text)))) as small:
        body = {"skus": [f"SKU-{i:06d}" for i in range(400)]}
        reply = small.post(
            "/v1/availability/web/query", json=body, headers={"Authorization": f"Bearer {READ_KEY}"}
        )
        assert reply.status_code == 413
        assert reply.headers["content-type"].startswith("application/problem+json")
        # An order read by the fast path until it passed the limit, then replayed to Litestar.
        order = {
            **ORDER,
            "lines": [{"line_id": str(i), "sku": "S", "quantity": 1} for i in range(100)],
        }
        reply = small.post(
            "/v1/allocations", json=order, headers={"Authorization": f"Bearer {WRITE_KEY}"}
        )
        assert reply.status_code == 413, reply.text
        assert reply.headers["content-type"].startswith("application/problem+json")


def test_keys_never_reach_the_logs(
    client: TestClient[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    for key in (READ_KEY, "not-a-key-but-secret", ADMIN_KEY):
        client.get("/v1/channels", headers={"Authorization": f"Bearer {key}"})
        client.post(
            "/v1/availability/web/query", content=b"{", headers={"Authorization": f"Bearer {key}"}
        )
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for key in (READ_KEY, "not-a-key-but-secret", ADMIN_KEY):
        assert key not in text


# Every route that takes a JSON body, with a body of its own shape to nest inside.
BODIES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/v1/availability/web/query", {"skus": ["SKU-1"]}),
    ("POST", "/v1/allocations", ORDER),
    ("POST", "/v1/allocations/batch", {"orders": [ORDER]}),
    ("PUT", "/v1/channels/web/safety-stock/SKU-1", {"quantity": 3}),
    ("PUT", "/v1/kits/KIT-1", {"components": [{"sku": "SKU-1", "quantity": 2}]}),
]


@pytest.mark.parametrize(("method", "path", "body"), BODIES)
@pytest.mark.parametrize("where", ["whole body", "unknown field", "known field"])
def test_deeply_nested_bodies_answer_400_problem(
    client: TestClient[Any], method: str, path: str, body: dict[str, Any], where: str
) -> None:
    """A body nested 50,000 levels deep (about 100 KB) is a client's error, not a crash."""
    deep = "[" * 50_000 + "]" * 50_000
    if where == "whole body":
        content = deep
    else:
        field = "extra" if where == "unknown field" else next(iter(body))
        content = json.dumps({**body, field: "DEEP"}).replace('"DEEP"', deep)
    headers = {"Authorization": f"Bearer {ALL_KEY}", "Content-Type": "application/json"}
    reply = client.request(method, path, content=content, headers=headers)
    assert reply.status_code == 400, reply.text[:300]
    assert reply.headers["content-type"].startswith("application/problem+json")
    problem = reply.json()
    assert problem["status"] == 400
    assert problem["detail"], problem
    # The process is fine afterwards.
    again = client.get("/v1/channels", headers={"Authorization": f"Bearer {READ_KEY}"})
    assert again.status_code == 200


# Bodies a broken or hostile client sends, each spliced in place of the body's first value.
HOSTILE = {
    "invalid UTF-8": b'"SKU-\xe9"',
    "a lone surrogate": b'"\\ud800"',
    "a number past 64 bits": b"36893488147419103232",
    "NaN": b"NaN",
    "1e400": b"1e400",
    "binary": bytes(range(256)),
    "a million-character string": b'"' + b"S" * 1_000_000 + b'"',
}


@pytest.mark.parametrize(("method", "path", "body"), BODIES)
@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_bodies_answer_400_problem(
    client: TestClient[Any], method: str, path: str, body: dict[str, Any], kind: str
) -> None:
    field = next(iter(body))
    content = json.dumps({**body, field: "HOSTILE"}).encode().replace(b'"HOSTILE"', HOSTILE[kind])
    headers = {"Authorization": f"Bearer {ALL_KEY}", "Content-Type": "application/json"}
    reply = client.request(method, path, content=content, headers=headers)
    assert reply.status_code == 400, reply.text[:300]
    assert reply.headers["content-type"].startswith("application/problem+json")
    assert reply.json()["detail"]
    # A byte-order mark before a good body is refused too, not read as if absent.
    reply = client.request(
        method, path, content=b"\xef\xbb\xbf" + json.dumps(body).encode(), headers=headers
    )
    assert reply.status_code == 400, reply.text[:300]


@pytest.mark.parametrize(("method", "path", "body"), BODIES)
def test_request_bodies_refuse_unknown_fields(
    client: TestClient[Any], method: str, path: str, body: dict[str, Any]
) -> None:
    """A misspelt field (here "backordr") must not pass unnoticed: 400 naming it."""
    headers = {"Authorization": f"Bearer {ALL_KEY}"}
    reply = client.request(method, path, json={**body, "backordr": True}, headers=headers)
    assert reply.status_code == 400, reply.text[:300]
    assert reply.headers["content-type"].startswith("application/problem+json")
    assert "backordr" in reply.json()["detail"]


def test_a_cursor_of_the_earlier_form_still_resumes(client: TestClient[Any]) -> None:
    """Sync jobs may hold a cursor issued before the cursor took its documented form."""
    headers = {"Authorization": f"Bearer {READ_KEY}"}
    old = base64.urlsafe_b64encode(b"0-0/0").decode().rstrip("=")
    reply = client.get(f"/v1/availability/web/changes?cursor={old}", headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.json()["next_cursor"] == old  # nothing changed yet: the same position
    bad = client.get("/v1/availability/web/changes?cursor=bm90LWEtY3Vyc29y", headers=headers)
    assert bad.status_code == 400


def test_a_lost_projection_answers_503_never_zeros(client: TestClient[Any], redis_url: str) -> None:
    """Contract section 4: when Redis answers but has lost the projection (emptied, or an
    empty server in its place), reads answer 503 until it is restored, not "0 available";
    /readyz says so too."""
    headers = {"Authorization": f"Bearer {READ_KEY}"}
    assert client.get("/readyz").status_code == 200
    assert (
        client.get("/v1/availability/web/SKU-L1", headers=headers).json()["available_to_sell"] == 0
    )
    redis.Redis.from_url(redis_url).flushall()  # the data and the marker are gone
    time.sleep(0.4)  # past the cache's staleness bound: no heartbeat without the marker
    for reply in (
        client.get("/v1/availability/web/SKU-L1", headers=headers),  # cached before
        client.get("/v1/availability/web/SKU-L2", headers=headers),  # never read
        client.post("/v1/availability/web/query", json={"skus": ["SKU-L1", "X"]}, headers=headers),
        client.get("/readyz"),
    ):
        assert reply.status_code == 503, reply.text
        assert reply.headers["content-type"].startswith("application/problem+json")
        assert reply.headers["retry-after"]
    # as `atp rebuild` ends
    initialize(redis.Redis.from_url(redis_url), keys.SINGLE, "rebuild", replace=True)
    assert client.get("/v1/availability/web/SKU-L2", headers=headers).status_code == 200
    assert client.get("/readyz").status_code == 200
