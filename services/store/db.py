"""Engines, sessions and schema revisions: one engine per URL per process, safe after fork.

SQLite (the embedded default) runs in WAL mode with a busy timeout and opens every
transaction with BEGIN IMMEDIATE, so a scheduler and CLI processes can share one file and
read-then-write sequences (claiming jobs) never interleave; keep sessions short there.
Postgres is checked, never migrated implicitly: production upgrades are an explicit step.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from services.core.paths import project_root
from services.store.errors import SchemaOutOfDate, StoreUnavailable

SQLITE_BUSY_TIMEOUT_MS = 30_000

_lock = threading.Lock()
_engines: dict[tuple[str, int], Engine] = {}
_sessionmakers: dict[tuple[str, int], sessionmaker[Session]] = {}
_schema_ok: set[tuple[str, int]] = set()


def database_url(url: str) -> str:
    """`url` normalized: plain `postgresql://` / `postgres://` URLs get the psycopg (v3) driver
    installed with us. Callers resolve which URL (services.core.endpoints) at the edge."""
    raw = url
    try:
        parsed = make_url(raw)
    except ArgumentError as exc:
        raise StoreUnavailable(f"database URL {raw!r} is not a valid SQLAlchemy URL; set LLC_DATABASE_URL to e.g. postgresql+psycopg://user@host/db or sqlite:////path/llc.db.") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def masked(url: str | URL) -> str:
    """The URL with its password replaced by *** (for messages and logs)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise StoreUnavailable(f"{name}={raw!r} is not an integer; set it to a whole number or unset it.") from None


def _unavailable_message(url: str, exc: BaseException) -> str:
    detail = " ".join(str(getattr(exc, "orig", exc) or exc).split())
    if len(detail) > 300:
        detail = detail[:300] + "..."
    hint = "check that the server is running and reachable and that LLC_DATABASE_URL has the right host, port, database, user and password"
    if make_url(url).get_backend_name() == "sqlite":
        hint = "check that the directory exists and is writable, or point LLC_DATABASE_URL elsewhere"
    return f"cannot connect to the database at {masked(url)} ({detail}); {hint}."


def _install_connect_guard(engine: Engine, url: str) -> None:
    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as exc:  # the driver's own error type varies; any failure here is "unavailable"
            raise StoreUnavailable(_unavailable_message(url, exc)) from exc


