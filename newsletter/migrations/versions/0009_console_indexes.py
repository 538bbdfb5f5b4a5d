"""The console's list at a million readers: a status filter in address order, and
name matches read from the index alone

- ix_subscribers_status_email (status, email): a list filtered by status walks only
  the readers in that status, in address order, instead of the whole list;
- ix_subscribers_name_lower now carries the address, id and name (PostgreSQL's
  INCLUDE): a name-prefix search reads its matches from the index without visiting
  the table (PostgreSQL needs the name itself in the index to skip the table; other
  backends keep the plain expression index).

Measured in docs/benchmarks.md ("Console at 1,000,000 readers").

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 21:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_subscribers_status_email", "subscribers", ["status", "email"])
    op.drop_index("ix_subscribers_name_lower", table_name="subscribers")
    op.create_index(
        "ix_subscribers_name_lower",
        "subscribers",
        [sa.text("lower(name)")],
        postgresql_include=["email", "id", "name"],
    )


def downgrade() -> None:
    op.drop_index("ix_subscribers_name_lower", table_name="subscribers")
    op.create_index("ix_subscribers_name_lower", "subscribers", [sa.text("lower(name)")])
    op.drop_index("ix_subscribers_status_email", table_name="subscribers")
