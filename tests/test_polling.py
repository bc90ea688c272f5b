"""What polling clients and browsers get: ETags with 304, and CORS."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings


def test_status_reads_carry_an_etag_and_answer_304(make_settings: Callable[..., Settings]) -> None:
    with TestClient(create_app(make_settings(), run_worker=False)) as client:
        posted = client.post("/v1/objects", params={"name": "e"}, content=b"x")
        object_id = posted.json()["id"]
        first = client.get(f"/v1/objects/{object_id}")
        etag = first.headers["etag"]
        assert etag.startswith('"') and first.json()["state"] == "pending"
        same = client.get(f"/v1/objects/{object_id}", headers={"If-None-Match": etag})
        assert same.status_code == 304 and same.content == b""
        assert same.headers["etag"] == etag and "retry-after" in same.headers
        other = client.get(f"/v1/objects/{object_id}", headers={"If-None-Match": '"stale"'})
        assert other.status_code == 200
    # the record changes when the verifier settles it, and so does its ETag
    with TestClient(create_app(make_settings())) as client:
        settled = client.get(f"/v1/objects/{object_id}", params={"wait": 10})
        assert settled.json()["state"] == "verified"
        assert settled.headers["etag"] != etag
        fresh = client.get(f"/v1/objects/{object_id}", headers={"If-None-Match": etag})
        assert fresh.status_code == 200


def test_cors_lets_listed_origins_read_the_protocol_headers(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(CORS_ALLOWED_ORIGINS="https://app.example")
    with TestClient(create_app(settings, run_worker=False)) as client:
        preflight = client.options(
            "/v1/objects",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-digest",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        posted = client.post(
            "/v1/objects",
            params={"name": "c"},
            content=b"x",
            headers={"Origin": "https://app.example"},
        )
        exposed = {
            h.strip().lower() for h in posted.headers["access-control-expose-headers"].split(",")
        }
        assert {"location", "retry-after", "etag"} <= exposed
        stranger = client.get("/v1/objects", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in stranger.headers


def test_without_origins_configured_there_is_no_cors(
    make_settings: Callable[..., Settings],
) -> None:
    with TestClient(create_app(make_settings(), run_worker=False)) as client:
        response = client.get("/v1/objects", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in response.headers
