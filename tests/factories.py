"""Small factories for ledger rows."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from service.ledger import repository
from service.ledger.models import PENDING, STORING, ObjectRow


def object_row(**overrides: Any) -> ObjectRow:
    now = datetime.now(UTC)
    data = b"abc"
    values: dict[str, Any] = dict(
        id=repository.new_object_id(),
        tenant="default",
        name=f"name-{repository.new_object_id()}",
        bucket="b",
        key="k",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data).hexdigest(),
        content_type="text/plain",
        spool_path="/nonexistent",
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
        settle_by=now + timedelta(hours=1),
    )
    values.update(overrides)
    return ObjectRow(**values)