def _install_sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (pysqlite's own is deferred and late)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _make_engine(url: str, *, pool_size: int | None, max_overflow: int | None) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database or ""
        if db and db != ":memory:" and not db.startswith("file:"):
            try:
                Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailable(_unavailable_message(url, exc)) from exc
        engine = create_engine(url, pool_pre_ping=True, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _install_sqlite_pragmas(engine)
    else:
        connect_args: dict[str, Any] = {}
        if parsed.get_backend_name() == "postgresql":
            connect_args["connect_timeout"] = _env_int("LLC_DB_CONNECT_TIMEOUT", 10)
        engine = create_engine(
            url,
            pool_pre_ping=True,
            pool_size=pool_size if pool_size is not None else _env_int("LLC_DB_POOL_SIZE", 5),
            max_overflow=max_overflow if max_overflow is not None else _env_int("LLC_DB_MAX_OVERFLOW", 10),
            connect_args=connect_args,
        )
    _install_connect_guard(engine, url)
    return engine


def get_engine(url: str, *, pool_size: int | None = None, max_overflow: int | None = None) -> Engine:
    """The process's engine for `url`; a forked child gets its own.

    Pool sizes come from the kwargs, else LLC_DB_POOL_SIZE / LLC_DB_MAX_OVERFLOW; they only
    apply when the engine is first created in this process.
    """
    resolved = database_url(url)
    pid = os.getpid()
    with _lock:
        engine = _engines.get((resolved, pid))
        if engine is not None:
            return engine
        for key in [k for k in _engines if k[1] != pid]:
            # Inherited from a parent process: drop the pool without closing the parent's sockets.
            _engines.pop(key).dispose(close=False)
            _sessionmakers.pop(key, None)
        engine = _make_engine(resolved, pool_size=pool_size, max_overflow=max_overflow)
        _engines[(resolved, pid)] = engine
        return engine


def dispose_engines() -> None:
    """Close this process's pools (tests and graceful shutdown)."""
    with _lock:
        for key in list(_engines):
            _engines.pop(key).dispose()
        _sessionmakers.clear()
        _schema_ok.clear()


def _sessionmaker(url: str) -> sessionmaker[Session]:
    engine = get_engine(url)
    key = (database_url(url), os.getpid())
    with _lock:
        maker = _sessionmakers.get(key)
        if maker is None:
            maker = sessionmaker(bind=engine, expire_on_commit=False)
            _sessionmakers[key] = maker
        return maker


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error; objects stay readable after."""
    session = _sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# --- schema revisions (Alembic) ---------------------------------------------------------

def migrations_dir() -> Path:
    return project_root() / "migrations"


def alembic_config(url: str | None = None) -> Any:
    """An Alembic Config pointing at migrations/ and at `url` (passed via attributes)."""
    from alembic.config import Config

    ini = project_root() / "alembic.ini"
    cfg = Config(str(ini)) if ini.exists() else Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        cfg.attributes["url"] = database_url(url)
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise SchemaOutOfDate(f"migrations/ has {len(heads)} heads ({', '.join(heads)}); merge them with `alembic merge heads`.")
    return heads[0]


def current_revision(url: str) -> str | None:
    """The database's schema revision, None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with get_engine(url).connect() as conn:
        heads = MigrationContext.configure(conn).get_current_heads()
        conn.rollback()
    return heads[0] if heads else None


def check_schema(url: str) -> None:
    """Refuse to run against a database whose schema is not at this code's head revision."""
    from alembic.script import ScriptDirectory

    resolved = database_url(url)
    key = (resolved, os.getpid())
    if key in _schema_ok:
        return
    head = head_revision()
    current = current_revision(resolved)
    if current == head:
        _schema_ok.add(key)
        return
    if current is None:
        raise SchemaOutOfDate(f"the database at {masked(resolved)} has no llc schema yet (this code needs revision {head}); run `llc db upgrade` with LLC_DATABASE_URL pointing at it.")
    script = ScriptDirectory.from_config(alembic_config(resolved))
    if not _known(script, current):
        raise SchemaOutOfDate(f"the database at {masked(resolved)} is at schema revision {current}, which this code does not know (newer code migrated it?); install the matching llc-sweeps version, or run `llc db upgrade` from the newer code.")
    raise SchemaOutOfDate(f"the database at {masked(resolved)} is at schema revision {current} but this code needs {head}; run `llc db upgrade` with LLC_DATABASE_URL pointing at it.")


def _known(script: Any, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except Exception:  # alembic raises ResolutionError/CommandError for unknown ids
        return False


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database up to `revision` (Alembic semantics: 'head', an id, '+1')."""
    _run_alembic(url, "upgrade", revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate the database down to `revision` ('base' drops every llc table)."""
    _run_alembic(url, "downgrade", revision)


def _run_alembic(url: str, direction: str, revision: str) -> None:
    from alembic import command
    from alembic.util.exc import CommandError

    resolved = database_url(url)
    cfg = alembic_config(resolved)
    try:
        with get_engine(resolved).begin() as conn:
            cfg.attributes["connection"] = conn
            getattr(command, direction)(cfg, revision)
    except CommandError as exc:
        raise SchemaOutOfDate(f"cannot {direction} the database at {masked(resolved)} to {revision!r}: {exc}; run `llc db current` to see where it is.") from exc
    finally:
        _schema_ok.discard((resolved, os.getpid()))


def ensure_schema(url: str) -> None:
    """Embedded SQLite: upgrade to head automatically; any other database: only check."""
    resolved = database_url(url)
    if make_url(resolved).get_backend_name() == "sqlite":
        if (resolved, os.getpid()) in _schema_ok:
            return
        upgrade(resolved, "head")
    check_schema(resolved)
