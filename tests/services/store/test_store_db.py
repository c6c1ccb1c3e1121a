from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from sqlalchemy import text

from services.cli import UserError
from services.store import db
from services.store.errors import StoreUnavailable
from services.store.models import TrainingRun


def test_unreachable_database_names_the_url_and_masks_the_password() -> None:
    url = "postgresql+psycopg://llc:hunter2@127.0.0.1:1/llc"
    with pytest.raises(StoreUnavailable) as info:
        with db.session_scope(url) as session:
            session.execute(text("SELECT 1"))
    msg = str(info.value)
    assert "hunter2" not in msg and "llc:***@127.0.0.1:1/llc" in msg and "LLC_DATABASE_URL" in msg
    assert isinstance(info.value, UserError)


def test_wrong_credentials_are_reported_masked() -> None:
    url = "postgresql://nosuchrole:pa55word@127.0.0.1:5432/postgres"
    with pytest.raises(StoreUnavailable, match=r"nosuchrole:\*\*\*@127\.0\.0\.1:5432/postgres") as info:
        db.current_revision(url)
    assert "pa55word" not in str(info.value) and "nosuchrole" in str(info.value)


def test_sqlite_in_an_impossible_place_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(StoreUnavailable, match=r"afile/llc\.db"):
        db.get_engine(f"sqlite:///{blocker}/llc.db")


def test_bad_url_is_one_sentence() -> None:
    with pytest.raises(StoreUnavailable, match="not a valid SQLAlchemy URL"):
        db.get_engine("not a url")


def test_one_engine_per_url_and_plain_postgres_gets_psycopg(pg_url: str) -> None:
    assert db.get_engine(pg_url) is db.get_engine(pg_url)
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    assert db.get_engine(plain) is db.get_engine(pg_url)
    db.dispose_engines()


def test_pool_sizes_from_the_environment(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    db.dispose_engines()
    monkeypatch.setenv("LLC_DB_POOL_SIZE", "3")
    monkeypatch.setenv("LLC_DB_MAX_OVERFLOW", "1")
    engine = db.get_engine(pg_url)
    assert engine.pool.size() == 3 and engine.pool._max_overflow == 1  # type: ignore[attr-defined]
    db.dispose_engines()
    monkeypatch.setenv("LLC_DB_POOL_SIZE", "many")
    with pytest.raises(StoreUnavailable, match="LLC_DB_POOL_SIZE"):
        db.get_engine(pg_url)


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    with db.get_engine(f"sqlite:///{tmp_path / 'new' / 'llc.db'}").connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_MS
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_session_scope_commits_or_rolls_back(store_url: str) -> None:
    with db.session_scope(store_url) as s:
        s.add(TrainingRun(uri="s3://b/kept"))
    with pytest.raises(RuntimeError):
        with db.session_scope(store_url) as s:
            s.add(TrainingRun(uri="s3://b/dropped"))
            s.flush()
            raise RuntimeError("boom")
    with db.session_scope(store_url) as s:
        assert sorted(r.uri for r in s.query(TrainingRun)) == ["s3://b/kept"]


def _child(url: str, parent_engine_id: int, queue: multiprocessing.Queue) -> None:
    engine = db.get_engine(url)
    with db.session_scope(url) as s:
        n = s.execute(text("SELECT count(*) FROM training_runs")).scalar()
    queue.put((id(engine) != parent_engine_id, n))


def test_a_forked_child_gets_its_own_working_engine(store_url: str) -> None:
    with db.session_scope(store_url) as s:
        s.add(TrainingRun(uri="s3://b/run"))
    parent = db.get_engine(store_url)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(store_url, id(parent), queue))
    proc.start()
    result = queue.get(timeout=60)
    proc.join(timeout=60)
    assert result == (True, 1) and proc.exitcode == 0
    with db.session_scope(store_url) as s:  # the parent's pool still works after the child exits
        assert s.execute(text("SELECT count(*) FROM training_runs")).scalar() == 1
