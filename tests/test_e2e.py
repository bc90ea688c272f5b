"""End to end: the real `verified-urls serve` process with its embedded store.

Real files go in over HTTP (raw bodies streamed from disk, chunked, and
multipart/form-data), come out of the handed-out URLs through a plain GET with
the same bytes, and still do after a SIGTERM and a restart on the same data.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from tests.service_process import (
    ServiceProcess,
    ServiceRunner,
    fetch,
    sha256_file,
    wait_settled,
    wait_until_gone,
)

MIB = 1024 * 1024
SETTLE_TIMEOUT_SECONDS = 60.0
# Characters kept verbatim in a URL path; everything else must be percent-encoded.
URL_SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/%")


@dataclass
class Upload:
    name: str
    path: Path
    content_type: str
    how: str  # "file": raw body from an open file; "chunks": a generator; "form": multipart
    sha256: str = ""
    size: int = 0
    record: dict[str, Any] | None = None


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as file:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MIB))
            file.write(chunk)
            left -= len(chunk)
    return path


def generated_png(path: Path) -> Path:
    """A valid, incompressible 128x128 RGB PNG, for machines that have none."""
    width = height = 128

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + os.urandom(width * 3) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def find_image(scratch: Path) -> Path:
    """A real image shipped with the installed packages (a PNG of at least 5 KiB)."""
    roots = [Path(httpx.__file__).parents[1], Path("/usr/share")]
    for root in roots:
        for directory, _, names in os.walk(root):
            for name in sorted(names):
                path = Path(directory, name)
                if name.endswith(".png") and path.stat().st_size >= 5 * 1024:
                    with path.open("rb") as file:
                        if file.read(8) == b"\x89PNG\r\n\x1a\n":
                            return path
    return generated_png(scratch / "generated.png")


def find_text_file() -> Path:
    os_release = Path("/etc/os-release")
    return os_release if os_release.is_file() else Path(httpx.__file__)


def read_in_chunks(path: Path) -> Iterator[bytes]:
    # A generator has no length: httpx sends it chunked, with no Content-Length.
    with path.open("rb") as file:
        while chunk := file.read(256 * 1024):
            yield chunk


def post(client: httpx.Client, upload: Upload, wait: float = 0) -> httpx.Response:
    params: dict[str, Any] = {"name": upload.name, "wait": wait}
    with upload.path.open("rb") as file:
        if upload.how == "form":
            files = {"file": (upload.path.name, file, upload.content_type)}
            return client.post("/v1/objects", params=params, files=files)
        content: Any = file if upload.how == "file" else read_in_chunks(upload.path)
        headers = {"Content-Type": upload.content_type}
        return client.post("/v1/objects", params=params, content=content, headers=headers)


def assert_accepted(response: httpx.Response, upload: Upload) -> dict[str, Any]:
    assert response.status_code in (201, 202), response.text
    record: dict[str, Any] = response.json()
    assert response.headers["Location"] == f"/v1/objects/{record['id']}"
    assert record["name"] == upload.name
    assert record["key"] == upload.name
    assert record["size"] == upload.size
    assert record["sha256"] == upload.sha256
    assert record["content_type"] == upload.content_type
    if response.status_code == 202:
        assert record["state"] == "pending"
        assert record["url"] is None
        assert int(response.headers["Retry-After"]) >= 0
    else:
        assert record["state"] == "verified"
    return record


def assert_verified(record: dict[str, Any], upload: Upload, base_url: str) -> None:
    assert record["state"] == "verified", record
    assert record["error"] is None
    assert record["name"] == upload.name
    assert record["size"] == upload.size
    assert record["sha256"] == upload.sha256
    assert record["content_type"] == upload.content_type
    assert record["verified_at"] is not None
    assert record["store_attempts"] >= 1
    assert record["checks"] >= 1
    url = record["url"]
    assert isinstance(url, str)
    assert url.startswith(base_url + "/")
    path = urlsplit(url).path
    assert set(path) <= URL_SAFE, f"unencoded characters in {url}"
    assert unquote(path) == f"/{record['bucket']}/{upload.name}"


def assert_serves(upload: Upload, url: str) -> None:
    status, size, sha256, headers = fetch(url)
    assert status == 200, f"{url} answered {status}"
    assert (size, sha256) == (upload.size, upload.sha256), f"wrong bytes behind {url}"
    assert headers.get("content-type") == upload.content_type, url


@pytest.mark.timeout(300)
def test_real_files_round_trip_and_survive_a_restart(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    image = find_image(files)
    empty = files / "empty"
    empty.touch()
    uploads = [
        Upload("texts/os-release.txt", find_text_file(), "text/plain; charset=utf-8", "file"),
        Upload("code/httpx __init__.py", Path(httpx.__file__), "text/x-python", "chunks"),
        Upload("photos/été 2026+final%.png", image, "image/png", "file"),
        Upload("photos/form upload ☃ 100%.png", image, "image/png", "form"),
        Upload(
            "random/20 MiB+chunked.bin",
            random_file(files / "r20", 20 * MIB),
            "application/x-random",
            "chunks",
        ),
        Upload(
            "random/70 MiB ü multipart.bin",
            random_file(files / "r70", 70 * MIB),
            "application/octet-stream",
            "file",
        ),
    ]
    # Zero bytes, then at once a non-empty object: neither may block the other.
    zero_then_full = [
        Upload("edge/zero bytes", empty, "application/x-empty", "file"),
        Upload("edge/right after zero", find_text_file(), "text/plain", "file"),
    ]
    everything = uploads + zero_then_full
    for upload in everything:
        upload.size = upload.path.stat().st_size
        upload.sha256 = sha256_file(upload.path)
    # The 70 MiB object must cross the default 64 MiB multipart threshold.
    assert uploads[-1].size > 64 * MIB

    with ServiceRunner(tmp_path / "service") as runner:
        service = runner.start()
        with httpx.Client(base_url=service.base_url, timeout=120.0) as client:
            for upload in uploads:
                upload.record = assert_accepted(post(client, upload), upload)
            for upload in zero_then_full:
                upload.record = assert_accepted(post(client, upload), upload)

            for upload in everything:
                assert upload.record is not None
                upload.record = wait_settled(client, upload.record["id"], SETTLE_TIMEOUT_SECONDS)
                assert_verified(upload.record, upload, runner.store_url)
                assert_serves(upload, upload.record["url"])

            # A verified name is taken for good: the bytes behind its URL never change.
            taken = client.post(
                "/v1/objects", params={"name": uploads[0].name}, content=b"other bytes"
            )
            assert taken.status_code == 409, taken.text
            assert taken.json()["code"] == "name_taken"

            # A POST that waits gets the verified record at once, with 201.
            waited = Upload("edge/waited for", find_text_file(), "text/plain", "file")
            waited.size, waited.sha256 = zero_then_full[1].size, zero_then_full[1].sha256
            response = post(client, waited, wait=30)
            assert response.status_code == 201, response.text
            waited.record = assert_accepted(response, waited)
            assert_verified(waited.record, waited, runner.store_url)
            everything.append(waited)

        listed = httpx.get(
            service.base_url + "/v1/objects", params={"state": "verified", "limit": 1000}
        ).json()["items"]
        assert {item["id"] for item in listed} == {u.record["id"] for u in everything if u.record}

        store_pid = service.store_pid
        assert store_pid is not None, "no embedded store child process found"
        assert_stops_cleanly(service)
        assert wait_until_gone(store_pid, 5.0), "the embedded store outlived the service"

        restarted = runner.start()
        for upload in everything:
            assert upload.record is not None
            assert_serves(upload, upload.record["url"])
            again = httpx.get(f"{restarted.base_url}/v1/objects/{upload.record['id']}").json()
            assert again["state"] == "verified"
            assert again["url"] == upload.record["url"]
        # The restored store takes new objects too, next to the old ones.
        after = Upload("edge/after restart ✓", find_text_file(), "text/plain", "file")
        after.size, after.sha256 = zero_then_full[1].size, zero_then_full[1].sha256
        with httpx.Client(base_url=restarted.base_url, timeout=60.0) as client:
            response = post(client, after, wait=30)
        assert response.status_code == 201, response.text
        assert_verified(response.json(), after, runner.store_url)
        assert_serves(after, response.json()["url"])
        assert_stops_cleanly(restarted)


def assert_stops_cleanly(service: ServiceProcess) -> None:
    # SIGTERM is how supervisors stop a service: anything but a graceful exit 0 reads as
    # a crash (uvicorn's habit of re-raising the signal gave -15, i.e. shell status 143).
    code = service.stop()
    assert code is not None, "the service did not exit within 15 s of SIGTERM"
    assert code == 0, f"exit status {code} after SIGTERM (want 0)"
    assert "Application shutdown complete" in service.log_path.read_text()
