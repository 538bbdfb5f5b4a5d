"""Bounces and complaints read back in: bounce_events

- bounce_events: one row per recipient of each bounce or complaint report applied,
  with the raw diagnostic, the delivery it answers and the reader it concerns; `key`
  is unique, so a report read twice counts once. A reader's rows go with the reader
  (ON DELETE CASCADE: a diagnostic often quotes the address); a delivery's rows
  outlive it with no delivery (ON DELETE SET NULL).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28 02:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bounce_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("delivery_id", sa.Integer(), nullable=True),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("diagnostic", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("via", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=200), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_bounce_events_delivery_id_deliveries"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_bounce_events_subscriber_id_subscribers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bounce_events")),
        sa.UniqueConstraint("key", name=op.f("uq_bounce_events_key")),
    )
    op.create_index(
        op.f("ix_bounce_events_delivery_id"), "bounce_events", ["delivery_id"], unique=False
    )
    op.create_index(
        op.f("ix_bounce_events_subscriber_id"), "bounce_events", ["subscriber_id"], unique=False
    )
    op.create_index(
        "ix_bounce_events_email_kind_occurred",
        "bounce_events",
        ["email", "kind", "occurred_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_bounce_events_email_kind_occurred", table_name="bounce_events")
    op.drop_index(op.f("ix_bounce_events_subscriber_id"), table_name="bounce_events")
    op.drop_index(op.f("ix_bounce_events_delivery_id"), table_name="bounce_events")
    op.drop_table("bounce_events")
