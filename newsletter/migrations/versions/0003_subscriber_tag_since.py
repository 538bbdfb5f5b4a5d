"""When each tag was followed, so a newly followed tag does not bring its old posts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 04:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("subscriber_tags", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "created_at",
                sa.DateTime(timezone=True),
                nullable=False,
                server_default=sa.text("CURRENT_TIMESTAMP"),
            )
        )
    # Existing follows date from the subscription itself.
    op.execute(
        "UPDATE subscriber_tags SET created_at = (SELECT subscribed_at FROM subscribers"
        " WHERE subscribers.id = subscriber_tags.subscriber_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("subscriber_tags", schema=None) as batch_op:
        batch_op.drop_column("created_at")
