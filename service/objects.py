"""Accepting uploads and reading records: what the routes call."""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service import errors
from service.ledger import deliveries, notify, repository, transitions
from service.ledger.models import DELETED, PENDING, STORING, ObjectRow
from service.naming import name_problem, store_key
from service.settings import Settings
from service.spool import Spool, SpooledObject, SpoolWriter, TooLarge
from service.verifier.notify import Settlements
from service.verifier.policy import Policy
from service.webhooks.targets import CallbackRefused, check_callback_url

# how often a waiting client re-reads the ledger, for objects settled elsewhere
WAIT_RECHECK_SECONDS = 1.0
# an upload's bytes go to the spool (and its hashes) in batches of about this size
SPOOL_BATCH_BYTES = 1024 * 1024


@dataclass
class ObjectsContext:
    """What request handling needs; built once in the app's lifespan."""

    settings: Settings
    sessions: sessionmaker[Session]
    spool: Spool
    policy: Policy
    settlements: Settlements
    wake_verifier: Callable[[], None]
    bucket: str
    spool_reservations: SpoolReservations = field(default_factory=lambda: SpoolReservations())
    wake_dispatcher: Callable[[], None] = lambda: None
    origin: str = ""  # the runtime's token, sent with its work notifications


class SpoolReservations:
    """Bytes of uploads still streaming in this process. Together with the
    ledger's pending bytes they keep concurrent uploads under SPOOL_MAX_BYTES."""

    def __init__(self) -> None:
        self.in_flight = 0

    def open(self, room: int) -> Reservation:
        return Reservation(self, room)


class Reservation:
    def __init__(self, reservations: SpoolReservations, room: int) -> None:
        self._reservations = reservations
        self._room = room  # the spool's limit less what the ledger already holds
        self.taken = 0

    def take(self, size: int) -> None:
        if self._reservations.in_flight + size > self._room:
            raise errors.overloaded("the spool is full; try again later")
        self._reservations.in_flight += size
        self.taken += size

    def release(self) -> None:
        self._reservations.in_flight -= self.taken
        self.taken = 0


class UploadBody(Protocol):
    """An upload's bytes; `content_type` is final once the chunks are consumed."""

    content_type: str

    def chunks(self) -> AsyncIterator[bytes]: ...


@dataclass(frozen=True)
class ClientDigests:
    content_md5: str | None = None
    content_digest: str | None = None


def utcnow() -> datetime:
    return datetime.now(UTC)


DIGEST_MEMBER = re.compile(r"^\s*([A-Za-z0-9-]+)\s*=\s*:([A-Za-z0-9+/=]*):\s*(;.*)?$")
MAX_CONTENT_TYPE_LENGTH = 255
# what content_type_problem accepts, as a JSON Schema pattern for the document:
# printable ASCII, not blank (and at most MAX_CONTENT_TYPE_LENGTH characters)
CONTENT_TYPE_PATTERN = r"^(?![\s\S]*[^ -~])[ -~]*[!-~][ -~]*$"


