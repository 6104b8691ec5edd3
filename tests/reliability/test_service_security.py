"""Issue 12, the service secure by default: bodies capped by the bytes read, admin routes off
without a key, an optional client key, CORS opt-in, /docs offline, no paths in error bodies,
strict request types (422 naming the field)."""
from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from twotower.index.run_index import build_run_index
from twotower.serve.app import create_app
from twotower.serve.security import ADMIN_DISABLED, SecurityConfig, public_message

QUERY = {"queries": [{"user_id": 1, "query_text": "running shoes"}], "k": 3}


@pytest.fixture(scope="module")
def open_client(served_run):
    """The defaults: no key of any kind, no CORS, docs on."""
    return TestClient(create_app(served_run), raise_server_exceptions=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_url(served_run):
    """The app under a real uvicorn on loopback (chunked bodies reach it as real chunks)."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(served_run), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.mark.parametrize("size", [1_300_000, 6 << 20], ids=["1.3MB", "6MiB"])
def test_chunked_bodies_over_the_limit_get_413(live_url, size):
    def chunks():  # no Content-Length: transfer-encoding chunked
        sent = 0
        while sent < size:
            part = min(64 << 10, size - sent)
            sent += part
            yield b" " * part

    r = httpx.post(live_url + "/retrieve", content=chunks(), timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over 1048576 bytes" in r.json()["detail"]
    small = httpx.post(live_url + "/retrieve", content=iter([json.dumps(QUERY).encode()]),
                       headers={"content-type": "application/json"}, timeout=30)
    assert small.status_code == 200, small.text  # a chunked body under the limit is fine


def test_admin_routes_off_without_a_key_and_keyed_with_one(served_run, open_client):
    r = open_client.post("/admin/reload")
    assert r.status_code == 403 and r.json()["detail"] == ADMIN_DISABLED
    keyed = TestClient(create_app(served_run, api_key="s3cret"))
    assert keyed.post("/admin/reload").status_code == 401
    assert keyed.post("/admin/reload", headers={"X-API-Key": "wrong"}).status_code == 401
    assert keyed.post("/admin/reload", headers={"X-API-Key": "sécret".encode()}).status_code == 401
    assert keyed.post("/admin/reload", headers={"X-API-Key": "s3cret"}).status_code == 200
    r = keyed.post("/admin/reload", headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and r.json()["index_version"] == "v000001"
    # the read routes stay open when only an admin key is set
    assert keyed.post("/retrieve", json=QUERY).status_code == 200


def test_optional_client_key_guards_retrieve_and_metadata(served_run):
    client = TestClient(create_app(served_run, security=SecurityConfig(api_key="adm",
                                                                       client_key="cli")))
    for method, path, body in (("post", "/retrieve", QUERY), ("get", "/metadata", None)):
        call = getattr(client, method)
        kw = {"json": body} if body else {}
        r = call(path, **kw)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert call(path, headers={"X-API-Key": "nope"}, **kw).status_code == 401
        assert call(path, headers={"X-API-Key": "cli"}, **kw).status_code == 200
        assert call(path, headers={"Authorization": "Bearer cli"}, **kw).status_code == 200
        assert call(path, headers={"X-API-Key": "adm"}, **kw).status_code == 200
    assert client.get("/health").status_code == 200  # liveness probes need no key
    # the client key does not open admin routes
    assert client.post("/admin/reload", headers={"X-API-Key": "cli"}).status_code == 401


def test_cors_is_opt_in(served_run, open_client):
    origin = {"Origin": "http://app.example"}
    assert "access-control-allow-origin" not in open_client.get("/health", headers=origin).headers
    pre = open_client.options("/retrieve", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers
    client = TestClient(create_app(served_run, security=SecurityConfig(
        cors_origins=("http://app.example",))))
    assert client.get("/health", headers=origin).headers["access-control-allow-origin"] == \
        "http://app.example"
    pre = client.options("/retrieve", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 200 and "x-api-key" in pre.headers["access-control-allow-headers"]
    other = client.get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_docs_are_served_offline(served_run, open_client):
    page = open_client.get("/docs")
    assert page.status_code == 200
    assert "http://" not in page.text and "https://" not in page.text, "a CDN link"
    js = open_client.get("/docs-static/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000 and "SwaggerUIBundle" in js.text
    assert open_client.get("/docs-static/swagger-ui.css").status_code == 200
    assert open_client.get("/openapi.json").json()["paths"]["/retrieve"]
    assert open_client.get("/redoc").status_code == 404  # ReDoc loads from a CDN: not offered
    off = TestClient(create_app(served_run, docs=False))
    assert off.get("/docs").status_code == 404 and off.get("/openapi.json").status_code == 200


def test_error_bodies_carry_no_filesystem_path(run_copy):
    client = TestClient(create_app(run_copy, api_key="k"), raise_server_exceptions=False)
    build_run_index(run_copy, "flat")
    (run_copy / "index" / "v000002" / "index.faiss").write_bytes(b"garbage")
    r = client.post("/admin/reload", headers={"X-API-Key": "k"})
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert "still serving v000001" in detail and "index/v000002/index.faiss" in detail, detail
    assert str(run_copy) not in r.text and "/tmp" not in r.text, detail
    # any other absolute path is cut to its last part
    assert public_message("/etc/secret/x.json: bad", []) == "x.json: bad"
    assert public_message(f"{run_copy}/contract.json missing", [run_copy]) == "contract.json missing"


BAD_REQUESTS = {  # raw JSON body -> the field the 422 must name
    "user_id 10**30": ('{"queries": [{"user_id": %d}]}' % 10**30, "user_id"),
    "user_id -2**63-1": ('{"queries": [{"user_id": %d}]}' % (-(2**63) - 1), "user_id"),
    "k Infinity": ('{"queries": [{"user_id": 1}], "k": Infinity}', "k"),
    "k NaN": ('{"queries": [{"user_id": 1}], "k": NaN}', "k"),
    "k true": ('{"queries": [{"user_id": 1}], "k": true}', "k"),
    "k 2.0": ('{"queries": [{"user_id": 1}], "k": 2.0}', "k"),
    "user_id true": ('{"queries": [{"user_id": true}]}', "user_id"),
    "user_id a list": ('{"queries": [{"user_id": [1, 2]}]}', "user_id"),
    "user_id a fraction": ('{"queries": [{"user_id": 1.5}]}', "user_id"),
    "user_id Infinity": ('{"queries": [{"user_id": Infinity}]}', "user_id"),
    "query_text a list": ('{"queries": [{"user_id": 1}, {"query_text": ["a", "b"]}]}', "query_text"),
    "query_text a number": ('{"queries": [{"query_text": 12}]}', "query_text"),
    "exclude true": ('{"queries": [{"user_id": 1}], "exclude": [[true]]}', "exclude"),
    "exclude 10**30": ('{"queries": [{"user_id": 1}], "exclude": [[%d]]}' % 10**30, "exclude"),
    "reload version a path": (None, "version"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_strict_request_types_are_422_naming_the_field(served_run, open_client, case):
    body, field = BAD_REQUESTS[case]
    if body is None:
        client = TestClient(create_app(served_run, api_key="k"), raise_server_exceptions=False)
        r = client.post("/admin/reload", json={"version": "../../other/index/v000001"},
                        headers={"X-API-Key": "k"})
    else:
        r = open_client.post("/retrieve", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert field in detail[0]["loc"], detail
    assert "input" not in detail[0]  # never echoed (Infinity cannot even be encoded)
    if case == "query_text a list":
        assert detail[0]["loc"] == ["body", "queries", 1, "query_text"]
