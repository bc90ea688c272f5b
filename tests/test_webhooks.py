"""Webhooks: signed events from a durable outbox, retried, replayable, with
callback URLs checked. A real HTTP receiver on loopback; signatures are checked
with an implementation written from the Standard Webhooks description."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.ledger.database import make_engine, make_sessionmaker
from service.settings import Settings
from service.webhooks import outbox
from tests.conftest import free_port
from tests.webhook_receiver import Receiver, verify_signature

FAST_RETRIES = {
    "WEBHOOK_ALLOW_PRIVATE_NETWORKS": True,
    "WEBHOOK_RETRY_BASE_SECONDS": 0.05,
    "WEBHOOK_RETRY_MAX_SECONDS": 0.2,
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver(free_port()).start()
    yield started
    started.stop()


@pytest.fixture
def webhook_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    return lambda **overrides: make_settings(**{**FAST_RETRIES, **overrides})


def secret_of(settings: Settings, tenant: str = "default") -> list[str]:
    engine = make_engine(settings.DATABASE_URL)
    try:
        row = outbox.ensure_settings(make_sessionmaker(engine), tenant)
        return [row.secret] + ([row.previous_secret] if row.previous_secret else [])
    finally:
        engine.dispose()


def upload(client: TestClient, name: str, callback_url: str | None, **params: Any) -> Any:
    query: dict[str, Any] = {"name": name, "wait": 10, **params}
    if callback_url is not None:
        query["callback_url"] = callback_url
    return client.post("/v1/objects", params=query, content=b"some bytes")


def deliveries(client: TestClient, object_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/objects/{object_id}/deliveries")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def wait_delivered(client: TestClient, object_id: str, number: int = 1) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        items = deliveries(client, object_id)
        if len(items) >= number and items[number - 1]["state"] != "pending":
            return items[number - 1]
        time.sleep(0.05)
    raise AssertionError(f"delivery {number} of {object_id} still pending: {items}")


def test_verified_event_is_signed_and_carries_the_record(
    webhook_settings: Callable[..., Settings], receiver: Receiver
) -> None:
    settings = webhook_settings()
    with TestClient(create_app(settings)) as client:
        record = upload(client, "hooked.txt", receiver.url).json()
        assert record["state"] == "verified" and record["callback_url"] == receiver.url
        [got] = receiver.wait_for(1)
        delivered = wait_delivered(client, record["id"])
    [secret] = secret_of(settings)
    assert secret.startswith("whsec_")
    assert verify_signature(secret, got.headers, got.body)
    assert not verify_signature("whsec_" + "A" * 44, got.headers, got.body)
    tampered = got.body.replace(b"hooked", b"hacked")
    assert not verify_signature(secret, got.headers, tampered)
    event = json.loads(got.body)
    assert event["type"] == "object.verified"
    assert event["data"]["id"] == record["id"] and event["data"]["url"] == record["url"]
    assert got.headers["content-type"] == "application/json"
    assert delivered["state"] == "delivered" and delivered["number"] == 1
    assert delivered["webhook_id"] == got.headers["webhook-id"]
    assert [a["http_status"] for a in delivered["attempts"]] == [200]
    assert delivered["event_type"] == "object.verified" and delivered["url"] == receiver.url


def test_a_failing_receiver_gets_the_same_event_until_it_answers_2xx(
    webhook_settings: Callable[..., Settings], receiver: Receiver
) -> None:
    receiver.script = [500, 500, 500]
    with TestClient(create_app(webhook_settings())) as client:
        record = upload(client, "retried.txt", receiver.url).json()
        delivered = wait_delivered(client, record["id"])
    got = receiver.wait_for(4)
    assert len(got) == 4
    assert len({item.headers["webhook-id"] for item in got}) == 1
    assert len({item.body for item in got}) == 1
    assert [a["http_status"] for a in delivered["attempts"]] == [500, 500, 500, 200]
    assert [a["error"] for a in delivered["attempts"]] == ["HTTP 500"] * 3 + [None]
    assert delivered["state"] == "delivered"


def test_a_delivery_gives_up_after_the_retry_window(
    webhook_settings: Callable[..., Settings], receiver: Receiver
) -> None:
    receiver.script = [503] * 1000
    with TestClient(create_app(webhook_settings(WEBHOOK_RETRY_FOR_SECONDS=0.5))) as client:
        record = upload(client, "never-acked.txt", receiver.url).json()
        given_up = wait_delivered(client, record["id"])
    assert given_up["state"] == "failed" and given_up["next_attempt_at"] is None
    assert len(given_up["attempts"]) >= 2
    assert len(receiver.received) == len(given_up["attempts"])


def test_replay_sends_the_event_again(
    webhook_settings: Callable[..., Settings], receiver: Receiver
) -> None:
    settings = webhook_settings()
    with TestClient(create_app(settings)) as client:
        record = upload(client, "replayed.txt", receiver.url).json()
        wait_delivered(client, record["id"])
        replay = client.post(f"/v1/objects/{record['id']}/deliveries/1/replay")
        assert replay.status_code == 202, replay.text
        assert replay.json()["number"] == 2 and replay.json()["state"] == "pending"
        second = wait_delivered(client, record["id"], number=2)
        missing = client.post(f"/v1/objects/{record['id']}/deliveries/9/replay")
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"
        bad = client.post(f"/v1/objects/{record['id']}/deliveries/zero/replay")
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"
    first, again = receiver.wait_for(2)
    assert second["state"] == "delivered"
    assert again.headers["webhook-id"] == first.headers["webhook-id"] == second["webhook_id"]
    assert again.body == first.body
    [secret] = secret_of(settings)
    assert verify_signature(secret, again.headers, again.body)


def test_a_failed_object_sends_object_failed(
    webhook_settings: Callable[..., Settings], receiver: Receiver
) -> None:
    settings = webhook_settings(BUCKET="no-such-bucket-here", CREATE_BUCKET=False, ROUNDS=1)
    with TestClient(create_app(settings)) as client:
        record = upload(client, "doomed.txt", receiver.url).json()
        assert record["state"] == "failed"
        wait_delivered(client, record["id"])
    [got] = receiver.wait_for(1)
    event = json.loads(got.body)
    assert event["type"] == "object.failed"
    assert event["data"]["error"]["code"] == "store_rejected" and event["data"]["url"] is None


def test_no_callback_no_delivery_and_the_tenant_default_applies(
    webhook_settings: Callable[..., Settings], receiver: Receiver
) -> None:
    settings = webhook_settings()
    with TestClient(create_app(settings)) as client:
        plain = upload(client, "plain.txt", None).json()
        assert plain["state"] == "verified" and plain["callback_url"] is None
        assert deliveries(client, plain["id"]) == []
        engine = make_engine(settings.DATABASE_URL)
        outbox.set_default_url(make_sessionmaker(engine), "default", receiver.url)
        engine.dispose()
        record = upload(client, "by-default.txt", None).json()
        delivered = wait_delivered(client, record["id"])
    assert delivered["url"] == receiver.url and delivered["state"] == "delivered"
    [got] = receiver.wait_for(1)
    assert json.loads(got.body)["data"]["id"] == record["id"]


def test_during_a_rotation_both_secrets_sign(
    webhook_settings: Callable[..., Settings], receiver: Receiver
) -> None:
    settings = webhook_settings()
    [old] = secret_of(settings)
    engine = make_engine(settings.DATABASE_URL)
    new = outbox.rotate_secret(make_sessionmaker(engine), "default", 3600).secret
    engine.dispose()
    assert new != old
    with TestClient(create_app(settings)) as client:
        upload(client, "rotated.txt", receiver.url)
        [got] = receiver.wait_for(1)
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    assert verify_signature(new, got.headers, got.body)
    assert verify_signature(old, got.headers, got.body)


def test_rotation_overlap_ends(
    webhook_settings: Callable[..., Settings], receiver: Receiver
) -> None:
    settings = webhook_settings()
    [old] = secret_of(settings)
    engine = make_engine(settings.DATABASE_URL)
    new = outbox.rotate_secret(make_sessionmaker(engine), "default", 0).secret
    engine.dispose()
    with TestClient(create_app(settings)) as client:
        upload(client, "rotated-out.txt", receiver.url)
        [got] = receiver.wait_for(1)
    assert verify_signature(new, got.headers, got.body)
    assert not verify_signature(old, got.headers, got.body)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example.com/x",
        "file:///etc/passwd",
        "https://user:pw@hooks.example.com/x",
        "http://127.0.0.1:9/x",
        "http://localhost/x",
        "http://10.1.2.3/x",
        "http://192.168.0.10/x",
        "http://172.16.5.4/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x",
        "http://[fe80::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://0.0.0.0/x",
        "http:///no-host",
        "https://hooks.example.com/x#frag",
        "http://hooks.example.com:99999/x",
        "http://hooks.example.com:0/x",
        "http://[::127.0.0.1]/x",
        "http://[::ffff:0:7f00:1]/x",
        "http://[64:ff9b::127.0.0.1]/x",
        "http://[2002:7f00:1::]/x",
        "http://[fec0::1]/x",
        "http://[v1.x]/x",
        "http://127.0.0.1./x",
        "http://127.0.0.1%2e:8901/x",
        "http://%31%32%37.0.0.1/x",
        "http://127.0.0.1%00.example.com/x",
        "http://2130706433/x",
        "http://0x7f.1/x",
        "HTTP://LOCALHOST./x",
        "https://hooks.example.com/a b",
        "not a url",
    ],
)
def test_refused_callback_urls_are_400_and_keep_nothing(
    make_settings: Callable[..., Settings], url: str
) -> None:
    with TestClient(create_app(make_settings(), run_worker=False)) as client:
        response = upload(client, "refused.txt", url)
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "invalid_callback_url"
        assert response.headers["content-type"] == "application/problem+json"
        assert client.get("/v1/objects").json()["items"] == []


def test_loopback_callbacks_are_allowed_by_the_setting(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True)
    with TestClient(create_app(settings, run_worker=False)) as client:
        response = upload(client, "allowed.txt", "http://127.0.0.1:9/x")
        assert response.status_code == 202, response.text
        still_bad = upload(client, "creds.txt", "http://u:p@127.0.0.1:9/x")
        assert still_bad.status_code == 400


def test_another_tenants_deliveries_are_not_found(
    webhook_settings: Callable[..., Settings], receiver: Receiver
) -> None:
    settings = webhook_settings(API_KEYS="acme:acme-secret-key,globex:globex-secret-key")
    with TestClient(create_app(settings)) as client:
        acme = {"Authorization": "Bearer acme-secret-key"}
        globex = {"Authorization": "Bearer globex-secret-key"}
        record = client.post(
            "/v1/objects",
            params={"name": "a.txt", "wait": 10, "callback_url": receiver.url},
            content=b"x",
            headers=acme,
        ).json()
        wait = client.get(f"/v1/objects/{record['id']}/deliveries", headers=acme)
        assert wait.status_code == 200
        other = client.get(f"/v1/objects/{record['id']}/deliveries", headers=globex)
        assert other.status_code == 404 and other.json()["code"] == "not_found"
        replay = client.post(f"/v1/objects/{record['id']}/deliveries/1/replay", headers=globex)
        assert replay.status_code == 404
        assert client.get(f"/v1/objects/{record['id']}/deliveries").status_code == 401
    [got] = receiver.wait_for(1)
    [acme_secret] = secret_of(settings, "acme")
    assert verify_signature(acme_secret, got.headers, got.body)


def test_the_callback_is_in_the_contract() -> None:
    import yaml

    document = yaml.safe_load(Path("openapi.yaml").read_text(encoding="utf-8"))
    upload_operation = document["paths"]["/v1/objects"]["post"]
    callback = upload_operation["callbacks"]["object_settled"]
    operation = callback["{$request.query.callback_url}"]["post"]
    headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/WebhookEvent"}
    assert {"callback_url"} <= {p["name"] for p in upload_operation["parameters"]}
    paths = document["paths"]
    assert "get" in paths["/v1/objects/{object_id}/deliveries"]
    assert "post" in paths["/v1/objects/{object_id}/deliveries/{number}/replay"]


def test_an_attempt_is_bounded_as_a_whole(
    webhook_settings: Callable[..., Settings], receiver: Receiver
) -> None:
    """A receiver trickling its answer out (each read within the timeout) is cut
    off at WEBHOOK_TIMEOUT_SECONDS, recorded, and retried; never sent twice at once."""
    receiver.trickle_seconds = 3.0
    settings = webhook_settings(WEBHOOK_TIMEOUT_SECONDS=0.5)
    with TestClient(create_app(settings)) as client:
        record = upload(client, "slow-receiver.txt", receiver.url).json()
        got = receiver.wait_for(2)
        receiver.trickle_seconds = 0.0
        delivered = wait_delivered(client, record["id"])
    assert len(got) >= 2
    first = delivered["attempts"][0]
    assert first["http_status"] is None and first["error"] == "no answer within 0.5 s"
    assert first["latency_ms"] < 2000
    assert delivered["state"] == "delivered"
    assert delivered["attempts"][-1]["http_status"] == 200


def test_deleting_an_object_ends_its_deliveries(
    webhook_settings: Callable[..., Settings], receiver: Receiver
) -> None:
    receiver.script = [500] * 10_000
    with TestClient(create_app(webhook_settings())) as client:
        record = upload(client, "deleted-soon.txt", receiver.url).json()
        receiver.wait_for(2)
        assert client.delete(f"/v1/objects/{record['id']}").status_code == 200
        [delivery] = deliveries(client, record["id"])
        assert delivery["state"] == "failed" and delivery["next_attempt_at"] is None
        import time

        count = len(receiver.received)
        time.sleep(1.0)
        assert len(receiver.received) <= count + 1  # at most one already in flight
        replay = client.post(f"/v1/objects/{record['id']}/deliveries/1/replay")
        assert replay.status_code == 409 and replay.json()["code"] == "object_deleted"


def test_an_attempt_goes_to_the_address_that_was_checked(
    webhook_settings: Callable[..., Settings], receiver: Receiver
) -> None:
    """A name is resolved once per attempt and the POST goes to that address,
    with the name in Host; a name that does not resolve is a failed attempt."""
    url = f"http://localhost:{receiver.port}/hooks"
    with TestClient(create_app(webhook_settings())) as client:
        record = upload(client, "by-name.txt", url).json()
        delivered = wait_delivered(client, record["id"])
        unresolvable = upload(client, "nowhere.txt", "http://no-such-host.invalid/x").json()
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            [pending] = deliveries(client, unresolvable["id"])
            if pending["attempts"]:
                break
            time.sleep(0.05)
    [got] = receiver.wait_for(1)
    assert got.headers["host"] == f"localhost:{receiver.port}"
    assert delivered["state"] == "delivered"
    assert pending["state"] == "pending"
    assert "does not resolve" in pending["attempts"][0]["error"]
