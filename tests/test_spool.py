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
