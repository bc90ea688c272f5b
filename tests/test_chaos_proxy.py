"""The fault-injecting proxy in front of moto's server.

Every fault is checked from both ends: what a client talking to the proxy sees,
and what moto really holds, asked directly. Rates are measured the same way,
never from the proxy's own counters.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError, HTTPClientError, ReadTimeoutError

import tests.test_store_contract as contract
from service.chaos import ChaosProxy, add_command, config_for
from service.chaos.faults import (
    Action,
    ConfigError,
    Decision,
    FaultConfig,
    FaultPlan,
    RequestInfo,
    Script,
    classify,
)
from service.chaos.proxy import ByteFlipper
from service.storage.base import NotFound, PutRequest, StoreCalls, multipart_etag
from service.storage.s3 import S3Store
from tests.chaos_support import (
    no_retry_client,
    outcome_of,
    read_log,
    status_of,
    stored_bytes,
)
from tests.conftest import free_port, public_read_policy, s3_client, wait_for_http

MIB = 1024 * 1024
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def start_proxy(moto_endpoint: str) -> Iterator[Callable[..., ChaosProxy]]:
    """Starts proxies in front of moto; every one is stopped after the test."""
    started: list[ChaosProxy] = []

    def start(**kwargs: Any) -> ChaosProxy:
        kwargs.setdefault("seed", 1)
        proxy = ChaosProxy(moto_endpoint, **kwargs)
        proxy.start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def client_for() -> Iterator[Callable[..., Any]]:
    """No-retry boto3 clients, closed after the test."""
    clients: list[Any] = []

    def make(endpoint: str, read_timeout_seconds: float = 30.0) -> Any:
        client = no_retry_client(endpoint, read_timeout_seconds)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def direct(moto_endpoint: str, client_for: Callable[..., Any]) -> Any:
    """A client straight at moto: the truth behind the proxy."""
    return client_for(moto_endpoint)


def new_bucket(direct: Any) -> str:
    name = f"chaos-{uuid.uuid4().hex[:12]}"
    direct.create_bucket(Bucket=name)
    return name


def spooled(tmp_path: Path, data: bytes, key: str, part_size: int | None = None) -> PutRequest:
    path = tmp_path / uuid.uuid4().hex
    path.write_bytes(data)
    parts: tuple[str, ...] = ()
    if part_size is not None:
        parts = tuple(
            hashlib.md5(data[i : i + part_size]).hexdigest() for i in range(0, len(data), part_size)
        )
    return PutRequest(
        key=key,
        source=path,
        size=len(data),
        md5_hex=hashlib.md5(data).hexdigest(),
        content_type="application/octet-stream",
        part_size=part_size,
        part_md5s=parts,
    )


def differing_offsets(a: bytes, b: bytes) -> list[int]:
    return [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]


# ---------------------------------------------------------------- transparency

CONTRACT_TESTS = [
    function
    for name, function in sorted(vars(contract).items())
    if name.startswith("test_")
    and inspect.isfunction(function)
    and {"store", "moto_endpoint"} & set(inspect.signature(function).parameters)
]


@pytest.mark.parametrize("contract_test", CONTRACT_TESTS, ids=lambda f: f.__name__)
def test_store_contract_passes_through_the_transparent_proxy(
    contract_test: Callable[..., None],
    start_proxy: Callable[..., ChaosProxy],
    bucket: str,
    tmp_path: Path,
) -> None:
    proxy = start_proxy(profile="none")
    store = S3Store(s3_client(proxy.url), bucket, "us-east-1")
    available = {"store": store, "tmp_path": tmp_path, "moto_endpoint": proxy.url}
    contract_test(**{name: available[name] for name in inspect.signature(contract_test).parameters})
    stats = proxy.stats()
    assert stats["injected_total"] == 0
    assert stats["forwarded"]["total"] == stats["requests"]["total"] > 0


def test_concurrent_clients_through_the_transparent_proxy(
    start_proxy: Callable[..., ChaosProxy], client_for: Callable[..., Any], direct: Any, bucket: str
) -> None:
    proxy = start_proxy(profile="none")
    client = client_for(proxy.url)
    objects = {f"c{i}": os.urandom(100_000 + i) for i in range(64)}

    def round_trip(key: str) -> bytes:
        client.put_object(Bucket=bucket, Key=key, Body=objects[key])
        body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    with ThreadPoolExecutor(max_workers=8) as pool:
        read_back = dict(zip(objects, pool.map(round_trip, objects), strict=True))
    assert read_back == objects
    assert all(stored_bytes(direct, bucket, key) == data for key, data in objects.items())


def test_big_objects_stream_through_without_being_held(
    moto_endpoint: str, client_for: Callable[..., Any], direct: Any, bucket: str, tmp_path: Path
) -> None:
    """A 96 MiB object up and down: the proxy process never holds more than a few MiB of it."""
    size = 96 * MIB
    source = tmp_path / "big"
    with source.open("wb") as out:
        for _ in range(size // MIB):
            out.write(os.urandom(MIB))
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.chaos",
            "--upstream",
            moto_endpoint,
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = client_for(f"http://127.0.0.1:{port}")
    try:
        wait_for_http(f"http://127.0.0.1:{port}/_chaos/stats", timeout_seconds=20, process=process)
        with source.open("rb") as body:
            client.put_object(Bucket=bucket, Key="big", Body=body)
        digest = hashlib.sha256()
        answer = client.get_object(Bucket=bucket, Key="big")["Body"]
        for chunk in answer.iter_chunks(MIB):
            digest.update(chunk)
        answer.close()
        peak_kib = peak_memory_kib(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=10)
        direct.delete_object(Bucket=bucket, Key="big")  # moto holds objects in memory
    assert digest.hexdigest() == hashlib.sha256(source.read_bytes()).hexdigest()
    assert peak_kib < 80 * 1024, f"the proxy peaked at {peak_kib} KiB"


def peak_memory_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_an_unreachable_store_is_a_502_not_a_hang(client_for: Callable[..., Any]) -> None:
    with ChaosProxy(f"http://127.0.0.1:{free_port()}") as proxy:
        client = client_for(proxy.url)
        assert outcome_of(lambda: client.put_object(Bucket="bkt", Key="k", Body=b"x")) == "502"
        assert outcome_of(lambda: client.head_object(Bucket="bkt", Key="k")) == "502"
        assert proxy.stats()["forwarded"]["total"] == 0


def test_stop_is_prompt_while_an_answer_is_held(
    start_proxy: Callable[..., ChaosProxy], client_for: Callable[..., Any], bucket: str
) -> None:
    proxy = start_proxy(rates={"slow_answer": 1.0})  # held for the default 35 s
    client = client_for(proxy.url, read_timeout_seconds=60)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(
            outcome_of, lambda: client.put_object(Bucket=bucket, Key="held", Body=b"x")
        )
        time.sleep(0.5)
        started = time.monotonic()
        proxy.stop()
        assert time.monotonic() - started < 2
        assert pending.result(timeout=5) == "reset"


# ---------------------------------------------------------------- scripted faults


def test_scripted_403_answers_twice_then_forwards(
    start_proxy: Callable[..., ChaosProxy], client_for: Callable[..., Any], direct: Any, bucket: str
) -> None:
    proxy = start_proxy()
    proxy.add_script(key=f"{bucket}/k", method="PUT", fault="error_403", times=2)
    client = client_for(proxy.url)
    for _ in range(2):
        with pytest.raises(ClientError) as raised:
            client.put_object(Bucket=bucket, Key="k", Body=b"abc")
        assert status_of(raised.value) == 403
        assert raised.value.response["Error"]["Code"] == "AccessDenied"
        assert stored_bytes(direct, bucket, "k") is None
    answer = client.put_object(Bucket=bucket, Key="k", Body=b"abc")
    assert answer["ETag"] == f'"{hashlib.md5(b"abc").hexdigest()}"'
    assert stored_bytes(direct, bucket, "k") == b"abc"


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("error_403", 403, "AccessDenied"),
        ("error_500", 500, "InternalError"),
        ("error_503", 503, "SlowDown"),
        ("error_429", 429, "429"),
    ],
)
def test_scripted_error_answers_reads_once(
    start_proxy: Callable[..., ChaosProxy],
    client_for: Callable[..., Any],
    direct: Any,
    bucket: str,
    fault: str,
    status: int,
    code: str,
) -> None:
    direct.put_object(Bucket=bucket, Key="r", Body=b"read me")
    proxy = start_proxy()
    proxy.add_script(key=f"{bucket}/r", method="HEAD", fault=fault)
    proxy.add_script(key=f"{bucket}/r", method="GET", fault=fault)
    client = client_for(proxy.url)
    with pytest.raises(ClientError) as raised:
        client.head_object(Bucket=bucket, Key="r")
    assert status_of(raised.value) == status
    assert client.head_object(Bucket=bucket, Key="r")["ContentLength"] == 7
    with pytest.raises(ClientError) as raised:
        client.get_object(Bucket=bucket, Key="r")
    assert (status_of(raised.value), raised.value.response["Error"]["Code"]) == (status, code)
    assert client.get_object(Bucket=bucket, Key="r")["Body"].read() == b"read me"


def test_scripted_errors_hit_each_step_of_a_multipart_upload(
    start_proxy: Callable[..., ChaosProxy], client_for: Callable[..., Any], direct: Any, bucket: str
) -> None:
    proxy = start_proxy()
    key = f"{bucket}/mp"
    proxy.add_script(key=key, method="CREATE_MULTIPART", fault="error_500")
    proxy.add_script(key=key, method="UPLOAD_PART", part=2, fault="error_503")
    proxy.add_script(key=key, method="COMPLETE_MULTIPART", fault="error_403")
    client = client_for(proxy.url)
    parts_data = [os.urandom(5 * MIB), b"tail"]

    create = functools.partial(client.create_multipart_upload, Bucket=bucket, Key="mp")
    assert outcome_of(create) == "500"
    upload_id = create()["UploadId"]
    etags = []
    for number, data in enumerate(parts_data, start=1):
        upload = functools.partial(
            client.upload_part,
            Bucket=bucket,
            Key="mp",
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
        )
        if number == 2:
            assert outcome_of(upload) == "503"
        etags.append(upload()["ETag"])
    parts = {"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]}
    complete = functools.partial(
        client.complete_multipart_upload,
        Bucket=bucket,
        Key="mp",
        UploadId=upload_id,
        MultipartUpload=parts,
    )
    assert outcome_of(complete) == "403"
    assert stored_bytes(direct, bucket, "mp") is None
    complete()
    assert stored_bytes(direct, bucket, "mp") == b"".join(parts_data)


def test_scripted_lost_put_answers_200_and_stores_nothing(
    start_proxy: Callable[..., ChaosProxy], client_for: Callable[..., Any], direct: Any, bucket: str
) -> None:
    proxy = start_proxy()
    proxy.add_script(key=f"{bucket}/lost", method="PUT", fault="lost_put")
    data = os.urandom(300_000)
    answer = client_for(proxy.url).put_object(Bucket=bucket, Key="lost", Body=data)
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert answer["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert stored_bytes(direct, bucket, "lost") is None


def test_scripted_lost_complete_answers_the_right_etag_and_stores_nothing(
    start_proxy: Callable[..., ChaosProxy], bucket: str, tmp_path: Path
) -> None:
    proxy = start_proxy()
    proxy.add_script(key=f"{bucket}/lost-mp", method="POST", fault="lost_put")
    request = spooled(tmp_path, os.urandom(5 * MIB + 10), "lost-mp", part_size=5 * MIB)
    result = S3Store(s3_client(proxy.url), bucket, "us-east-1").put(request, StoreCalls())
    # The ETag a client computes itself matches: only a read can tell the PUT was lost.
    assert result.etag == multipart_etag(request.part_md5s)
    direct_store = S3Store(s3_client(proxy.upstream_url), bucket, "us-east-1")
    with pytest.raises(NotFound):
        direct_store.head("lost-mp", StoreCalls())


def test_scripted_corrupt_put_stores_other_bytes_of_the_same_size(
    start_proxy: Callable[..., ChaosProxy], direct: Any, bucket: str, tmp_path: Path
) -> None:
    proxy = start_proxy()
    proxy.add_script(key=f"{bucket}/bent", method="PUT", fault="corrupt")
    data = os.urandom(MIB)
    request = spooled(tmp_path, data, "bent")
    # The service's own store sends Content-MD5; moto does not check it, so nothing objects.
    result = S3Store(s3_client(proxy.url), bucket, "us-east-1").put(request, StoreCalls())
    held = stored_bytes(direct, bucket, "bent")
    assert held is not None and len(held) == len(data)
    assert len(differing_offsets(held, data)) == 1
    # moto's ETag is the MD5 of what it holds, so a client comparing ETags notices.
    assert result.etag == hashlib.md5(held).hexdigest() != request.md5_hex


def test_scripted_corrupt_upload_part_bends_that_part_only(
    start_proxy: Callable[..., ChaosProxy], direct: Any, bucket: str, tmp_path: Path
) -> None:
    proxy = start_proxy()
    proxy.add_script(key=f"{bucket}/bent-mp", method="UPLOAD_PART", part=2, fault="corrupt")
    data = os.urandom(5 * MIB + 64 * 1024)
    request = spooled(tmp_path, data, "bent-mp", part_size=5 * MIB)
    result = S3Store(s3_client(proxy.url), bucket, "us-east-1").put(request, StoreCalls())
    held = stored_bytes(direct, bucket, "bent-mp")
    assert held is not None and len(held) == len(data)
    (offset,) = differing_offsets(held, data)
    assert offset >= 5 * MIB
    assert result.etag != multipart_etag(request.part_md5s)


def test_scripted_late_visibility_hides_the_key_from_every_reader(
    start_proxy: Callable[..., ChaosProxy], client_for: Callable[..., Any], direct: Any, bucket: str
) -> None:
    proxy = start_proxy()
    proxy.add_script(key=f"{bucket}/late", fault="late_visibility", seconds=1.5)
    direct.put_bucket_policy(Bucket=bucket, Policy=public_read_policy(bucket))
    client = client_for(proxy.url)
    client.put_object(Bucket=bucket, Key="late", Body=b"soon")
    stored_at = time.monotonic()

    assert outcome_of(lambda: client.head_object(Bucket=bucket, Key="late")) == "404"
    with pytest.raises(ClientError) as raised:
        client.get_object(Bucket=bucket, Key="late")
    assert raised.value.response["Error"]["Code"] == "NoSuchKey"
    anonymous = httpx.get(f"{proxy.url}/{bucket}/late", timeout=5)
    assert anonymous.status_code == 404 and b"<Code>NoSuchKey</Code>" in anonymous.content
    assert stored_bytes(direct, bucket, "late") == b"soon"
    assert httpx.get(f"{proxy.upstream_url}/{bucket}/late", timeout=5).content == b"soon"

    while outcome_of(lambda: client.head_object(Bucket=bucket, Key="late")) == "404":
        assert time.monotonic() - stored_at < 5, "still hidden long after its delay"
        time.sleep(0.05)
    assert time.monotonic() - stored_at >= 1.4
    assert httpx.get(f"{proxy.url}/{bucket}/late", timeout=5).content == b"soon"


def test_scripted_reset_breaks_the_connection_and_stores_nothing(
    start_proxy: Callable[..., ChaosProxy],
    client_for: Callable[..., Any],
    direct: Any,
    bucket: str,
    tmp_path: Path,
) -> None:
    log = tmp_path / "chaos.jsonl"
    proxy = start_proxy(log_path=log)
    proxy.add_script(key=f"{bucket}/cut", method="PUT", fault="reset")
    client = client_for(proxy.url)
    data = os.urandom(2 * MIB)
    with pytest.raises(HTTPClientError) as raised:
        client.put_object(Bucket=bucket, Key="cut", Body=data)
    assert not isinstance(raised.value, ReadTimeoutError)
    assert stored_bytes(direct, bucket, "cut") is None
    # The proxy itself is fine: the same client goes on, on a new connection.
    client.put_object(Bucket=bucket, Key="cut", Body=data)
    assert stored_bytes(direct, bucket, "cut") == data
    proxy.stop()
    first, second = read_log(log)
    assert (first["fault"], first["status"], first["reached_store"]) == ("reset", None, False)
    assert 0 < first["request_bytes"] <= len(data)
    assert (second["fault"], second["status"], second["reached_store"]) == (None, 200, True)


def test_scripted_slow_answer_times_the_client_out_after_the_store_has_it(
    start_proxy: Callable[..., ChaosProxy], client_for: Callable[..., Any], direct: Any, bucket: str
) -> None:
    proxy = start_proxy(rates={"slow_answer_seconds": 2})
    proxy.add_script(key=f"{bucket}/slow", method="PUT", fault="slow_answer")
    client = client_for(proxy.url, read_timeout_seconds=1)
    data = os.urandom(2_700_000)
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        client.put_object(Bucket=bucket, Key="slow", Body=data)
    assert 0.9 < time.monotonic() - started < 2
    assert stored_bytes(direct, bucket, "slow") == data


def test_unscripted_requests_and_other_keys_are_untouched(
    start_proxy: Callable[..., ChaosProxy], client_for: Callable[..., Any], bucket: str
) -> None:
    proxy = start_proxy()
    proxy.add_script(key=f"{bucket}/a", method="HEAD", fault="error_500")
    proxy.add_script(key=f"{bucket}/a", method="PUT", fault="corrupt", times=3)
    client = client_for(proxy.url)
    client.put_object(Bucket=bucket, Key="b", Body=b"x")
    client.head_object(Bucket=bucket, Key="b")
    client.put_object(Bucket=bucket, Key="a", Body=b"")  # corrupt skips empty bodies
    assert [s["fault"] for s in list_scripts(proxy)] == ["error_500", "corrupt"]
    assert proxy.stats()["injected_total"] == 0


def list_scripts(proxy: ChaosProxy) -> list[dict[str, Any]]:
    scripts: list[dict[str, Any]] = httpx.get(f"{proxy.url}/_chaos/script", timeout=5).json()[
        "scripts"
    ]
    return scripts


# ---------------------------------------------------------------- control API


def test_control_api_scripts_stats_and_is_never_forwarded(
    start_proxy: Callable[..., ChaosProxy], client_for: Callable[..., Any], bucket: str
) -> None:
    proxy = start_proxy()
    with httpx.Client(base_url=proxy.url, timeout=5) as http:
        bad = http.post("/_chaos/script", json={"key": f"{bucket}/k", "fault": "gremlins"})
        assert bad.status_code == 400 and "fault" in bad.json()["error"]
        assert http.post("/_chaos/script", content=b"{not json").status_code == 400
        assert http.post("/_chaos/script", json={"key": "k", "fault": "reset"}).status_code == 400
        scripts = [
            {"key": f"{bucket}/k", "method": "PUT", "fault": "error_503", "times": 2},
            {"key": f"{bucket}/k", "fault": "late_visibility", "seconds": 20},
        ]
        added = http.post("/_chaos/script", json=scripts)
        assert added.status_code == 201 and len(added.json()["scripts"]) == 2
        assert http.get("/_chaos/script").json()["scripts"][0]["times"] == 2

        client = client_for(proxy.url)
        assert outcome_of(lambda: client.put_object(Bucket=bucket, Key="k", Body=b"1")) == "503"
        assert [s["times"] for s in http.get("/_chaos/script").json()["scripts"]] == [1, 1]
        assert http.delete("/_chaos/script").json() == {"scripts": []}
        assert outcome_of(lambda: client.put_object(Bucket=bucket, Key="k", Body=b"1")) == "ok"
        assert outcome_of(lambda: client.head_object(Bucket=bucket, Key="k")) == "ok"

        assert http.get("/_chaos/nowhere").status_code == 404
        assert http.post("/_chaos/stats").status_code == 405
        stats = http.get("/_chaos/stats").json()
    assert stats["requests"] == {
        "total": 3,
        "by_kind": {"put": 2, "head": 1},
        "by_method": {"PUT": 2, "HEAD": 1},
    }
    assert stats["forwarded"]["total"] == 2  # the control requests never reached moto
    assert stats["injected"]["error_503"] == 1 and stats["injected_total"] == 1
    assert stats["scripted"] == {"error_503": 1}
    assert stats["statuses"] == {"503": 1, "200": 2}


# ---------------------------------------------------------------- random rates


def held_keys(direct: Any, bucket: str) -> set[str]:
    return {
        item["Key"]
        for page in direct.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for item in page.get("Contents", [])
    }


def within(count: int, total: int, rate: float, sigmas: float = 4.5) -> bool:
    """`count` of `total` is a plausible binomial draw at `rate` (deterministic here: seeded)."""
    spread = sigmas * (rate * (1 - rate) / total) ** 0.5
    return abs(count / total - rate) <= spread


def test_random_errors_lost_puts_and_corruption_at_their_rates(
    start_proxy: Callable[..., ChaosProxy], client_for: Callable[..., Any], direct: Any, bucket: str
) -> None:
    rates = {
        "error_403": 0.08,
        "error_500": 0.08,
        "error_503": 0.08,
        "error_429": 0.08,
        "lost_put": 0.1,
        "corrupt": 0.1,
    }
    proxy = start_proxy(seed=2024, rates=rates)
    client = client_for(proxy.url)
    puts = 400
    sent: dict[str, bytes] = {}
    answered: dict[str, str] = {}
    for i in range(puts):
        key, data = f"obj-{i:04d}", os.urandom(64 + i)
        sent[key] = data
        answered[key] = outcome_of(
            lambda k=key, d=data: client.put_object(Bucket=bucket, Key=k, Body=d)
        )

    held = held_keys(direct, bucket)  # the truth, asked directly
    seen: Counter[str] = Counter()
    for key, outcome in answered.items():
        if outcome != "ok":
            seen[f"error_{outcome}"] += 1
            assert key not in held  # an error answer stored nothing
        elif key not in held:
            seen["lost_put"] += 1  # the client heard 200
        elif stored_bytes(direct, bucket, key) != sent[key]:
            seen["corrupt"] += 1
    assert len(held) == sum(1 for o in answered.values() if o == "ok") - seen["lost_put"]
    for fault, rate in rates.items():
        assert within(seen[fault], puts, rate), (fault, seen[fault], puts)


def test_random_late_visibility_at_its_rate(
    start_proxy: Callable[..., ChaosProxy], client_for: Callable[..., Any], direct: Any, bucket: str
) -> None:
    # Delays long enough that none runs out between a PUT and the HEAD right after it.
    proxy = start_proxy(
        seed=77, rates={"late_visibility": 0.3, "visibility_delay_max_seconds": 600}
    )
    client = client_for(proxy.url)
    puts = 300
    hidden = 0
    for i in range(puts):
        client.put_object(Bucket=bucket, Key=f"v{i}", Body=b"v")
        outcome = outcome_of(lambda k=f"v{i}": client.head_object(Bucket=bucket, Key=k))
        assert outcome in {"ok", "404"}
        hidden += outcome == "404"
    assert held_keys(direct, bucket) == {f"v{i}" for i in range(puts)}  # stored all the same
    assert within(hidden, puts, 0.3), hidden


def test_random_resets_and_slow_answers_at_their_rates(
    start_proxy: Callable[..., ChaosProxy], client_for: Callable[..., Any], direct: Any, bucket: str
) -> None:
    rates = {"reset": 0.1, "slow_answer": 0.1, "slow_answer_seconds": 0.8}
    proxy = start_proxy(seed=5, rates=rates)
    # Far above a PUT's normal time even on a loaded machine, far below the hold.
    client = client_for(proxy.url, read_timeout_seconds=0.5)
    puts = 200
    keys = [f"rs{i}" for i in range(puts)]

    def put(key: str) -> str:
        return outcome_of(lambda: client.put_object(Bucket=bucket, Key=key, Body=b"z" * 4096))

    # Concurrent, so that the held answers overlap. Which request meets which fault
    # then varies from run to run; the rates, measured here, do not.
    with ThreadPoolExecutor(max_workers=8) as pool:
        answered = dict(zip(keys, pool.map(put, keys), strict=True))
    seen = Counter(answered.values())
    assert seen["ok"] + seen["reset"] + seen["timeout"] == puts
    # A reset stores nothing; a slow answer was stored before the client gave up.
    assert held_keys(direct, bucket) == {k for k, o in answered.items() if o != "reset"}
    assert within(seen["reset"], puts, 0.1), seen
    assert within(seen["timeout"], puts, 0.1), seen


# ---------------------------------------------------------------- reproducibility


def run_sequence(client: Any, bucket: str) -> list[str]:
    """A fixed sequential workload; what the client saw of each request."""
    outcomes = []
    for i in range(40):
        key, data = f"seq-{i}", hashlib.sha256(str(i).encode()).digest() * 8
        outcomes.append(
            outcome_of(lambda k=key, d=data: client.put_object(Bucket=bucket, Key=k, Body=d))
        )
        outcomes.append(outcome_of(lambda k=key: client.head_object(Bucket=bucket, Key=k)))
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            outcomes.append("ok" if body == data else "wrong-bytes")
        except (ClientError, HTTPClientError) as exc:
            outcomes.append(type(exc).__name__)
    return outcomes


def test_same_seed_same_faults(
    start_proxy: Callable[..., ChaosProxy],
    client_for: Callable[..., Any],
    direct: Any,
    tmp_path: Path,
) -> None:
    rates = {
        "error_403": 0.04,
        "error_500": 0.04,
        "error_503": 0.04,
        "error_429": 0.04,
        "lost_put": 0.05,
        "corrupt": 0.05,
        "reset": 0.05,
        "late_visibility": 0.3,
        "visibility_delay_max_seconds": 600,
    }
    runs = []
    for run, seed in enumerate([11, 11, 12]):
        log = tmp_path / f"run{run}.jsonl"
        proxy = start_proxy(seed=seed, rates=rates, log_path=log)
        outcomes = run_sequence(client_for(proxy.url), new_bucket(direct))
        proxy.stop()
        faults = [
            (line["kind"], line["key"], line["fault"], line["status"]) for line in read_log(log)
        ]
        runs.append((outcomes, faults))
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[2][0]
    assert len(set(runs[0][0])) >= 5  # the workload did meet several kinds of fault


def test_plan_draws_the_same_faults_for_the_same_seed_and_scripts_replace_one_draw() -> None:
    config = FaultConfig(error_503=0.2, lost_put=0.1, corrupt=0.1, late_visibility=0.5)
    requests = [
        RequestInfo(
            "PUT" if i % 3 else "HEAD", Action.PUT if i % 3 else Action.HEAD, "b", f"k{i}", None, 10
        )
        for i in range(300)
    ]

    def decisions(plan: FaultPlan) -> list[Decision]:
        return [plan.decide(r, 0.0) for r in requests]

    plain = decisions(FaultPlan(config, 9))
    assert decisions(FaultPlan(config, 9)) == plain
    assert decisions(FaultPlan(config, 10)) != plain
    scripted = FaultPlan(config, 9)
    scripted.add_script(Script(key="b/k10", fault="reset", method="PUT"))
    with_script = decisions(scripted)
    differing = [i for i, (a, b) in enumerate(zip(plain, with_script, strict=True)) if a != b]
    assert differing == [10] and with_script[10].fault == "reset" and with_script[10].scripted


def test_plan_rates_are_per_eligible_request() -> None:
    config = FaultConfig(error_500=0.1, lost_put=0.2, corrupt=0.2, reset=0.1)
    plan = FaultPlan(config, 3)
    put = RequestInfo("PUT", Action.PUT, "b", "k", None, 100)
    get = RequestInfo("GET", Action.GET, "b", "k", None, 0)
    puts = Counter(plan.decide(put, 0.0).fault for _ in range(20_000))
    gets = Counter(plan.decide(get, 0.0).fault for _ in range(20_000))
    for fault, rate in [("error_500", 0.1), ("lost_put", 0.2), ("corrupt", 0.2), ("reset", 0.1)]:
        assert within(puts[fault], 20_000, rate), (fault, puts)
    assert set(gets) == {"error_500", None} and within(gets["error_500"], 20_000, 0.1)


def test_byte_flipper_keeps_aws_chunked_framing_and_handles_unknown_lengths() -> None:
    payload = bytes(range(256)) * 4
    framed = f"{len(payload):x};chunk-signature=abc\r\n".encode() + payload + b"\r\n0\r\n\r\n"
    info = RequestInfo("PUT", Action.PUT, "b", "k", None, len(framed), aws_chunked=True)
    bent = ByteFlipper(0.5, info).apply(framed)
    (offset,) = differing_offsets(bent, framed)
    header = framed.index(b"\r\n") + 2
    assert header <= offset < header + len(payload)

    chunked = RequestInfo("PUT", Action.PUT, "b", "k", None, None)
    flipper = ByteFlipper(0.99, chunked)
    pieces = [b"a" * 10, b"b" * 10, b""]
    bent_pieces = [flipper.apply(p) for p in pieces]
    assert [len(differing_offsets(x, y)) for x, y in zip(bent_pieces, pieces, strict=True)] == [
        1,
        0,
        0,
    ]


# ---------------------------------------------------------------- the log


def test_log_has_one_line_per_request_with_what_reached_the_store(
    start_proxy: Callable[..., ChaosProxy],
    client_for: Callable[..., Any],
    bucket: str,
    tmp_path: Path,
) -> None:
    log = tmp_path / "chaos.jsonl"
    proxy = start_proxy(log_path=log)
    key = f"{bucket}/dir/a b+ü.txt"
    proxy.add_script(key=key, method="PUT", fault="error_403")
    proxy.add_script(key=key, method="PUT", fault="lost_put")
    proxy.add_script(key=key, fault="late_visibility", seconds=30)
    client = client_for(proxy.url)
    name = "dir/a b+ü.txt"
    outcomes = [
        outcome_of(lambda: client.put_object(Bucket=bucket, Key=name, Body=b"12345")),
        outcome_of(lambda: client.put_object(Bucket=bucket, Key=name, Body=b"12345")),
        outcome_of(lambda: client.put_object(Bucket=bucket, Key=name, Body=b"12345")),
        outcome_of(lambda: client.head_object(Bucket=bucket, Key=name)),
        outcome_of(lambda: client.list_objects_v2(Bucket=bucket)),
    ]
    proxy.stop()
    lines = read_log(log)
    assert outcomes == ["403", "ok", "ok", "404", "ok"]
    assert [(x["kind"], x["fault"], x["status"], x["reached_store"]) for x in lines] == [
        ("put", "error_403", 403, False),
        ("put", "lost_put", 200, False),
        ("put", "late_visibility", 200, True),
        ("head", "late_visibility", 404, False),
        ("list", None, 200, True),
    ]
    assert {(x["bucket"], x["key"]) for x in lines[:4]} == {(bucket, name)}
    assert lines[2]["hidden_seconds"] == 30 and lines[0]["hidden_seconds"] is None
    assert all(
        x["method"] in {"PUT", "HEAD", "GET"} and x["time"].endswith("+00:00") for x in lines
    )
    assert [x["request_bytes"] for x in lines[:3]] == [5, 5, 5]


# ---------------------------------------------------------------- configuration and CLI


def test_profiles_and_overrides() -> None:
    assert all(
        value == 0 for name, value in config_for("none").as_dict().items() if name in FAULT_RATES
    )
    flaky = config_for("flaky")
    assert flaky.error_403 > 0 and flaky.lost_put == flaky.corrupt == flaky.late_visibility == 0
    madness = config_for("eventual-madness")
    errors = madness.error_403 + madness.error_500 + madness.error_503 + madness.error_429
    assert errors >= 0.05 and madness.lost_put >= 0.02 and madness.corrupt >= 0.02
    assert madness.late_visibility > 0 and madness.visibility_delay_max_seconds >= 3
    assert config_for("flaky", {"error_403": 0.5}).error_403 == 0.5
    for profile, overrides in [
        ("nope", {}),
        ("none", {"gremlins": 1.0}),
        ("none", {"error_403": 1.5}),
        ("none", {"error_403": 0.6, "reset": 0.6}),
        ("none", {"latency_seconds": -1.0}),
    ]:
        with pytest.raises(ConfigError):
            config_for(profile, overrides)
    with pytest.raises(ConfigError):
        ChaosProxy("http://127.0.0.1:9", rates={"gremlins": 1.0})


FAULT_RATES = {
    "error_403",
    "error_500",
    "error_503",
    "error_429",
    "lost_put",
    "corrupt",
    "slow_answer",
    "reset",
    "late_visibility",
}


@pytest.mark.parametrize(
    ("method", "target", "headers", "action", "key", "part"),
    [
        (
            "PUT",
            "/b/a%20b%2Bc%25d/%C3%BC.txt",
            {"content-length": "3"},
            Action.PUT,
            "a b+c%d/ü.txt",
            None,
        ),
        ("PUT", "/b/k?x-id=PutObject", {"content-length": "3"}, Action.PUT, "k", None),
        (
            "PUT",
            "/b/k?partNumber=3&uploadId=u",
            {"content-length": "3"},
            Action.UPLOAD_PART,
            "k",
            3,
        ),
        ("PUT", "/b/k", {"x-amz-copy-source": "/b/o"}, Action.OTHER, "k", None),
        ("PUT", "/b/k?tagging", {}, Action.OTHER, "k", None),
        ("PUT", "/b", {}, Action.OTHER, "", None),
        ("POST", "/b/k?uploads", {}, Action.CREATE_MULTIPART, "k", None),
        ("POST", "/b/k?uploadId=u", {"content-length": "9"}, Action.COMPLETE_MULTIPART, "k", None),
        ("GET", "/b/k?X-Amz-Signature=abc", {}, Action.GET, "k", None),
        ("GET", "/b/k?uploadId=u", {}, Action.OTHER, "k", None),
        ("GET", "/b?list-type=2&prefix=a", {}, Action.LIST, "", None),
        ("GET", "/b?policy", {}, Action.OTHER, "", None),
        ("HEAD", "/b/k", {}, Action.HEAD, "k", None),
        ("DELETE", "/b/k", {}, Action.DELETE, "k", None),
        ("DELETE", "/b/k?uploadId=u", {}, Action.OTHER, "k", None),
        ("POST", "/b?delete", {"content-length": "9"}, Action.DELETE, "", None),
    ],
)
def test_classify(
    method: str, target: str, headers: dict[str, str], action: Action, key: str, part: int | None
) -> None:
    info = classify(method, target, headers)
    assert (info.action, info.bucket, info.key, info.part_number) == (action, "b", key, part)


def test_add_command_registers_chaos_proxy() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "chaos-proxy",
            "--upstream",
            "http://127.0.0.1:9000",
            "--listen",
            "127.0.0.1:9100",
            "--profile",
            "flaky",
            "--seed",
            "4",
            "--set",
            "error_403=0.5",
            "--set",
            "latency_seconds=0.1",
        ]
    )
    assert args.listen == ("127.0.0.1", 9100) and args.seed == 4 and args.profile == "flaky"
    assert args.overrides == [("error_403", 0.5), ("latency_seconds", 0.1)]
    assert args.func.__name__ == "run_command"


def test_command_line_runs_until_terminated(
    moto_endpoint: str, client_for: Callable[..., Any], direct: Any, bucket: str, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "cli.jsonl"
    command = [
        sys.executable,
        "-m",
        "service.chaos",
        "--upstream",
        moto_endpoint,
        "--listen",
        f"127.0.0.1:{port}",
        "--profile",
        "none",
        "--seed",
        "3",
        "--set",
        "error_503=1",
        "--log",
        str(log),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url + "/_chaos/stats", timeout_seconds=20, process=process)
        client = client_for(url)
        assert outcome_of(lambda: client.put_object(Bucket=bucket, Key="cli", Body=b"x")) == "503"
        assert stored_bytes(direct, bucket, "cli") is None
    finally:
        process.terminate()
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert f"listening on {url}" in out.decode()
    assert [line["status"] for line in read_log(log)] == [503]


def test_command_line_refuses_unknown_settings(moto_endpoint: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service.chaos", "--upstream", moto_endpoint, "--set", "gremlins=1"],
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 2 and b"unknown rate or setting" in done.stderr


# ---------------------------------------------------------------- the service's own client


def test_make_s3_client_does_not_retry(start_proxy: Callable[..., ChaosProxy], bucket: str) -> None:
    """The ledger owns every retry: the service's own client must show it every 503.

    botocore reads a plain `max_attempts: 1` as one *retry*; only
    `total_max_attempts: 1` means a single try.
    """
    proxy = start_proxy()
    proxy.add_script(key=f"{bucket}/once", method="PUT", fault="error_503")
    client = s3_client(proxy.url)
    assert outcome_of(lambda: client.put_object(Bucket=bucket, Key="once", Body=b"x")) == "503"
    assert proxy.stats()["requests"]["total"] == 1
