from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from services.cli import main as llc_main
from services.store import db
from services.store.errors import SchemaOutOfDate
from services.store.models import Base

TABLES = {"training_runs", "checkpoints", "sweeps", "jobs", "sweep_jobs", "results", "stages", "schedulers"}


def _tables(url: str) -> set[str]:
    with db.get_engine(url).connect() as conn:
        return set(inspect(conn).get_table_names()) - {"alembic_version"}


def test_upgrade_downgrade_and_upgrade_again(empty_url: str) -> None:
    assert db.current_revision(empty_url) is None and _tables(empty_url) == set()
    db.upgrade(empty_url)
    assert db.current_revision(empty_url) == db.head_revision()
    assert _tables(empty_url) == TABLES
    db.downgrade(empty_url, "base")
    assert db.current_revision(empty_url) is None and _tables(empty_url) == set()
    db.upgrade(empty_url, "head")
    assert _tables(empty_url) == TABLES


def test_models_match_the_migrations(store_url: str) -> None:
    with db.get_engine(store_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_old_schema_is_refused_with_the_upgrade_command(empty_url: str) -> None:
    with pytest.raises(SchemaOutOfDate, match=r"run `llc db upgrade`"):
        db.check_schema(empty_url)
    db.upgrade(empty_url)
    db.check_schema(empty_url)
    db.downgrade(empty_url, "base")
    with pytest.raises(SchemaOutOfDate, match=r"no llc schema yet.*run `llc db upgrade`"):
        db.check_schema(empty_url)


def test_unknown_revision_in_database_is_refused(store_url: str) -> None:
    with db.get_engine(store_url).begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff'")
    with pytest.raises(SchemaOutOfDate, match="ffff.*does not know"):
        db.check_schema(store_url)


def test_ensure_schema_upgrades_sqlite_but_only_checks_postgres(empty_url: str) -> None:
    if empty_url.startswith("sqlite"):
        db.ensure_schema(empty_url)
        assert db.current_revision(empty_url) == db.head_revision()
    else:
        with pytest.raises(SchemaOutOfDate, match=r"llc db upgrade"):
            db.ensure_schema(empty_url)
        assert db.current_revision(empty_url) is None


def test_llc_db_commands(empty_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert llc_main(["db", "current", "--database-url", empty_url]) == 1
    assert "out of date: run `llc db upgrade`" in capsys.readouterr().out
    assert llc_main(["db", "upgrade", "--database-url", empty_url]) == 0
    assert llc_main(["db", "current", "--database-url", empty_url]) == 0
    assert "up to date" in capsys.readouterr().out
    assert llc_main(["db", "downgrade", "base", "--database-url", empty_url]) == 0
    assert _tables(empty_url) == set()
    assert llc_main(["db", "upgrade", "nosuchrev", "--database-url", empty_url]) == 2
    assert "llc db current" in capsys.readouterr().err
