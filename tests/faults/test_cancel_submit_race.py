"""Cancel vs submit on real Postgres, from concurrent threads: cancelling sweep A while sweep B
(asking for the same jobs) commits never cancels B's jobs, and B's status follows its jobs."""
from __future__ import annotations

import threading

from sqlalchemy import select

from services.store import sweeps as store_sweeps
from services.store.db import session_scope
from services.store.models import Job, Sweep, SweepJob
from services.sweeps.config import load_config
from services.sweeps.submit import plan_sweep, submit_plan
from tests.services.sweeps.tiny_runs import tiny_overrides

ROUNDS = 12


def test_cancel_and_submit_of_shared_jobs_take_turns(storage: str, db: str) -> None:
    plan = plan_sweep(load_config(tiny_overrides(storage)))
    errors: list[BaseException] = []
    for _ in range(ROUNDS):
        a = submit_plan(plan, name="a", submitted_by="tester", database_url=db)
        barrier = threading.Barrier(2)
        out: dict[str, int] = {}

        def cancel(sweep_id: int = a.sweep_id) -> None:
            try:
                barrier.wait()
                with session_scope(db) as s:
                    store_sweeps.cancel_sweep(s, sweep_id=sweep_id)
            except BaseException as exc:  # reported below, with the round
                errors.append(exc)

        def submit() -> None:
            try:
                barrier.wait()
                out["b"] = submit_plan(plan, name="b", submitted_by="tester", database_url=db).sweep_id
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=cancel), threading.Thread(target=submit)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        with session_scope(db) as s:
            b = s.get(Sweep, out["b"])
            assert b is not None
            statuses = s.scalars(select(Job.status).join(SweepJob, SweepJob.job_id == Job.id)
                                 .where(SweepJob.sweep_id == b.id)).all()
            assert len(statuses) == len(plan.jobs)
            assert set(statuses) == {"pending"}, f"sweep b has jobs {sorted(set(statuses))} after a's cancel"
            assert b.status == "submitted"
            assert s.get(Sweep, a.sweep_id).status == "cancelled"   # type: ignore[union-attr]
        # the next round starts from cancelled jobs: cancel b so a's resubmission requeues them
        with session_scope(db) as s:
            store_sweeps.cancel_sweep(s, sweep_id=out["b"])
