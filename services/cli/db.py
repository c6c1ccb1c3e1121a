"""`llc db upgrade [REV]`, `llc db downgrade REV`, `llc db current`: the store's schema revisions.

Production databases (Postgres) are only ever migrated by this explicit step; services
check the revision at start and refuse to run on an old schema.
"""
from __future__ import annotations

import argparse
from typing import Any

from services.core.endpoints import resolve_endpoints
from services.store import db


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("db", help="manage the results store's schema (Alembic revisions)",
                                   description="Migrate the database at LLC_DATABASE_URL (or --database-url).")
    sub = parser.add_subparsers(dest="db_command", required=True, metavar="ACTION")

    up = sub.add_parser("upgrade", help="migrate up to REV (default: head)")
    up.add_argument("revision", nargs="?", default="head", metavar="REV")
    up.set_defaults(func=_upgrade)

    down = sub.add_parser("downgrade", help="migrate down to REV ('base' removes every llc table)")
    down.add_argument("revision", metavar="REV")
    down.set_defaults(func=_downgrade)

    cur = sub.add_parser("current", help="show the database's revision and this code's head")
    cur.set_defaults(func=_current)

    for p in (up, down, cur):
        p.add_argument("--database-url", default=None, metavar="URL",
                       help="database to act on (default: LLC_DATABASE_URL, else the embedded SQLite file)")


def _url(args: argparse.Namespace) -> str:
    return db.database_url(args.database_url or resolve_endpoints().database_url)


def _upgrade(args: argparse.Namespace) -> int:
    url = _url(args)
    db.upgrade(url, args.revision)
    print(f"{db.masked(url)} is at revision {db.current_revision(url) or 'base'}")
    return 0


def _downgrade(args: argparse.Namespace) -> int:
    url = _url(args)
    db.downgrade(url, args.revision)
    print(f"{db.masked(url)} is at revision {db.current_revision(url) or 'base'}")
    return 0


def _current(args: argparse.Namespace) -> int:
    url = _url(args)
    current = db.current_revision(url)
    head = db.head_revision()
    state = "up to date" if current == head else "out of date: run `llc db upgrade`"
    print(f"{db.masked(url)}: revision {current or 'base (empty)'}, code head {head} ({state})")
    return 0 if current == head else 1
