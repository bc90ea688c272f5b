"""The spool: each accepted object's bytes on local (or shared) disk until verified.

Uploads stream into it while being counted and hashed (SHA-256, MD5, and the
MD5 of every multipart part), so no object is ever held in memory whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

STALE_PART_SECONDS = 3600  # an upload still streaming after an hour is gone
# a finished spool file gets its row within milliseconds; older and unreferenced: a leftover
UNREFERENCED_FILE_SECONDS = 600
READ_BACK_BYTES = 1024 * 1024


class TooLarge(Exception):
    pass


@dataclass(frozen=True)
class SpooledObject:
    path: Path
    size: int
    sha256: str
    md5: str
    part_size: int | None
    part_md5s: tuple[str, ...]


class SpoolWriter:
    """Writes one upload into the spool. `finish` keeps it; `discard` removes it."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        part_bytes: int,
        threshold_bytes: int,
        at_most_bytes: int | None = None,
    ):
        """`at_most_bytes`: an upper bound on the body known up front (its
        Content-Length); at or under the multipart threshold, no part MD5s are
        needed, and hashing every byte a third time would be wasted."""
        self.path = directory / f"{uuid.uuid4().hex}.part"
        self._file = self.path.open("wb")
        self._max_bytes = max_bytes
        self._part_bytes = part_bytes
        self._threshold_bytes = threshold_bytes
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5()
        self._part_md5 = hashlib.md5()
        self._part_filled = 0
        self._part_md5s: list[str] = []
        self._single_part = at_most_bytes is not None and at_most_bytes <= threshold_bytes
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.size += len(chunk)
        if self.size > self._max_bytes:
            raise TooLarge(f"the object is larger than {self._max_bytes} bytes")
        self._file.write(chunk)
        self._sha256.update(chunk)
        self._md5.update(chunk)
        if self._single_part:
            if self.size <= self._threshold_bytes:
                return
            # longer than its Content-Length said (a body framed otherwise): the part
            # MD5s are made up for from what is spooled, and kept from here on
            self._single_part = False
            self._file.flush()
            with self.path.open("rb") as spooled:
                while piece := spooled.read(READ_BACK_BYTES):
                    self._add_to_parts(piece)
            return
        self._add_to_parts(chunk)

    def _add_to_parts(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            take = min(len(view), self._part_bytes - self._part_filled)
            self._part_md5.update(view[:take])
            self._part_filled += take
            view = view[take:]
            if self._part_filled == self._part_bytes:
                self._part_md5s.append(self._part_md5.hexdigest())
                self._part_md5 = hashlib.md5()
                self._part_filled = 0

    def write_all(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def finish(self) -> SpooledObject:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self.path.with_suffix("")
        os.replace(self.path, final)
        multipart = self.size > self._threshold_bytes
        part_md5s = list(self._part_md5s)
        if multipart and self._part_filled:
            part_md5s.append(self._part_md5.hexdigest())
        return SpooledObject(
            path=final,
            size=self.size,
            sha256=self._sha256.hexdigest(),
            md5=self._md5.hexdigest(),
            part_size=self._part_bytes if multipart else None,
            part_md5s=tuple(part_md5s) if multipart else (),
        )

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


class Spool:
    def __init__(self, directory: Path, part_bytes: int, threshold_bytes: int) -> None:
        self.directory = directory
        self._part_bytes = part_bytes
        self._threshold_bytes = threshold_bytes

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Leftovers of uploads cut off by a crash are never referenced by a row.
        # Only old ones go: another process sharing the spool may be writing.
        cutoff = time.time() - STALE_PART_SECONDS
        for leftover in self.directory.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()

    def sweep(self, referenced: set[str]) -> int:
        """Removes spool files no pending row refers to: uploads whose row was never
        committed, and copies of rows that settled just before a crash. Only old
        ones: another process sharing the spool may be about to insert its row."""
        cutoff = time.time() - UNREFERENCED_FILE_SECONDS
        removed = 0
        for path in self.directory.iterdir():
            if path.suffix == ".part" or str(path) in referenced:
                continue
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed

    def writer(self, max_bytes: int, at_most_bytes: int | None = None) -> SpoolWriter:
        return SpoolWriter(
            self.directory, max_bytes, self._part_bytes, self._threshold_bytes, at_most_bytes
        )

    @staticmethod
    def release(path: str | Path) -> None:
        Path(path).unlink(missing_ok=True)
