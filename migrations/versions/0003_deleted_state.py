"""the deleted state and its purging phase

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE_NAME = "state IN ('pending', 'verified') OR phase = 'purging'"
OLD_LIVE_NAME = "state IN ('pending', 'verified')"


def _swap(state_check: str, phase_check: str, live_name: str, due: str) -> None:
    with op.batch_alter_table("objects") as batch_op:
        batch_op.drop_index("uq_objects_live_name")
        batch_op.drop_index("ix_objects_due")
        batch_op.drop_constraint(op.f("ck_objects_state"), type_="check")
        batch_op.drop_constraint(op.f("ck_objects_phase"), type_="check")
        batch_op.create_check_constraint("state", sa.text(state_check))
        batch_op.create_check_constraint("phase", sa.text(phase_check))
        batch_op.create_index(
            "uq_objects_live_name",
            ["tenant", "name"],
            unique=True,
            sqlite_where=sa.text(live_name),
            postgresql_where=sa.text(live_name),
        )
        batch_op.create_index(
            "ix_objects_due",
            ["next_action_at"],
            unique=False,
            sqlite_where=sa.text(due),
            postgresql_where=sa.text(due),
        )


def upgrade() -> None:
    _swap(
        "state IN ('pending', 'verified', 'failed', 'deleted')",
        "phase IN ('storing', 'verifying', 'purging', 'done')",
        LIVE_NAME,
        "phase <> 'done'",
    )


def downgrade() -> None:
    _swap(
        "state IN ('pending', 'verified', 'failed')",
        "phase IN ('storing', 'verifying', 'done')",
        OLD_LIVE_NAME,
        "state = 'pending'",
    )
