"""What the console needs: held posts, tag details, token roles, an anonymous ledger,
suppression history and background jobs

- posts.held_at/held_by: an editor holds a post back from planning and releases it;
- tags.description/listed: the console edits a tag's description and whether the
  sign-up page offers it;
- api_tokens.role: a token reaches what a console role reaches (existing tokens keep
  full access as "admin");
- deliveries.subscriber_id becomes nullable with ON DELETE SET NULL, so deleting a
  reader with their personal data keeps the digests' counts;
- suppression_events: who added, changed and lifted each suppression, and when;
- console_jobs: bulk actions and imports run by a worker, with their progress.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 20:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("posts", schema=None) as batch_op:
        batch_op.add_column(_ts("held_at", nullable=True))
        batch_op.add_column(sa.Column("held_by", sa.String(length=320), nullable=True))
    with op.batch_alter_table("tags", schema=None) as batch_op:
        batch_op.add_column(sa.Column("description", sa.Text(), server_default="", nullable=False))
        batch_op.add_column(
            sa.Column("listed", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("role", sa.String(length=16), server_default="admin", nullable=False)
        )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.alter_column("subscriber_id", existing_type=sa.Integer(), nullable=True)
        batch_op.drop_constraint("fk_deliveries_subscriber_id_subscribers", type_="foreignkey")
        batch_op.create_foreign_key(
            "fk_deliveries_subscriber_id_subscribers",
            "subscribers",
            ["subscriber_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.create_table(
        "suppression_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.String(length=2000), nullable=True),
        sa.Column("actor", sa.String(length=320), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suppression_events")),
    )
    op.create_index(
        op.f("ix_suppression_events_email"), "suppression_events", ["email"], unique=False
    )
    op.create_table(
        "console_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=320), nullable=False),
        _ts("created_at"),
        _ts("started_at", nullable=True),
        _ts("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_jobs")),
    )
    op.create_index(op.f("ix_console_jobs_status"), "console_jobs", ["status"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_console_jobs_status"), table_name="console_jobs")
    op.drop_table("console_jobs")
    op.drop_index(op.f("ix_suppression_events_email"), table_name="suppression_events")
    op.drop_table("suppression_events")
    # Rows of deleted readers have no reader to point at; they cannot survive the old
    # NOT NULL + CASCADE shape.
    op.execute("DELETE FROM deliveries WHERE subscriber_id IS NULL")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_constraint("fk_deliveries_subscriber_id_subscribers", type_="foreignkey")
        batch_op.create_foreign_key(
            "fk_deliveries_subscriber_id_subscribers",
            "subscribers",
            ["subscriber_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.alter_column("subscriber_id", existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("role")
    with op.batch_alter_table("tags", schema=None) as batch_op:
        batch_op.drop_column("listed")
        batch_op.drop_column("description")
    with op.batch_alter_table("posts", schema=None) as batch_op:
        batch_op.drop_column("held_by")
        batch_op.drop_column("held_at")
