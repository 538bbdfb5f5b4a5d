"""Addresses stored before normalisation took its present form, stored in it now

Rows written before addresses were folded (full-width letters), and before a punycode
domain was stored as its Unicode form, could not be found by the address a reader
types now, and could stand twice for one person. Each is rewritten in today's form;
where that form is already taken by another row, both are left as they are and the
pair is named in the log for an admin to settle.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 19:10:00
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    from newsletter.errors import InvalidInput
    from subscribers.services import normalize_email

    conn = op.get_bind()
    for table in ("subscribers", "suppressions"):
        rows = conn.execute(sa.text(f"SELECT id, email FROM {table}")).all()
        taken = {email for _, email in rows}
        # Plain lower-case ASCII without a punycode label is already in today's form.
        rows = [
            r
            for r in rows
            if not r.email.isascii() or "xn--" in r.email or r.email != r.email.lower()
        ]
        for row_id, email in rows:
            try:
                wanted = normalize_email(email)
            except InvalidInput:
                log.warning("%s %d: %r is not a valid address; left as it is", table, row_id, email)
                continue
            if wanted == email:
                continue
            if wanted in taken:
                log.warning(
                    "%s %d: %r is %r, which another row holds; left for an admin",
                    table, row_id, email, wanted,
                )  # fmt: skip
                continue
            conn.execute(
                sa.text(f"UPDATE {table} SET email = :wanted WHERE id = :id"),
                {"wanted": wanted, "id": row_id},
            )
            taken.discard(email)
            taken.add(wanted)


def downgrade() -> None:
    # The old spellings are not kept: every form they had is still accepted as input.
    pass
