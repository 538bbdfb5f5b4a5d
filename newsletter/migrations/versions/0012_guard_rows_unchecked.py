"""Guard rows without foreign keys: delivery_posts.subscriber_id and post_id

Each guard row checked two foreign keys as it was written: a lookup of the reader
and one of the post, with a row lock on each, for about three guard rows per
delivery. At 100,000 readers that was 18% of planning's time in PostgreSQL
(docs/benchmarks.md). The guard row is short-lived (ledger compaction deletes it
once the post is settled for the reader) and its delivery id has had no foreign key
since 0010; a reader's guard rows are now deleted with the reader
(`subscribers.services.forget`, `expire_pending`) and a post's with the post. A
chunk still cannot promise a post to a reader deleted under it: the delivery row it
writes in the same transaction keeps its key to the reader.

The downgrade deletes guard rows whose reader or post is gone, then puts the keys back.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28 05:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("delivery_posts", schema=None) as batch_op:
        batch_op.drop_constraint("fk_delivery_posts_post_id_posts", type_="foreignkey")
        batch_op.drop_constraint("fk_delivery_posts_subscriber_id_subscribers", type_="foreignkey")


def downgrade() -> None:
    op.execute(
        "DELETE FROM delivery_posts WHERE subscriber_id NOT IN (SELECT id FROM subscribers) "
        "OR post_id NOT IN (SELECT id FROM posts)"
    )
    with op.batch_alter_table("delivery_posts", schema=None) as batch_op:
        batch_op.create_foreign_key(
            "fk_delivery_posts_subscriber_id_subscribers",
            "subscribers",
            ["subscriber_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_foreign_key(
            "fk_delivery_posts_post_id_posts", "posts", ["post_id"], ["id"], ondelete="CASCADE"
        )