def _b64_hex(value: str, length: int, header: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise errors.invalid_request(f"{header} is not valid base64") from exc
    if len(raw) != length:
        raise errors.invalid_request(f"{header} must be the base64 of {length} bytes")
    return raw.hex()


def _expected_digests(digests: ClientDigests) -> tuple[str | None, list[str]]:
    """(md5 hex, [sha256 hex...]) that the client says the body has.

    Content-Digest (RFC 9530) may name several algorithms; unknown ones are
    ignored, as the RFC allows, but every sha-256 member must match.
    """
    md5_hex = None
    if digests.content_md5 is not None:
        md5_hex = _b64_hex(digests.content_md5.strip(), 16, "Content-MD5")
    sha256_hexes: list[str] = []
    if digests.content_digest is not None:
        for member in digests.content_digest.split(","):
            match = DIGEST_MEMBER.match(member)
            if match is None:
                raise errors.invalid_request(
                    "Content-Digest must be a list of algorithm=:base64: members"
                )
            if match.group(1).lower() == "sha-256":
                sha256_hexes.append(_b64_hex(match.group(2), 32, "Content-Digest sha-256"))
    return md5_hex, sha256_hexes


def content_type_problem(content_type: str) -> str | None:
    """Content types go back out as a response header of the store: printable
    ASCII only, or a customer's HTTP client may refuse the verified URL."""
    if not content_type.strip():
        return "the content type is empty"
    if len(content_type) > MAX_CONTENT_TYPE_LENGTH:
        return f"the content type is longer than {MAX_CONTENT_TYPE_LENGTH} characters"
    if any(not (" " <= char <= "~") for char in content_type):
        return "the content type has characters other than printable ASCII"
    return None


def _check_content_type(content_type: str) -> None:
    problem = content_type_problem(content_type)
    if problem is not None:
        raise errors.invalid_request(problem)


# printable ASCII, 1-255 characters, no space at either end (the lookahead also
# keeps `$` from matching before a final newline)
IDEMPOTENCY_KEY_PATTERN = r"^(?![\s\S]*[^ -~])[!-~](?:[ -~]{0,253}[!-~])?$"
IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


@dataclass(frozen=True)
class Accepted:
    """The object an upload stands for; `replayed` when an earlier upload with
    the same Idempotency-Key created it."""

    row: ObjectRow
    replayed: bool = False


async def accept_upload(
    ctx: ObjectsContext,
    tenant: str,
    key_prefix: str,
    name: str,
    body: UploadBody,
    content_length: int | None,
    digests: ClientDigests,
    idempotency_key: str | None = None,
    callback_url: str | None = None,
) -> Accepted:
    """Spools the body, records the object `pending`, and wakes the verifier.

    Every refusal leaves nothing behind: no row, no spool file. With an
    `idempotency_key` that an earlier upload of the same name, bytes and content
    type used, nothing new is made: the answer is that upload's object.
    """
    problem = name_problem(name, key_prefix)
    if problem is not None:
        raise errors.invalid_name(problem)
    if idempotency_key is not None and IDEMPOTENCY_KEY.match(idempotency_key) is None:
        raise errors.invalid_request("Idempotency-Key must be 1-255 printable ASCII characters")
    expected_md5, expected_sha256s = _expected_digests(digests)
    _check_content_type(body.content_type)
    settings = ctx.settings
    if callback_url is not None:
        await _check_callback(callback_url, settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS)
    if content_length is not None and content_length > settings.MAX_OBJECT_BYTES:
        raise errors.too_large(settings.MAX_OBJECT_BYTES)

    def precheck() -> tuple[bool, int]:
        with ctx.sessions() as session:
            earlier = (
                repository.object_by_idempotency_key(session, tenant, idempotency_key)
                if idempotency_key is not None
                else None
            )
            if earlier is not None:
                # a retry's name is held by its own earlier upload: that is no conflict
                return True, repository.pending_bytes(session)
            taken, held = repository.live_name_and_pending_bytes(session, tenant, name)
            if taken and idempotency_key is not None:
                # the upload holding the name may have committed between the two
                # looks: if it holds this key too, this is its retry after all
                taken = (
                    repository.object_by_idempotency_key(session, tenant, idempotency_key) is None
                )
                if not taken:
                    return True, held
            if taken:
                raise errors.name_taken(name)
            return False, held

    is_retry, held = await run_in_threadpool(precheck)
    reservation = ctx.spool_reservations.open(settings.SPOOL_MAX_BYTES - held)
    try:
        if content_length is not None:
            reservation.take(content_length)
        spooled = await _spool_body(ctx, body, reservation, content_length)
        try:
            if expected_md5 is not None and expected_md5 != spooled.md5:
                raise errors.digest_mismatch("Content-MD5")
            if any(expected != spooled.sha256 for expected in expected_sha256s):
                raise errors.digest_mismatch("Content-Digest")
            _check_content_type(body.content_type)  # a form part's type is known only now
            row = _new_row(
                ctx, tenant, store_key(key_prefix, name), name, body.content_type, spooled
            )
            row.idempotency_key = idempotency_key
            row.callback_url = callback_url
            holder = (
                await run_in_threadpool(_earlier_upload, ctx.sessions, row) if is_retry else None
            )
            if holder is None:
                holder = await run_in_threadpool(_insert, ctx.sessions, row, ctx.origin)
            if holder is not row:
                Spool.release(spooled.path)
                return Accepted(_same_upload(holder, row), replayed=True)
        except BaseException:
            Spool.release(spooled.path)
            raise
    finally:
        # committed rows count as pending bytes from now on
        reservation.release()
    ctx.wake_verifier()
    return Accepted(row)


async def _check_callback(url: str, allow_private: bool) -> None:
    try:
        await run_in_threadpool(check_callback_url, url, allow_private)
    except CallbackRefused as exc:
        raise errors.invalid_callback_url(str(exc)) from exc


def _same_upload(earlier: ObjectRow, retry: ObjectRow) -> ObjectRow:
    """The earlier upload, if `retry` asks for the same object; else 422."""
    same = (earlier.name, earlier.sha256, earlier.content_type, earlier.callback_url) == (
        retry.name,
        retry.sha256,
        retry.content_type,
        retry.callback_url,
    )
    if not same:
        raise errors.idempotency_key_reused()
    return earlier


async def _spool_body(
    ctx: ObjectsContext, body: UploadBody, reservation: Reservation, content_length: int | None
) -> SpooledObject:
    """Writes the body to the spool, hashing it, in a worker thread a batch at a
    time: the event loop only receives, and hashing (which releases the GIL)
    and the final fsync run beside it. With a Content-Length the whole body was
    reserved up front."""
    max_bytes = ctx.settings.MAX_OBJECT_BYTES
    writer: SpoolWriter = ctx.spool.writer(max_bytes, content_length)
    batch: list[bytes] = []
    batched = received = 0
    try:
        async for chunk in body.chunks():
            received += len(chunk)
            if received > max_bytes:
                raise TooLarge(f"the object is larger than {max_bytes} bytes")
            if content_length is None or received > reservation.taken:
                reservation.take(len(chunk))
            batch.append(chunk)
            batched += len(chunk)
            if batched >= SPOOL_BATCH_BYTES:
                await run_in_threadpool(writer.write_all, batch)
                batch, batched = [], 0

        def finish() -> SpooledObject:
            writer.write_all(batch)
            return writer.finish()

        return await run_in_threadpool(finish)
    except TooLarge as exc:
        writer.discard()
        raise errors.too_large(ctx.settings.MAX_OBJECT_BYTES) from exc
    except BaseException:
        writer.discard()
        raise


def _new_row(
    ctx: ObjectsContext,
    tenant: str,
    key: str,
    name: str,
    content_type: str,
    spooled: SpooledObject,
) -> ObjectRow:
    now = utcnow()
    return ObjectRow(
        id=repository.new_object_id(),
        tenant=tenant,
        name=name,
        bucket=ctx.bucket,
        key=key,
        size=spooled.size,
        sha256=spooled.sha256,
        md5=spooled.md5,
        part_size=spooled.part_size,
        part_md5s=",".join(spooled.part_md5s) or None,
        content_type=content_type,
        spool_path=str(spooled.path),
        state=PENDING,
        phase=STORING,
        rounds=1,
        store_attempts=0,
        round_store_attempts=0,
        checks=0,
        round_checks=0,
        check_errors=0,
        overwrite=False,
        next_action_at=now,
        created_at=now,
        updated_at=now,
        settle_by=ctx.policy.settle_by(now, spooled.size),
    )


def _insert(sessions: sessionmaker[Session], row: ObjectRow, origin: str = "") -> ObjectRow:
    """Commits `row`, or returns the earlier upload that holds its Idempotency-Key."""
    try:
        with sessions.begin() as session:
            repository.insert_object(session, row)
            notify.new_work(session, origin)  # wakes workers in other processes at commit
    except IntegrityError as exc:
        # two uploads raced past the first look: the unique indexes decide which
        # one won, and the loser is either a retry of the winner or a name clash
        earlier = None if row.idempotency_key is None else _earlier_upload(sessions, row)
        if earlier is None:
            raise errors.name_taken(row.name) from exc
        return earlier
    return row


def _earlier_upload(sessions: sessionmaker[Session], row: ObjectRow) -> ObjectRow | None:
    """The object that an earlier upload with `row`'s Idempotency-Key made.
    Keys are kept as long as their record is, which is for good."""
    assert row.idempotency_key is not None
    with sessions() as session:
        return repository.object_by_idempotency_key(session, row.tenant, row.idempotency_key)


async def get_object(ctx: ObjectsContext, tenant: str, object_id: str) -> ObjectRow:
    def read() -> ObjectRow | None:
        with ctx.sessions() as session:
            return repository.get_object(session, tenant, object_id)

    row = await run_in_threadpool(read)
    if row is None:
        raise errors.not_found()
    return row


async def delete_object(ctx: ObjectsContext, tenant: str, object_id: str) -> ObjectRow:
    """Marks the object deleted at once (no URL ever again) and has the verifier
    purge its bytes from the store; deleting twice is the same as once."""

    def mark() -> ObjectRow | None:
        with ctx.sessions.begin() as session:
            row = repository.lock_object(session, tenant, object_id)
            if row is None or row.state == DELETED:
                return row
            transitions.deleted(row, utcnow(), ctx.settings.LEASE_SECONDS)
            # its URL is dead now: no event may still hand it out
            deliveries.cancel_pending(session, row.id, "the object was deleted")
            # a worker still on a step of it can no longer record anything
            row.lease_token = repository.new_object_id()
            row.lease_owner = None
            notify.new_work(session, ctx.origin)
            return row

    row = await run_in_threadpool(mark)
    if row is None:
        raise errors.not_found()
    Spool.release(row.spool_path)
    ctx.settlements.notify(row.id)
    ctx.wake_verifier()
    return row


async def wait_settled(
    ctx: ObjectsContext, tenant: str, row: ObjectRow, wait_seconds: float
) -> ObjectRow:
    """Long-poll: returns once the object leaves pending, or when the wait is over.

    Woken by the in-process verifier at once, with the row it committed; re-reads
    the ledger at most once a second for objects that another process settles.
    """
    deadline = time.monotonic() + min(wait_seconds, ctx.settings.MAX_WAIT_SECONDS)
    while row.state == PENDING:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        settled = await ctx.settlements.wait(row.id, min(remaining, WAIT_RECHECK_SECONDS))
        if settled is not None and settled.tenant == tenant:
            row = settled
        else:
            row = await get_object(ctx, tenant, row.id)
    return row


async def list_objects(
    ctx: ObjectsContext, tenant: str, state: str | None, limit: int, cursor: str | None
) -> tuple[list[ObjectRow], str | None]:
    after = decode_cursor(cursor) if cursor else None

    def read() -> list[ObjectRow]:
        with ctx.sessions() as session:
            return list(repository.list_objects(session, tenant, state, limit + 1, after))

    rows = await run_in_threadpool(read)
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def encode_cursor(row: ObjectRow) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, object_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(created)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.invalid_request("the cursor is not one this service gave out") from exc
    if created_at.tzinfo is None:
        raise errors.invalid_request("the cursor is not one this service gave out")
    return created_at, object_id


def retry_after_seconds(row: ObjectRow) -> int:
    """When a polling client should ask again: the next action, within 1..30 s."""
    seconds = (row.next_action_at - utcnow()).total_seconds()
    return int(min(30, max(1, seconds + 0.999)))
