"""The state machine of one object: what each store outcome does to its row.

Pure functions on a detached row: no I/O, so tests call them directly. The
verifier performs a store request, then applies exactly one of these.

A round = the PUT (first try plus up to `store_retries` retries on any error),
then the profile's checks. A round that runs out of retries, or whose checks
never see the right object, ends; the next round stores again from the spool,
up to `rounds` rounds. Then the object is `failed`.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from service.ledger.models import (
    DELETED,
    DONE,
    FAILED,
    PURGING,
    STORING,
    VERIFIED,
    VERIFYING,
    ObjectRow,
)
from service.storage.base import ObjectInfo, StoreError, multipart_etag
from service.verifier.policy import Policy

# failure reason codes (`error.code`)
STORE_UNAVAILABLE = "store_unavailable"
NEVER_VISIBLE = "never_visible"
CONTENT_MISMATCH = "content_mismatch"
STORE_REJECTED = "store_rejected"
SPOOL_MISSING = "spool_missing"

REASON_MESSAGES = {
    STORE_UNAVAILABLE: "the store kept answering errors until the retries ran out",
    NEVER_VISIBLE: "the store acknowledged the object but never showed it",
    CONTENT_MISMATCH: "the store holds other bytes than the ones sent",
    STORE_REJECTED: "the store refused the object for good",
    SPOOL_MISSING: "the spool copy needed to store the object again is gone",
}


def _note_error(row: ObjectRow, error: StoreError) -> None:
    row.last_error_code = error.code[:64]
    row.last_error_detail = error.detail[:2000] or None


def fail(row: ObjectRow, reason: str, now: datetime, detail: str | None = None) -> None:
    row.state = FAILED
    row.phase = DONE
    row.error_code = reason
    message = REASON_MESSAGES[reason]
    if detail:
        message = f"{message} ({detail})"
    row.error_message = message
    row.updated_at = now


def begin_next_round(row: ObjectRow, policy: Policy, reason: str, now: datetime) -> None:
    """Ends the round for `reason`: re-run from the spool, or fail after the last round."""
    if row.rounds >= policy.rounds:
        detail = f"last error {row.last_error_code}" if row.last_error_code else None
        fail(row, reason, now, detail)
        return
    row.rounds += 1
    row.phase = STORING
    row.round_store_attempts = 0
    row.round_checks = 0
    row.check_errors = 0
    row.next_action_at = now
    row.updated_at = now


def put_succeeded(row: ObjectRow, etag: str | None, version_id: str | None, now: datetime) -> None:
    row.store_attempts += 1
    row.round_store_attempts += 1
    row.phase = VERIFYING
    row.stored_at = now
    row.etag = etag
    row.version_id = version_id
    row.check_errors = 0
    row.next_action_at = now  # the first check comes right after an OK PUT
    row.updated_at = now


def put_found_existing(row: ObjectRow, now: datetime) -> None:
    """If-None-Match: * answered 412: something is there (perhaps our own earlier,
    unanswered PUT). Resolve it by checking, never by assuming; if it turns out
    to be other bytes, later PUTs overwrite it."""
    put_succeeded(row, None, None, now)
    row.overwrite = True


def put_failed(
    row: ObjectRow,
    error: StoreError,
    permanent: bool,
    policy: Policy,
    now: datetime,
    rng: random.Random,
) -> None:
    row.store_attempts += 1
    row.round_store_attempts += 1
    _note_error(row, error)
    row.updated_at = now
    if permanent:
        fail(row, STORE_REJECTED, now, error.code)
        return
    retries_used = row.round_store_attempts - 1
    if retries_used >= policy.store_retries:
        begin_next_round(row, policy, STORE_UNAVAILABLE, now)
        return
    row.next_action_at = now + timedelta(seconds=policy.retry_wait(retries_used + 1, rng))


def content_verdict(row: ObjectRow, info: ObjectInfo) -> str:
    """`pass`, `mismatch`, or `read` (the ETag proves nothing: read the bytes back)."""
    if info.size != row.size:
        return "mismatch"
    if info.server_side_encryption == "aws:kms":
        return "read"  # an SSE-KMS ETag is not a content MD5
    etag = info.etag.lower()
    if etag == row.md5:
        return "pass"
    if row.part_md5s and etag == multipart_etag(row.part_md5s.split(",")):
        return "pass"
    if "-" not in etag and len(etag) == 32:
        return "mismatch"  # a single-part content MD5 that is not ours
    return "read"


def check_passed(row: ObjectRow, info: ObjectInfo | None, now: datetime) -> None:
    row.checks += 1
    row.round_checks += 1
    row.check_errors = 0
    row.state = VERIFIED
    row.phase = DONE
    if info is not None:
        row.etag = info.etag
        row.version_id = info.version_id
    row.error_code = None
    row.error_message = None
    row.verified_at = now
    row.updated_at = now


def _schedule_next_check(row: ObjectRow, policy: Policy, reason: str, now: datetime) -> None:
    if row.round_checks >= policy.checks:
        begin_next_round(row, policy, reason, now)
        return
    assert row.stored_at is not None
    due = row.stored_at + timedelta(seconds=policy.check_offset_seconds(row.round_checks))
    row.next_action_at = max(due, now)
    row.updated_at = now


def check_missing(row: ObjectRow, policy: Policy, now: datetime) -> None:
    """The store says the object is not there (404): a check that did not see it."""
    row.checks += 1
    row.round_checks += 1
    row.check_errors = 0
    row.last_error_code = "NotFound"
    row.last_error_detail = None
    _schedule_next_check(row, policy, NEVER_VISIBLE, now)


def check_mismatched(row: ObjectRow, policy: Policy, detail: str, now: datetime) -> None:
    """Wrong size or bytes: no later check can fix that, so store again at once."""
    row.checks += 1
    row.round_checks += 1
    row.check_errors = 0
    row.overwrite = True
    row.last_error_code = "ContentMismatch"
    row.last_error_detail = detail
    begin_next_round(row, policy, CONTENT_MISMATCH, now)


def check_unknown(
    row: ObjectRow, error: StoreError, policy: Policy, now: datetime, rng: random.Random
) -> None:
    """A 403/5xx/timeout: neither passes nor fails the check; ask again, a few times.
    When the retries run out, the check counts as one that did not see it."""
    _note_error(row, error)
    row.check_errors += 1
    row.updated_at = now
    if row.check_errors <= policy.store_retries:
        row.next_action_at = now + timedelta(seconds=policy.retry_wait(row.check_errors, rng))
        return
    row.checks += 1
    row.round_checks += 1
    row.check_errors = 0
    _schedule_next_check(row, policy, STORE_UNAVAILABLE, now)


def spool_missing(row: ObjectRow, now: datetime) -> None:
    fail(row, SPOOL_MISSING, now)


def deadline_passed(row: ObjectRow, now: datetime) -> None:
    """Past `settle_by`: the promise is that the object has left pending by now."""
    reason = NEVER_VISIBLE if row.last_error_code == "NotFound" else STORE_UNAVAILABLE
    fail(row, reason, now, "settle_by passed")


def deleted(row: ObjectRow, now: datetime, in_flight_grace_seconds: float) -> None:
    """The client deleted it: no URL ever again; its bytes are purged from the store.

    A step another worker may still have in flight (its lease is live) gets time
    to end first; its own write then fails on the changed lease token.
    """
    leased = row.lease_expires_at is not None and row.lease_expires_at > now
    row.state = DELETED
    row.phase = PURGING
    row.round_store_attempts = 0
    row.check_errors = 0
    row.next_action_at = now + timedelta(seconds=in_flight_grace_seconds if leased else 0)
    row.updated_at = now


def purge_done(row: ObjectRow, now: datetime) -> None:
    row.phase = DONE
    row.updated_at = now


def purge_failed(
    row: ObjectRow, error: StoreError, policy: Policy, now: datetime, rng: random.Random
) -> None:
    """Retried like a PUT, for as many tries as all rounds together. Then it stops;
    the name is free again, and `reconcile` reports the bytes left behind."""
    _note_error(row, error)
    row.round_store_attempts += 1
    row.updated_at = now
    if row.round_store_attempts >= (policy.store_retries + 1) * policy.rounds:
        row.phase = DONE
        row.error_code = None
        row.error_message = f"purging from the store gave up (last error {error.code})"
        return
    wait = policy.retry_wait(min(row.round_store_attempts, policy.store_retries), rng)
    row.next_action_at = now + timedelta(seconds=wait)
