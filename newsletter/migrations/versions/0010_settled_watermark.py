"""A ledger that grows with deliveries, not deliveries x posts: a settled watermark
per reader

- subscribers.planned_through: when planning last looked at every post for the
  reader; backfilled from each reader's latest delivery (the planning that wrote it
  committed every post that was theirs then);
- subscribers.settled_through: every post received at or before it is settled for the
  reader (promised, or never to be), so planning never looks at it again and ledger
  compaction (`newsletter.delivery.ledger.compact`) deletes its delivery_posts rows.
  It starts empty (no bound): the first compaction sets it.

- delivery_posts.delivery_id loses its foreign key and index: checking and indexing
  it cost as much as the rest of the guard row's write (half of it, measured at
  100,000 readers), and nothing deletes deliveries.

The downgrade puts back the delivery_posts rows compaction deleted, from each
delivery's digest post ids, so the older code's guard against a second promise holds
again before the watermark it relied on goes.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RESTORE_POSTGRESQL = """
INSERT INTO delivery_posts (subscriber_id, post_id, delivery_id)
SELECT d.subscriber_id, p.id, min(d.id)
FROM deliveries d
JOIN digests g ON g.id = d.digest_id
CROSS JOIN LATERAL json_array_elements_text(g.post_ids) AS e(value)
JOIN posts p ON p.id = e.value::integer
WHERE d.subscriber_id IS NOT NULL
GROUP BY d.subscriber_id, p.id
ON CONFLICT DO NOTHING
"""

RESTORE_SQLITE = """
INSERT OR IGNORE INTO delivery_posts (subscriber_id, post_id, delivery_id)
SELECT d.subscriber_id, p.id, min(d.id)
FROM deliveries d
JOIN digests g ON g.id = d.digest_id
JOIN json_each(g.post_ids) AS e
JOIN posts p ON p.id = e.value
WHERE d.subscriber_id IS NOT NULL
GROUP BY d.subscriber_id, p.id
"""


def upgrade() -> None:
    # Plain ALTER TABLE on both backends: a batch rebuild of the table on SQLite would
    # lose the expression index on lower(name), which it cannot reflect.
    op.add_column("subscribers", sa.Column("planned_through", sa.DateTime(timezone=True)))
    op.add_column("subscribers", sa.Column("settled_through", sa.DateTime(timezone=True)))
    with op.batch_alter_table("delivery_posts", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_posts_delivery_id")
        batch_op.drop_constraint("fk_delivery_posts_delivery_id_deliveries", type_="foreignkey")
    op.execute(
        "UPDATE subscribers SET planned_through = ("
        "SELECT max(d.created_at) FROM deliveries d WHERE d.subscriber_id = subscribers.id)"
    )


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.execute(RESTORE_POSTGRESQL if postgresql else RESTORE_SQLITE)
    op.execute("DELETE FROM delivery_posts WHERE delivery_id NOT IN (SELECT id FROM deliveries)")
    with op.batch_alter_table("delivery_posts", schema=None) as batch_op:
        batch_op.create_foreign_key(
            "fk_delivery_posts_delivery_id_deliveries",
            "deliveries",
            ["delivery_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_index("ix_delivery_posts_delivery_id", ["delivery_id"])
    for column in ("settled_through", "planned_through"):
        if postgresql:
            op.drop_column("subscribers", column)
        else:  # SQLite 3.35+ drops a column in place (see the upgrade for why not batch)
            op.execute(f"ALTER TABLE subscribers DROP COLUMN {column}")
