"""The embedded store over real HTTP, in real processes: what it acknowledged
survives SIGKILL, anonymous clients can only read objects, and it dies with
its parent."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from service.storage.embedded import EmbeddedStoreProcess

BUCKET = "verified-urls"
ODD_KEY = "dir with space/a+b%20c 100%/naïve-日本語 ü.txt"
MIB = 1024 * 1024
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            retries={"max_attempts": 1},
        ),
    )


def public_url(endpoint: str, key: str) -> str:
    return f"{endpoint}/{BUCKET}/{quote(key, safe='/~')}"


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def pid_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it no longer holds any socket.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def new_store(tmp_path: Path) -> Iterator[Callable[..., EmbeddedStoreProcess]]:
    """Starts stores on one data dir and port; every one is stopped afterwards."""
    port = free_port()
    started: list[EmbeddedStoreProcess] = []

    def start(data_dir: Path = tmp_path / "store") -> EmbeddedStoreProcess:
        store = EmbeddedStoreProcess(
            host="127.0.0.1", port=port, data_dir=data_dir, bucket=BUCKET, region="us-east-1"
        )
        started.append(store)
        store.start(timeout_seconds=30)
        return store

    yield start
    for store in started:
        store.stop()


def kill_hard(store: EmbeddedStoreProcess) -> None:
    assert store.pid is not None
    os.kill(store.pid, signal.SIGKILL)
    store.stop()


def upload_multipart(client: Any, key: str, parts: list[bytes]) -> str:
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=key, ContentType="video/mp4")
    done = []
    for number, part in enumerate(parts, start=1):
        answer = client.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=part
        )
        done.append({"PartNumber": number, "ETag": answer["ETag"]})
    answer = client.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": done}
    )
    return str(answer["ETag"])


def test_acknowledged_writes_survive_sigkill(
    new_store: Callable[..., EmbeddedStoreProcess],
) -> None:
    store = new_store()
    client = make_client(store.endpoint_url)
    expected = {
        "plain.txt": (b"hello, durable world\n", "text/plain; charset=utf-8"),
        "empty": (b"", "application/octet-stream"),
        ODD_KEY: (os.urandom(4096), "image/png"),
    }
    for key, (body, content_type) in expected.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body, ContentType=content_type)
    big = [os.urandom(5 * MIB), os.urandom(5 * MIB + 12345)]
    multipart_etag = upload_multipart(client, "video.mp4", big)
    expected["video.mp4"] = (b"".join(big), "video/mp4")
    client.copy_object(
        Bucket=BUCKET, Key="copy.txt", CopySource={"Bucket": BUCKET, "Key": "plain.txt"}
    )
    expected["copy.txt"] = expected["plain.txt"]
    for key in ("gone-single", "gone-batch-1", "gone-batch-2"):
        client.put_object(Bucket=BUCKET, Key=key, Body=b"short-lived")
    client.delete_object(Bucket=BUCKET, Key="gone-single")
    client.delete_objects(
        Bucket=BUCKET, Delete={"Objects": [{"Key": "gone-batch-1"}, {"Key": "gone-batch-2"}]}
    )

    kill_hard(store)
    store = new_store()

    with httpx.Client(timeout=30) as http:
        for key, (body, content_type) in expected.items():
            answer = http.get(public_url(store.endpoint_url, key))
            assert answer.status_code == 200, key
            assert hashlib.sha256(answer.content).digest() == hashlib.sha256(body).digest(), key
            assert answer.headers["content-type"] == content_type, key
        assert http.head(public_url(store.endpoint_url, "video.mp4")).headers["etag"] == (
            multipart_etag
        )
        for key in ("gone-single", "gone-batch-1", "gone-batch-2"):
            assert http.get(public_url(store.endpoint_url, key)).status_code == 404, key
    listed = make_client(store.endpoint_url).list_objects_v2(Bucket=BUCKET)["Contents"]
    assert sorted(item["Key"] for item in listed) == sorted(expected)


def test_plus_in_a_key_is_not_a_space(new_store: Callable[..., EmbeddedStoreProcess]) -> None:
    store = new_store()
    client = make_client(store.endpoint_url)
    client.put_object(Bucket=BUCKET, Key="a+b", Body=b"plus")
    client.put_object(Bucket=BUCKET, Key="a b", Body=b"space")
    with httpx.Client() as http:
        # Percent-encoded and literal "+" both mean "+" in a path.
        assert http.get(f"{store.endpoint_url}/{BUCKET}/a%2Bb").content == b"plus"
        assert http.get(f"{store.endpoint_url}/{BUCKET}/a+b").content == b"plus"
        assert http.get(f"{store.endpoint_url}/{BUCKET}/a%20b").content == b"space"


def test_restart_skips_damaged_objects_and_removes_leftovers(
    new_store: Callable[..., EmbeddedStoreProcess], tmp_path: Path
) -> None:
    store = new_store()
    client = make_client(store.endpoint_url)
    for key in ("intact", "rotten", "missing"):
        client.put_object(Bucket=BUCKET, Key=key, Body=f"{key} bytes".encode())
    store.stop()
    objects = tmp_path / "store" / "buckets" / BUCKET / "objects"

    def data_file(key: str) -> Path:
        [path] = objects.glob(f"{hashlib.sha256(key.encode()).hexdigest()}.*.data")
        return path

    data_file("rotten").write_bytes(b"rotten BYTES")
    data_file("missing").unlink()
    # What a crash in the middle of a write leaves behind.
    leftovers = [objects / ".tmp-0123abcd", objects / f"{'0' * 64}.{'1' * 64}.data"]
    for path in leftovers:
        path.write_bytes(b"half-written")

    store = new_store()
    with httpx.Client() as http:
        assert http.get(public_url(store.endpoint_url, "intact")).content == b"intact bytes"
        assert http.get(public_url(store.endpoint_url, "rotten")).status_code == 404
        assert http.get(public_url(store.endpoint_url, "missing")).status_code == 404
    assert not any(path.exists() for path in leftovers)


def test_anonymous_clients_may_only_read_objects(
    new_store: Callable[..., EmbeddedStoreProcess],
) -> None:
    store = new_store()
    client = make_client(store.endpoint_url)
    client.put_object(Bucket=BUCKET, Key="doc.txt", Body=b"public")
    base = f"{store.endpoint_url}/{BUCKET}"
    with httpx.Client() as http:
        assert http.get(f"{base}/doc.txt").content == b"public"
        assert http.head(f"{base}/doc.txt").status_code == 200
        for method, url in [
            ("GET", base),
            ("GET", f"{base}/"),
            ("GET", f"{base}?list-type=2"),
            ("GET", f"{base}/doc.txt?acl"),
            ("PUT", f"{base}/doc.txt"),
            ("PUT", f"{base}/new.txt"),
            ("DELETE", f"{base}/doc.txt"),
            ("POST", f"{base}/doc.txt?uploads"),
            ("GET", f"{store.endpoint_url}/"),
            ("GET", f"{store.endpoint_url}/moto-api/data.json"),
        ]:
            answer = http.request(method, url, content=b"anonymous bytes")
            assert answer.status_code == 403, (method, url)
            assert "<Code>AccessDenied</Code>" in answer.text, (method, url)
        assert http.get(f"{base}/doc.txt").content == b"public"
        assert http.get(f"{base}/new.txt").status_code == 404
        presigned = client.generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": "doc.txt"}, ExpiresIn=60
        )
        assert http.get(presigned).content == b"public"
    listed = client.list_objects_v2(Bucket=BUCKET)["Contents"]
    assert [item["Key"] for item in listed] == ["doc.txt"]


def test_if_none_match_lets_exactly_one_writer_win(
    new_store: Callable[..., EmbeddedStoreProcess],
) -> None:
    store = new_store()
    client = make_client(store.endpoint_url)
    outcomes: list[str] = []
    lock = threading.Lock()

    def put(body: bytes) -> None:
        try:
            client.put_object(Bucket=BUCKET, Key="contested", Body=body, IfNoneMatch="*")
            outcome = "stored"
        except ClientError as error:
            outcome = error.response["Error"]["Code"]
        with lock:
            outcomes.append(outcome)

    writers = [threading.Thread(target=put, args=(bytes([n]) * (8 * MIB),)) for n in range(8)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=30)
    assert sorted(outcomes) == ["PreconditionFailed"] * 7 + ["stored"]


def test_start_fails_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        store = EmbeddedStoreProcess(
            host="127.0.0.1", port=port, data_dir=tmp_path, bucket=BUCKET, region="us-east-1"
        )
        with pytest.raises(RuntimeError, match="in use"):
            store.start(timeout_seconds=30)
    assert store.pid is None


PARENT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from service.storage.embedded import EmbeddedStoreProcess

    store = EmbeddedStoreProcess(
        host="127.0.0.1", port=int(sys.argv[1]), data_dir=Path(sys.argv[2]),
        bucket="verified-urls", region="us-east-1",
    )
    store.start()
    print(store.pid, flush=True)
    time.sleep(600)
    """
)


def test_store_dies_with_its_parent(tmp_path: Path) -> None:
    port = free_port()
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT, str(port), str(tmp_path)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    child_pid = None
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert port_is_open(port)
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 5
        while (pid_is_alive(child_pid) or port_is_open(port)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not port_is_open(port)
        assert not pid_is_alive(child_pid)
    finally:
        parent.kill()
        parent.wait(timeout=10)
        if parent.stdout is not None:
            parent.stdout.close()
        if child_pid is not None and pid_is_alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)


def test_a_form_typed_put_keeps_its_bytes_and_type(
    new_store: Callable[..., EmbeddedStoreProcess],
) -> None:
    """moto alone stores no bytes for a PUT typed as a form (curl's default)."""
    store = new_store()
    body = b"a=1&b=2 but really a file"
    make_client(store.endpoint_url).put_object(
        Bucket=BUCKET, Key="form.txt", Body=body, ContentType="application/x-www-form-urlencoded"
    )
    kill_hard(store)
    store = new_store()
    fetched = httpx.get(public_url(store.endpoint_url, "form.txt"))
    assert fetched.content == body
    assert fetched.headers["content-type"] == "application/x-www-form-urlencoded"
