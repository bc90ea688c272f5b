"""The state machine, step by step, without I/O."""

import random
from datetime import UTC, datetime, timedelta

import pytest

from service.ledger import transitions
from service.ledger.models import FAILED, PENDING, STORING, VERIFIED, VERIFYING, ObjectRow
from service.storage.base import ObjectInfo, Unavailable, multipart_etag
from service.verifier.policy import Policy

NOW = datetime(2026, 1, 1, tzinfo=UTC)
MD5 = "0" * 31 + "1"


def policy(**overrides: object) -> Policy:
    values: dict[str, object] = dict(
        profile="eventual",
        store_retries=6,
        retry_base_seconds=0.5,
        retry_max_seconds=30.0,
        checks=11,
        check_window_seconds=120.0,
        rounds=7,
        attempt_timeout_seconds=35.0,
        min_bytes_per_second=1024 * 1024,
    )
    values.update(overrides)
    return Policy(**values)  # type: ignore[arg-type]


def new_row(size: int = 3) -> ObjectRow:
    return ObjectRow(
        id="x",
        size=size,
        md5=MD5,
        sha256="s",
        part_md5s=None,
        state=PENDING,
        phase=STORING,
        rounds=1,
        store_attempts=0,
        round_store_attempts=0,
        checks=0,
        round_checks=0,
        check_errors=0,
        overwrite=False,
        next_action_at=NOW,
        updated_at=NOW,
    )


def test_retry_waits_grow_and_are_jittered() -> None:
    p = policy()
    rng = random.Random(1)
    bounds = [p.max_retry_wait(r) for r in range(1, 7)]
    assert bounds == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    waits = [p.retry_wait(3, rng) for _ in range(200)]
    assert min(waits) >= 1.0 and max(waits) <= 2.0
    assert len(set(waits)) > 100


def test_eventual_checks_span_the_window() -> None:
    p = policy()
    offsets = [p.check_offset_seconds(i) for i in range(11)]
    assert offsets[0] == 0 and offsets[-1] == 120 and offsets[1] == 12


def test_put_errors_retry_six_times_then_a_new_round() -> None:
    p = policy()
    row = new_row()
    rng = random.Random(0)
    for attempt in range(1, 7):
        transitions.put_failed(row, Unavailable("AccessDenied", "", 403), False, p, NOW, rng)
        assert row.rounds == 1 and row.state == PENDING
        assert row.next_action_at > NOW
        assert row.last_error_code == "AccessDenied"
        assert row.store_attempts == attempt
    transitions.put_failed(row, Unavailable("SlowDown", "", 503), False, p, NOW, rng)
    assert row.rounds == 2 and row.phase == STORING and row.round_store_attempts == 0
    assert row.store_attempts == 7


def test_last_round_of_errors_fails_store_unavailable() -> None:
    p = policy(rounds=2, store_retries=1)
    row = new_row()
    rng = random.Random(0)
    for _ in range(4):
        transitions.put_failed(row, Unavailable("InternalError", "", 500), False, p, NOW, rng)
    assert row.state == FAILED and row.error_code == "store_unavailable"
    assert row.store_attempts == 4


def test_permanent_answer_fails_at_once() -> None:
    row = new_row()
    transitions.put_failed(row, Unavailable("NoSuchBucket"), True, policy(), NOW, random.Random())
    assert row.state == FAILED and row.error_code == "store_rejected"


def test_first_check_right_after_the_put_then_verified() -> None:
    row = new_row()
    transitions.put_succeeded(row, MD5, None, NOW)
    assert row.phase == VERIFYING and row.next_action_at == NOW
    assert transitions.content_verdict(row, ObjectInfo(3, MD5)) == "pass"
    transitions.check_passed(row, ObjectInfo(3, MD5), NOW)
    assert row.state == VERIFIED and row.checks == 1 and row.verified_at == NOW


def test_never_visible_after_eleven_checks_then_rerun_then_fail() -> None:
    p = policy(rounds=2)
    row = new_row()
    for round_number in (1, 2):
        transitions.put_succeeded(row, MD5, None, NOW)
        for check in range(11):
            assert row.rounds == round_number
            transitions.check_missing(row, p, NOW + timedelta(seconds=12 * check))
    assert row.state == FAILED and row.error_code == "never_visible"
    assert row.checks == 22 and row.store_attempts == 2


def test_checks_follow_the_schedule() -> None:
    p = policy()
    row = new_row()
    transitions.put_succeeded(row, MD5, None, NOW)
    transitions.check_missing(row, p, NOW)
    assert row.next_action_at == NOW + timedelta(seconds=12)
    transitions.check_missing(row, p, NOW + timedelta(seconds=12))
    assert row.next_action_at == NOW + timedelta(seconds=24)


def test_unknown_check_neither_passes_nor_fails() -> None:
    p = policy(checks=1, check_window_seconds=0)
    row = new_row()
    transitions.put_succeeded(row, MD5, None, NOW)
    transitions.check_unknown(row, Unavailable("InternalError", "", 500), p, NOW, random.Random())
    assert row.state == PENDING and row.phase == VERIFYING and row.checks == 0
    transitions.check_passed(row, ObjectInfo(3, MD5), NOW)
    assert row.state == VERIFIED


def test_unknowns_until_retries_run_out_count_as_an_unseen_check() -> None:
    p = policy(checks=1, check_window_seconds=0, rounds=1, store_retries=2)
    row = new_row()
    transitions.put_succeeded(row, MD5, None, NOW)
    for _ in range(3):
        transitions.check_unknown(row, Unavailable("403", "", 403), p, NOW, random.Random())
    assert row.state == FAILED and row.error_code == "store_unavailable"


@pytest.mark.parametrize(
    ("info", "verdict"),
    [
        (ObjectInfo(3, MD5), "pass"),
        (ObjectInfo(4, MD5), "mismatch"),
        (ObjectInfo(3, "f" * 32), "mismatch"),
        (ObjectInfo(3, MD5, server_side_encryption="aws:kms"), "read"),
        (ObjectInfo(3, "abc-2"), "read"),
        (ObjectInfo(0, "d41d8cd98f00b204e9800998ecf8427e"), "mismatch"),
    ],
)
def test_content_verdict(info: ObjectInfo, verdict: str) -> None:
    assert transitions.content_verdict(new_row(), info) == verdict


def test_multipart_etag_from_our_part_md5s() -> None:
    row = new_row()
    row.part_md5s = ",".join(["a" * 32, "b" * 32])
    etag = multipart_etag(["a" * 32, "b" * 32])
    assert etag.endswith("-2")
    assert transitions.content_verdict(row, ObjectInfo(3, etag)) == "pass"


def test_mismatch_stores_again_at_once_overwriting() -> None:
    p = policy()
    row = new_row()
    transitions.put_succeeded(row, MD5, None, NOW)
    transitions.check_mismatched(row, p, "wrong", NOW)
    assert row.rounds == 2 and row.phase == STORING and row.overwrite
    assert row.next_action_at == NOW


def test_precondition_failed_is_resolved_by_checking() -> None:
    row = new_row()
    transitions.put_found_existing(row, NOW)
    assert row.phase == VERIFYING and row.overwrite and row.next_action_at == NOW


def test_settle_by_bounds_the_worst_case() -> None:
    p = policy()
    created = NOW
    settle_by = p.settle_by(created, 3)
    # seven rounds, each at least the check window plus seven PUT timeouts
    assert settle_by - created > timedelta(seconds=7 * (120 + 7 * 35))
    assert p.settle_by(created, 10**9) > settle_by
