"""Engine, sessions and the declarative base shared by every package's models."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Engine,
    Integer,
    MetaData,
    SQLColumnExpression,
    String,
    and_,
    bindparam,
    cast,
    create_engine,
    event,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Session, mapped_column, sessionmaker
from sqlalchemy.types import NULLTYPE, TypeDecorator

from newsletter.config import get_settings

# Stable constraint names so Alembic migrations can address them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite has no time zone type and hands back naive values; comparing those with
    aware ones raises, so everything is stored as UTC and returned aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


intpk = Annotated[int, mapped_column(primary_key=True)]
utc_ts = Annotated[dt.datetime, mapped_column(UTCDateTime())]
created_ts = Annotated[dt.datetime, mapped_column(UTCDateTime(), default=utcnow)]
str255 = Annotated[str, mapped_column(String(255))]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL lets the web app read while a digest run writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    # With WAL, NORMAL still survives an application crash; only a power cut can
    # lose the last commits. It makes the per-message outcome commit ~10x cheaper.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


_engines: dict[str, Engine] = {}


def get_engine(url: str | None = None) -> Engine:
    """One engine (and pool) per database URL per process."""
    url = url or get_settings().database_url
    if url in _engines:
        return _engines[url]
    key = url
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    _engines[key] = engine
    return engine


def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A unit of work: commit on success, roll back on any error."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def database_unavailable(exc: BaseException) -> bool:
    """The database could not be reached or dropped the connection (a restart, a network
    fault, SQLite busy): worth waiting and trying again, unlike a bad statement."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def migrations_dir() -> Path:
    return Path(__file__).parent / "migrations"


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Bring the schema to `revision` with Alembic; the only way tables are created."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["engine"] = get_engine(url)
    command.upgrade(config, revision)


def dispose_engines() -> None:
    """Close pooled connections and forget engines (tests, forked workers)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


def missing_schema(exc: BaseException) -> bool:
    """Whether a database error means a table is missing: the schema was never made or
    is older than the code (SQLite says "no such table", PostgreSQL raises
    UndefinedTable, SQLSTATE 42P01)."""
    orig = getattr(exc, "orig", exc)
    return "no such table" in str(orig) or getattr(orig, "sqlstate", None) == "42P01"


def prefix_range(column: SQLColumnExpression[str], prefix: str) -> ColumnElement[bool]:
    """`column` starts with `prefix`, as a range an ordinary index can answer:
    prefix <= column < prefix with its last character incremented."""
    upper = prefix[:-1] + chr(min(ord(prefix[-1]) + 1, 0x10FFFF))
    return and_(column >= prefix, column < upper)


class _Among(ColumnElement[bool]):
    """`column IN (values)`, written per database by `among`."""

    inherit_cache = False
    # Untyped, like a comparison: a Boolean type would make SQLite add "= 1".
    type = NULLTYPE  # type: ignore[assignment]

    def __init__(self, column: SQLColumnExpression[Any], values: list[Any], item_type: Any) -> None:
        self.column = column
        self.values = values
        self.item_type = item_type


@compiles(_Among)
def _among_in(element: _Among, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.column.in_(element.values), **kw))


@compiles(_Among, "postgresql")
def _among_any(element: _Among, compiler: Any, **kw: Any) -> str:
    item = element.item_type
    values: ColumnElement[Any]
    if isinstance(item, Integer) or type(item) is String:
        values = pg_array(element.values, item)
    else:
        values = bindparam(None, element.values, type_=ARRAY(item))
    column = compiler.process(element.column, **kw)
    return f"{column} = ANY({compiler.process(values, **kw)})"


def pg_array(values: Iterable[Any], kind: Any = Integer) -> ColumnElement[Any]:
    """A PostgreSQL array parameter, sent as one array literal: psycopg would adapt a
    list element by element in Python, which at a million readers costs more than the
    rest of the planner's own work. Strings are quoted, so any value is safe."""
    integers = kind is Integer or isinstance(kind, Integer)
    text = array_literal(values, quoted=not integers)
    return cast(bindparam(None, text, type_=String), ARRAY(kind))


def array_literal(values: Iterable[Any], quoted: bool = True) -> str:
    """`values` as one PostgreSQL array literal, for a parameter cast to an array type
    in the statement: None is NULL, anything else its `str`, quoted unless `quoted` is
    False (integers, which need none)."""
    if not quoted:
        return "{" + ",".join(map(str, map(int, values))) + "}"
    return (
        "{"
        + ",".join(
            "NULL"
            if value is None
            else '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
            for value in values
        )
        + "}"
    )


def among(column: SQLColumnExpression[Any], values: Iterable[Any]) -> ColumnElement[bool]:
    """`column IN values` for a list of hundreds: on PostgreSQL one array parameter
    (`= ANY(...)`), because psycopg parses a statement of 500 placeholders anew for
    several milliseconds each time it is sent; elsewhere a plain IN."""
    item_type = column.type  # type: ignore[attr-defined]
    return _Among(column, list(values), item_type)
