"""Store outages are waited out, not crashed on.

While Postgres (or a locked SQLite file) does not answer, the scheduler keeps its Ray tasks
running, keeps the results it fetched, retries with backoff for an outage budget (minutes),
and spools the fetched results to a local file, so that even a scheduler killed during the
outage hands them over: the next one to start on this machine replays the spool.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import exc as sa_exc

from services.store.db import session_scope
from services.store.entities import NewResult
from services.store.errors import StoreUnavailable
from services.store.results import record_results

log = logging.getLogger(__name__)

#: errors meaning "the store is away or busy", not "this write is wrong"
STORE_ERRORS: tuple[type[BaseException], ...] = (sa_exc.OperationalError, sa_exc.InterfaceError, StoreUnavailable)
DEFAULT_OUTAGE_BUDGET_S = 600.0


class StoreOutage(RuntimeError):
    """The store stayed unreachable for longer than the outage budget."""


@dataclass
class OutageClock:
    """When the current outage began and how long to wait before the next try (doubling, capped)."""

    budget_s: float
    since: float | None = None
    delay_s: float = 0.5
    outages: int = 0
    last_error: str = ""
    waited_s: float = field(default=0.0)

    def failed(self, exc: BaseException) -> float:
        """Note a store error; the seconds to wait, or StoreOutage once the budget is spent."""
        now = time.monotonic()
        self.last_error = " ".join(str(exc).split())[:300]
        if self.since is None:
            self.since, self.delay_s = now, 0.5
            self.outages += 1
            log.warning("the store is unreachable (%s); Ray tasks keep running, fetched results are kept and "
                        "spooled, retrying for up to %.0f s", self.last_error, self.budget_s)
        elapsed = now - self.since
        if elapsed > self.budget_s:
            raise StoreOutage(f"the store stayed unreachable for {elapsed:.0f} s (outage budget {self.budget_s:.0f} s; "
                              f"last error: {self.last_error}); fetched results are spooled and replayed by the next "
                              "scheduler started on this machine, raise --outage-budget to wait longer")
        delay, self.delay_s = self.delay_s, min(10.0, self.delay_s * 2)
        return delay

    def recovered(self) -> None:
        if self.since is not None:
            self.waited_s += time.monotonic() - self.since
            log.warning("the store is back after %.1f s", time.monotonic() - self.since)
        self.since = None


class Spool:
    """Fetched-but-unstored results of one scheduler, in `<dir>/<owner>.json` (rewritten atomically)."""

    def __init__(self, directory: Path, owner: str) -> None:
        self.dir = directory
        self.path = directory / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', owner)}.json"

    def save(self, results: list[tuple[int, dict[str, Any]]]) -> None:
        if not results:
            self.clear()
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"job_id": j, "result": r} for j, r in results]))
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def replay_spools(directory: Path, *, database_url: str) -> tuple[int, int]:
    """Store the results every spool in `directory` holds (left by schedulers that died during
    an outage); a job finished meanwhile is refused, so nothing is stored twice.
    Returns (stored, refused)."""
    stored = refused = 0
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            items = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("skipping unreadable spool %s (%s)", path, exc)
            continue
        with session_scope(database_url) as s:
            out = record_results(s, owner=None, results=[
                NewResult(job_id=int(i["job_id"]), result=i["result"], diverged=bool(i["result"].get("diverged")))
                for i in items])
        stored += len(out.stored)
        refused += len(out.refused)
        path.unlink(missing_ok=True)
        log.warning("replayed spool %s: %d result(s) stored, %d already there", path.name, len(out.stored),
                    len(out.refused))
    return stored, refused
