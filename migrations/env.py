"""Alembic environment for the llc store.

The URL comes from, in order: a connection handed in by services.store.db
(config.attributes["connection"]), config.attributes["url"], `-x url=...`, then
LLC_DATABASE_URL / the embedded default via services.core.endpoints.
"""
from __future__ import annotations

from alembic import context

from services.core.endpoints import resolve_endpoints
from services.store.db import database_url, get_engine
from services.store.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata

if config.config_file_name and "connection" not in config.attributes and "url" not in config.attributes:
    # Run from the `alembic` command line: use alembic.ini's logging (programmatic callers keep theirs).
    from logging.config import fileConfig

    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    given = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    return database_url(given or resolve_endpoints().database_url)


def _render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    """Render our UTC TypeDecorator as the plain column type it stores."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
        compare_type=True,
        render_item=_render_item,
        **kwargs,
    )


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    with get_engine(_url()).connect() as connection:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
