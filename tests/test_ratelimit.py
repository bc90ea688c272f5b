"""A client polling in a tight loop is held to its tenant's read limit; other
tenants, and uploads, are not slowed by it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from service.errors import ServiceError
from service.ratelimit import TenantReadLimiter
from service.settings import Settings
from tests.test_api import assert_problem, running, upload


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_allows_the_burst_then_the_rate() -> None:
    clock = FakeClock()
    limiter = TenantReadLimiter(per_second=2.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.take("acme")
    with pytest.raises(ServiceError) as refused:
        limiter.take("acme")
    assert refused.value.status == 429 and refused.value.code == "rate_limited"
    assert refused.value.headers["Retry-After"] == "1"
    limiter.take("globex")  # another tenant has its own bucket
    clock.now += 0.5  # one token back at 2 per second
    limiter.take("acme")
    with pytest.raises(ServiceError):
        limiter.take("acme")
    clock.now += 60  # refills up to the burst, no further
    for _ in range(3):
        limiter.take("acme")
    with pytest.raises(ServiceError):
        limiter.take("acme")


def test_retry_after_says_when_a_token_is_back() -> None:
    clock = FakeClock()
    limiter = TenantReadLimiter(per_second=0.1, burst=1, clock=clock)
    limiter.take("acme")
    with pytest.raises(ServiceError) as refused:
        limiter.take("acme")
    assert refused.value.headers["Retry-After"] == "10"


def test_zero_switches_the_limit_off() -> None:
    limiter = TenantReadLimiter(per_second=0, burst=1, clock=FakeClock())
    for _ in range(1000):
        limiter.take("acme")


def test_a_tight_polling_loop_gets_429_and_others_do_not(
    make_settings: Callable[..., Settings],
) -> None:
    acme, globex = "acme-secret-0123456789", "globex-secret-012345"
    settings = make_settings(
        API_KEYS=f"acme:{acme},globex:{globex}",
        TENANT_READS_PER_SECOND=0.2,
        TENANT_READ_BURST=5,
    )
    with running(settings) as client:

        def as_(key: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {key}", "Content-Type": "text/plain"}

        ids = {}
        for key in (acme, globex):
            answer = upload(client, "p.txt", b"poll me", headers=as_(key), wait=10)
            assert answer.status_code == 201, answer.text
            ids[key] = answer.json()["id"]
        codes = [
            client.get(f"/v1/objects/{ids[acme]}", headers=as_(acme)).status_code for _ in range(20)
        ]
        assert codes[:5] == [200] * 5 and set(codes[5:]) == {429}, codes
        refused = client.get("/v1/objects", headers=as_(acme))
        body = assert_problem(refused, 429, "rate_limited")
        assert "wait" in body["detail"]
        assert 1 <= int(refused.headers["retry-after"]) <= 5
        # the other tenant reads as usual, and the polling tenant may still upload
        assert client.get(f"/v1/objects/{ids[globex]}", headers=as_(globex)).status_code == 200
        assert client.get("/v1/objects", headers=as_(globex)).status_code == 200
        assert upload(client, "q.txt", b"q", headers=as_(acme)).status_code == 202
