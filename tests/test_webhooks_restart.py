"""A webhook survives kill -9: the receiver is down while the service is
SIGKILLed and restarted, and still gets the event afterwards, signed with the
secret that `verified-urls webhooks secret` prints."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.service_process import SERVICE_BIN, ServiceRunner, wait_until_gone
from tests.webhook_receiver import Receiver, verify_signature

ENV = {
    "VERIFIED_URLS_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
    "VERIFIED_URLS_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
    "VERIFIED_URLS_WEBHOOK_RETRY_MAX_SECONDS": "1",
    "VERIFIED_URLS_LEASE_SECONDS": "5",
}


def test_event_outlives_a_down_receiver_and_a_sigkill(tmp_path: Path) -> None:
    receiver = Receiver(free_port())  # not listening yet: every attempt fails
    with ServiceRunner(tmp_path / "service") as runner:
        service = runner.start(ENV)
        with httpx.Client(base_url=service.base_url, timeout=30.0) as client:
            record = client.post(
                "/v1/objects",
                params={"name": "survivor.txt", "wait": 10, "callback_url": receiver.url},
                content=b"still told",
            ).json()
            assert record["state"] == "verified", record
            deadline = time.monotonic() + 20
            attempts: list[dict[str, object]] = []
            while time.monotonic() < deadline and len(attempts) < 2:
                [delivery] = client.get(f"/v1/objects/{record['id']}/deliveries").json()["items"]
                attempts = delivery["attempts"]
                time.sleep(0.1)
            assert delivery["state"] == "pending" and len(attempts) >= 2, delivery
            assert all(a["http_status"] is None and a["error"] for a in attempts)
        service.kill()
        assert service.store_pid is not None and wait_until_gone(service.store_pid, 10.0)

        receiver.start()
        try:
            restarted = runner.start(ENV)
            [got] = receiver.wait_for(1, timeout_seconds=30)
            with httpx.Client(base_url=restarted.base_url, timeout=30.0) as client:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    [delivery] = client.get(f"/v1/objects/{record['id']}/deliveries").json()[
                        "items"
                    ]
                    if delivery["state"] == "delivered":
                        break
                    time.sleep(0.1)
            assert delivery["state"] == "delivered", delivery
            assert delivery["attempts"][-1]["http_status"] == 200
            assert got.headers["webhook-id"] == delivery["webhook_id"]
            assert json.loads(got.body)["data"]["id"] == record["id"]
            secret = subprocess.run(
                [str(SERVICE_BIN), "webhooks", "secret", "--tenant", "default"],
                env=runner.environment(ENV),
                cwd=runner.workdir,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            assert verify_signature(secret, got.headers, got.body)
        finally:
            receiver.stop()
