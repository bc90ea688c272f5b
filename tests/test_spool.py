import hashlib
import os
import time
from pathlib import Path

import pytest

from service import errors
from service.objects import SpoolReservations
from service.settings import Settings
from service.spool import Spool


def test_reservations_of_concurrent_uploads_add_up() -> None:
    reservations = SpoolReservations()
    first, second = reservations.open(10), reservations.open(10)
    first.take(6)
    with pytest.raises(errors.ServiceError) as raised:
        second.take(5)
    assert raised.value.code == "overloaded"
    first.release()
    second.take(5)
    assert reservations.in_flight == 5


def test_sweep_removes_only_old_unreferenced_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 5 * 1024 * 1024, 64 * 1024 * 1024)
    spool.prepare()
    old = time.time() - 3600
    files = {name: tmp_path / name for name in ("kept", "leftover", "fresh", "upload.part")}
    for path in files.values():
        path.write_bytes(b"x")
    for name in ("kept", "leftover", "upload.part"):
        os.utime(files[name], (old, old))
    assert spool.sweep({str(files["kept"])}) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "kept", "upload.part"]


def test_a_spool_smaller_than_one_object_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="SPOOL_MAX_BYTES"):
        Settings(SPOOL_MAX_BYTES=10, MAX_OBJECT_BYTES=11)


PART = 5 * 1024 * 1024
THRESHOLD = 6 * 1024 * 1024


def _spool_in_pieces(spool: Spool, body: bytes, at_most_bytes: int | None) -> tuple[str, ...]:
    writer = spool.writer(len(body) + 1, at_most_bytes)
    for start in range(0, len(body), 300_000):
        writer.write(body[start : start + 300_000])
    return writer.finish().part_md5s


def test_part_md5s_of_a_body_longer_than_its_bound_are_made_up_for(tmp_path: Path) -> None:
    """A Content-Length under the threshold spares the part MD5s; a body that turns
    out longer anyway (framed otherwise) still gets the right ones."""
    spool = Spool(tmp_path, PART, THRESHOLD)
    spool.prepare()
    body = os.urandom(THRESHOLD + PART // 2)
    expected = (
        hashlib.md5(body[:PART]).hexdigest(),
        hashlib.md5(body[PART : 2 * PART]).hexdigest(),
    )
    assert _spool_in_pieces(spool, body, None) == expected
    assert _spool_in_pieces(spool, body, at_most_bytes=1000) == expected
    assert _spool_in_pieces(spool, body[:THRESHOLD], at_most_bytes=THRESHOLD) == ()
