"""idempotency keys of uploads

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HAS_KEY = "idempotency_key IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("objects") as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=255), nullable=True))
        batch_op.create_index(
            "uq_objects_idempotency_key",
            ["tenant", "idempotency_key"],
            unique=True,
            sqlite_where=sa.text(HAS_KEY),
            postgresql_where=sa.text(HAS_KEY),
        )


def downgrade() -> None:
    with op.batch_alter_table("objects") as batch_op:
        batch_op.drop_index("uq_objects_idempotency_key")
        batch_op.drop_column("idempotency_key")
