"""Alembic environment: runs against the engine the caller hands in, or the configured URL."""

from __future__ import annotations

from alembic import context

import subscribers.models  # noqa: F401  (registers the subscriber tables)
from newsletter import models  # noqa: F401
from newsletter.db import Base, get_engine

config = context.config
engine = config.attributes.get("engine") or get_engine()

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    context.run_migrations()
