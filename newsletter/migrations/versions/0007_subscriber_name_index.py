"""Readers found by the start of their name: an index on the lower-cased name

The console's subscriber search matches an address or a name prefix in one query; with
this index both sides are index range scans, so a search stays fast on a large list.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 19:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_subscribers_name_lower", "subscribers", [sa.text("lower(name)")])


def downgrade() -> None:
    op.drop_index("ix_subscribers_name_lower", table_name="subscribers")
