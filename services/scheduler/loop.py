"""The scheduling loop: claim → submit Ray tasks → renew leases → write results as they arrive.

Postgres (or SQLite) is the source of truth: every transition is a conditional store update
guarded by this scheduler's lease, so several schedulers can share one database and a
killed one's jobs return to pending once its leases expire.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import exceptions as rex

from services.core.errors import ConfigError
from services.core.paths import llc_home
from services.scheduler import feasibility, placement
from services.scheduler.carry import CalibrationCarry
from services.scheduler.faults import InfraRetries, is_infrastructure
from services.scheduler.outage import DEFAULT_OUTAGE_BUDGET_S, STORE_ERRORS, OutageClock, Spool, replay_spools
from services.scheduler.cluster import has_gpus
from services.scheduler.followup import FinishedJob, FollowUp
from services.scheduler.adaptive import refine_adaptive
from services.scheduler.task import remote_execute_job
from services.store import jobs as store_jobs
from services.store import schedulers as store_schedulers
from services.store import sweeps as store_sweeps
from services.store.db import ensure_schema, session_scope
from services.store.entities import JobInfo, NewResult, RecordedResults
from services.store.errors import JobStateError
from services.store.results import record_results
from services.core.status import JobStatus
from services.sweeps.expand import spec_from_dict

log = logging.getLogger(__name__)

#: longest a result fetched from Ray waits for the next batched write
WRITE_DELAY_S = 0.5

#: how often in-flight tasks are checked against the live nodes' resources (a lost GPU node)
FEASIBILITY_EVERY_S = 3.0

#: Ray errors meaning the worker or node was lost (not the job's own fault): retried.
SYSTEM_ERRORS: tuple[type[BaseException], ...] = tuple(
    e for e in (getattr(rex, n, None) for n in ("WorkerCrashedError", "NodeDiedError", "ObjectLostError",
                                                 "OwnerDiedError", "RaySystemError", "ActorDiedError",
                                                 "OutOfMemoryError", "LocalRayletDiedError"))
    if isinstance(e, type))


@dataclass(frozen=True, kw_only=True)
class SchedulerOptions:
    database_url: str
    max_in_flight: int = 8
    lease_seconds: float = 120.0
    poll_seconds: float = 0.5
    sweep_id: int | None = None        # only this sweep's jobs
    until_idle: bool = False           # exit once nothing is pending or running (in scope)
    once: bool = False                 # one claim, wait for those jobs, exit
    max_attempts: int = 3              # claims per job (input faults, expired leases of dead schedulers)
    # Infrastructure faults (worker/node lost, OOM, S3 away, disk full) are retried here with
    # exponential backoff, without a new claim: this budget, not max_attempts, bounds them.
    # Ray's own retries of a lost worker count against it, so the two add up to one bound.
    infra_retries: int = 5
    infra_backoff_s: float = 1.0       # first delay; doubles per retry, capped at 60 s
    ray_max_retries: int = 0           # Ray's own retries of a task whose worker died (part of infra_retries)
    owner: str | None = None
    storage_uri: str | None = None     # where aggregation puts plots too (besides $LLC_HOME and MLflow)
    outage_budget_s: float = DEFAULT_OUTAGE_BUDGET_S   # how long an unreachable store is waited out
    spool_dir: Path | None = None      # fetched results kept here during a store outage ($LLC_HOME/spool)

    def __post_init__(self) -> None:
        checks = (("--lease-seconds", self.lease_seconds, self.lease_seconds > 0, "a positive number of seconds"),
                  ("--max-in-flight", self.max_in_flight, self.max_in_flight >= 1, "at least 1"),
                  ("--max-attempts", self.max_attempts, self.max_attempts >= 1, "at least 1"),
                  ("--poll-seconds", self.poll_seconds, self.poll_seconds > 0, "a positive number of seconds"),
                  ("--infra-retries", self.infra_retries, self.infra_retries >= 0, "0 or more"),
                  ("ray_max_retries", self.ray_max_retries,
                   0 <= self.ray_max_retries <= self.infra_retries, "between 0 and --infra-retries"),
                  ("infra_backoff_s", self.infra_backoff_s, self.infra_backoff_s >= 0, "0 or more seconds"),
                  ("--outage-budget", self.outage_budget_s, self.outage_budget_s >= 0, "0 or more seconds"))
        for flag, value, ok, want in checks:
            if not ok or value != value:   # NaN compares unequal to itself
                raise ConfigError(f"{flag}={value} is invalid: it must be {want}.")


@dataclass(frozen=True)
class JobEvent:
    job_id: int
    sweep_ids: tuple[int, ...]
    status: str                        # succeeded | diverged | failed | retry | cancelled | lost
    step: int
    llc_mean: float | None = None
    error: str | None = None


@dataclass
class SchedulerReport:
    owner: str
    submitted: int = 0
    succeeded: int = 0
    diverged: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    lost_lease: int = 0
    released_orphans: int = 0
    infra_retried: int = 0             # infrastructure faults retried here (no attempt charged)
    taken_over: int = 0                # our copies stopped because another scheduler holds the job now
    handed_back: int = 0               # running jobs returned to pending at shutdown
    store_outages: int = 0             # times the store went away and was waited out
    replayed: int = 0                  # results of a dead scheduler's spool stored at start-up
    stopped_by: str | None = None      # the signal that stopped this scheduler, if any
    finished_sweeps: list[int] = field(default_factory=list)
    aggregated_sweeps: list[int] = field(default_factory=list)
    tracking_errors: int = 0
    busy_s: float = 0.0                # time the driver spent on its own work (not waiting on Ray)
    wall_s: float = 0.0

    def summary(self) -> str:
        """One paragraph for the operator (printed at exit, also after SIGTERM)."""
        how = f"stopped by {self.stopped_by}" if self.stopped_by else "done"
        return (f"scheduler {self.owner} {how}: submitted {self.submitted}, succeeded {self.succeeded}, "
                f"diverged {self.diverged}, failed {self.failed}, retried {self.retried} "
                f"(+{self.infra_retried} infrastructure), cancelled {self.cancelled}, taken over {self.taken_over}, "
                f"handed back {self.handed_back}, orphans returned {self.released_orphans}, "
                f"finished sweeps {self.finished_sweeps}")

    def exit_code(self) -> int:
        """0: nothing failed (a signal-stopped scheduler too); 1: some job failed for good (docs/faults.md)."""
        return 1 if self.failed else 0


@dataclass
class _Flight:
    job_id: int
    key: str
    step: int
    seed: int
    hyperparameters: dict[str, Any]
    sweep_ids: tuple[int, ...]
    mlflow_run_id: str | None
    demand: dict[str, float] = field(default_factory=dict)   # node resources its Ray task asks for
    spec: Any = None                                          # the JobSpec, kept to resubmit after an infra fault
    options: dict[str, Any] = field(default_factory=dict)     # its Ray task options
    runs: int = 0                                             # Ray tasks started for this claim
    attempt: str | None = None                                # the current run's key (placement.note_node)
    failed_on: list[str | None] = field(default_factory=list)  # the node of each run lost to an infra fault


def default_owner() -> str:
    return f"scheduler@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Scheduler:
    """One Ray driver. `run()` blocks until stopped, idle (`until_idle`) or done (`once`)."""

    def __init__(self, options: SchedulerOptions, *, tracker: Any | None = None, aggregate: bool = True,
                 on_event: Callable[[JobEvent], None] | None = None, task: Any = None) -> None:
        """`task`: the Ray remote function a job runs as (default: services.scheduler.task.remote_execute_job;
        tests wrap it, e.g. to have a worker die on its first attempt)."""
        self.options = options
        self._task = task if task is not None else remote_execute_job
        self.owner = options.owner or default_owner()
        self.report = SchedulerReport(owner=self.owner)
        self._url = options.database_url
        self._followup = FollowUp(database_url=self._url, tracker=tracker, aggregate=aggregate, owner=self.owner,
                                  sweep_id=options.sweep_id, storage_uri=options.storage_uri)
        self._on_event = on_event
        self._inflight: dict[ray.ObjectRef, _Flight] = {}
        self._resources: dict[int, dict[str, Any]] = {}
        self._gpus: bool | None = None
        self._stop = threading.Event()
        self._claimed_once = False
        self._infra = InfraRetries(budget=options.infra_retries, base_s=options.infra_backoff_s)
        self._outage = OutageClock(budget_s=options.outage_budget_s)
        self._next_beat = 0.0
        self._beat_detail: str | None = None
        self._spool = Spool(options.spool_dir or llc_home() / "spool", self.owner)
        self._spooled = False
        self._next_release = 0.0
        self._unwritten: list[tuple[_Flight, dict[str, Any]]] = []   # results fetched from Ray, not yet stored
        self._unwritten_since = 0.0
        self._renew_every = self._check_every = 1.0
        self._next_renew = self._next_check = self._next_feasible = 0.0
        self._notes: dict[int, str] = {}     # job id → why no node can run it (written to the job's error)
        self._carry = CalibrationCarry()     # epsilon/gamma=auto: calibrated picks handed to later jobs
        #: claim once this many slots are free: half the window, so half of it stays queued in Ray
        self._claim_batch = max(1, options.max_in_flight // 2)

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ main loop
    def run(self) -> SchedulerReport:
        opts = self.options
        ensure_schema(self._url)
        self._replay_spools()
        self._followup.start()
        start = time.perf_counter()
        busy = 0.0
        with session_scope(self._url) as s:
            self.report.released_orphans = store_jobs.release_expired_leases(s, max_attempts=opts.max_attempts)
        if self.report.released_orphans:
            log.info("returned %d orphaned job(s) of a dead scheduler to pending", self.report.released_orphans)
        self._renew_every = renew_every = max(0.2, opts.lease_seconds / 3)
        self._check_every = min(1.0, renew_every)
        self._next_renew = self._next_check = time.monotonic() + min(renew_every, self._check_every)
        self._next_release = time.monotonic() + opts.lease_seconds / 4
        self._claimed_once = False
        try:
            while not self._stop.is_set():
                try:
                    t0 = time.perf_counter()
                    # Cancellation checks and lease renewals ride along with result writes when results
                    # arrive often; on their own only when none came for a while.
                    now = time.monotonic()
                    if now >= self._next_check:
                        self._check_cancelled()
                    if now >= self._next_renew:
                        self._renew()
                    if now >= self._next_feasible:
                        self._check_feasible()
                    if now >= self._next_release:
                        self._release_expired()
                    if now >= self._next_beat:
                        self._heartbeat()
                    for flight in self._infra.due(now):
                        self._resubmit(flight)
                    if self._may_claim():
                        free = opts.max_in_flight - len(self._inflight)
                        # Claim in batches so each store round trip serves several jobs, early enough that the
                        # tasks still queued in Ray keep its CPUs busy while the driver claims and writes.
                        if free > 0 and (free >= self._claim_batch or not self._inflight):
                            if self._claim_and_submit(free) or opts.once:
                                self._claimed_once = True
                    busy += time.perf_counter() - t0
                    if self._inflight:
                        refs = list(self._inflight)
                        ready, _ = ray.wait(refs, num_returns=1, timeout=opts.poll_seconds, fetch_local=False)
                        if ready and len(refs) > 1:
                            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
                        t1 = time.perf_counter()
                        self._handle(ready)
                        busy += time.perf_counter() - t1
                        continue
                    if opts.once and self._claimed_once and not self._infra.waiting:
                        break
                    if opts.until_idle:
                        t1 = time.perf_counter()
                        with session_scope(self._url) as s:
                            left = store_jobs.remaining(s, sweep_id=opts.sweep_id)
                            if left:
                                # Orphans of a dead scheduler: take them back as soon as their leases expire.
                                store_jobs.release_expired_leases(s, max_attempts=opts.max_attempts)
                        busy += time.perf_counter() - t1
                        if left == 0:
                            break
                    self._stop.wait(opts.poll_seconds)
                except STORE_ERRORS as exc:   # the store is away: wait it out, keep Ray tasks and results
                    self._store_failed(exc)
                    continue
                if self._outage.since is not None:
                    self._beat_detail = (f"rode out a store outage of {time.monotonic() - self._outage.since:.0f} s "
                                         f"({self._outage.last_error[:120]})")
                    self._next_beat = 0.0
                self._outage.recovered()
        finally:
            self._shutdown()
            self.report.busy_s = busy
            self.report.wall_s = time.perf_counter() - start
        return self.report

    # ------------------------------------------------------------------ store outages
    def _replay_spools(self) -> None:
        stored, refused = replay_spools(self._spool.dir, database_url=self._url)
        if stored or refused:
            self.report.replayed = stored
            log.warning("stored %d result(s) spooled by a scheduler that died during a store outage "
                        "(%d were already stored)", stored, refused)

    def _heartbeat(self, *, state: str = "running") -> None:
        """Tell `llc status` this scheduler is alive, how much it runs, and any outage it rode out."""
        self._next_beat = time.monotonic() + max(1.0, self.options.lease_seconds / 3)
        with session_scope(self._url) as s:
            store_schedulers.heartbeat(s, owner=self.owner, state=state, in_flight=len(self._inflight),
                                       detail=self._beat_detail)

    def _store_failed(self, exc: BaseException) -> None:
        """Keep what was fetched (in memory and spooled), wait with backoff; StoreOutage past the budget."""
        self._spool.save([(f.job_id, r) for f, r in self._unwritten])
        self._spooled = bool(self._unwritten)
        delay = self._outage.failed(exc)      # raises StoreOutage once the budget is spent
        self.report.store_outages = self._outage.outages
        # Renew first when the store is back, before anything may release our (expired) leases.
        self._next_renew = 0.0
        self._stop.wait(delay)

    # ------------------------------------------------------------------ steps
    def _may_claim(self) -> bool:
        return not (self.options.once and self._claimed_once) and not self._stop.is_set()

    def _claim_and_submit(self, limit: int) -> int:
        with session_scope(self._url) as s:
            claimed = self._claim(s, limit)
        return self._submit(*claimed)

    def _claim(self, s: Any, limit: int) -> tuple[list[JobInfo], dict[int, list[int]]]:
        """Claim up to `limit` jobs in the caller's transaction; submit them once it commits."""
        opts = self.options
        jobs = store_jobs.claim_jobs(s, owner=self.owner, limit=limit, lease_seconds=opts.lease_seconds,
                                     sweep_id=opts.sweep_id)
        if not jobs:
            return [], {}
        sweep_map = store_sweeps.sweeps_of_jobs(s, [j.id for j in jobs])
        for sweep_ids in sweep_map.values():
            for sid in sweep_ids:
                if sid not in self._resources:
                    self._resources[sid] = store_sweeps.sweep_resources(s, sweep_id=sid)
        return jobs, sweep_map

    def _submit(self, jobs: list[JobInfo], sweep_map: dict[int, list[int]]) -> int:
        for job in jobs:
            sweep_ids = tuple(sweep_map.get(job.id, ()))
            try:
                spec = spec_from_dict(job.spec)
            except (TypeError, KeyError, ValueError) as exc:
                self._fail(job.id, sweep_ids, job.step,
                           f"job {job.id} has a stored spec this worker version cannot read ({exc}); resubmit the sweep.",
                           retry=False)
                continue
            spec = self._carry.apply(spec, sweep_ids, job.hyperparameters)
            options = self._task_options(sweep_ids)
            self._start(_Flight(job_id=job.id, key=job.key, step=job.step, seed=job.seed,
                                hyperparameters=job.hyperparameters, sweep_ids=sweep_ids,
                                mlflow_run_id=job.mlflow_run_id, demand=feasibility.demand_of(options),
                                spec=spec, options=options), options)
            self.report.submitted += 1
        return len(jobs)

    def _start(self, flight: _Flight, options: dict[str, Any]) -> None:
        """One Ray task for the flight; it notes its node under a fresh attempt key."""
        flight.runs += 1
        flight.attempt = f"{self.owner}/{flight.job_id}/{flight.runs}"
        self._inflight[self._task.options(**options).remote(flight.spec, flight.attempt)] = flight

    def _resubmit(self, flight: _Flight) -> None:
        """Run a job again after an infrastructure fault: same claim and lease, a fresh Ray task,
        preferably on an alive node it has not failed on (docs/faults.md)."""
        failed = [n for n in flight.failed_on if n]
        target = placement.elsewhere(failed, flight.demand, ray.nodes()) if failed else None
        self._start(flight, placement.steer(flight.options, target))

    def _release_expired(self) -> None:
        """Every live scheduler returns dead schedulers' jobs, so orphans come back within a lease."""
        self._next_release = time.monotonic() + self.options.lease_seconds / 4
        with session_scope(self._url) as s:
            n = store_jobs.release_expired_leases(s, max_attempts=self.options.max_attempts)
        if n:
            self.report.released_orphans += n
            log.info("returned %d job(s) whose lease expired (a dead or stalled scheduler) to pending", n)

    def _task_options(self, sweep_ids: tuple[int, ...]) -> dict[str, Any]:
        res = self._resources.get(sweep_ids[0], {}) if sweep_ids else {}
        if self._gpus is None:
            self._gpus = has_gpus()
        opts: dict[str, Any] = dict(num_cpus=float(res.get("num_cpus") or 1), max_retries=self.options.ray_max_retries,
                                    retry_exceptions=False)
        if self._gpus and float(res.get("num_gpus") or 0) > 0:
            opts["num_gpus"] = float(res["num_gpus"])
        if res.get("memory_gb"):
            opts["memory"] = int(float(res["memory_gb"]) * 2**30)
        return opts

    def _check_feasible(self) -> None:
        """Note on each in-flight job that no live node can run (Ray would queue it silently forever)."""
        self._next_feasible = time.monotonic() + FEASIBILITY_EVERY_S
        if not self._inflight:
            return
        nodes = ray.nodes()
        flights = list(self._inflight.values())
        notes: dict[int, str] = {}
        for demand in feasibility.unmet_demands([f.demand for f in flights], nodes):
            ids = [f.job_id for f in flights if f.demand == demand]
            note = feasibility.unschedulable_note(feasibility.short_of(demand, nodes), len(ids))
            notes.update(dict.fromkeys(ids, note))
            if any(self._notes.get(i) != note for i in ids):
                log.warning("%s", note)
        changed = {i: n for i, n in notes.items() if self._notes.get(i) != n}
        cleared = [i for i in self._notes if i not in notes and i in {f.job_id for f in flights}]
        if changed or cleared:
            with session_scope(self._url) as s:
                store_jobs.note_jobs(s, owner=self.owner, notes={**changed, **dict.fromkeys(cleared)})
        self._notes = notes

    def _handle(self, refs: list[ray.ObjectRef]) -> None:
        """Fetch a batch of finished tasks: errors recorded one by one, results buffered for `_write`."""
        done: list[tuple[_Flight, dict[str, Any]]] = []
        flights = [self._inflight.pop(ref) for ref in refs]
        try:
            values = ray.get(refs)  # one round trip for the batch; any error: one by one below
        except Exception:
            values = None
        failures: list[tuple[_Flight, BaseException]] = []
        for i, (ref, flight) in enumerate(zip(refs, flights, strict=True)):
            try:
                result = values[i] if values is not None else ray.get(ref)
                # Where each run of this claim went: the lost ones, then the one that returned.
                result["attempt_nodes"] = [*flight.failed_on, result.get("ray_node_id")]
                done.append((flight, result))
            except (rex.TaskCancelledError, *SYSTEM_ERRORS, rex.RayTaskError) as exc:
                failures.append((flight, exc))
        # Results are kept before any store write, so a store outage below loses none of them.
        if done:
            if not self._unwritten:
                self._unwritten_since = time.monotonic()
            self._unwritten.extend(done)
        for flight, exc in failures:
            self._task_failed(flight, exc)
        # Results wait (at most WRITE_DELAY_S) until the window needs a refill, so one transaction
        # writes a batch of them and claims the next batch: Ray runs the queued tasks meanwhile.
        free = self.options.max_in_flight - len(self._inflight)
        if self._unwritten and (free >= self._claim_batch or not self._inflight or self._stop.is_set()
                                or time.monotonic() - self._unwritten_since >= WRITE_DELAY_S):
            self._write()

    def _write(self) -> None:
        """Store the fetched results; the same transaction refills the window and does the
        lease/cancellation checks that are due. The buffer is emptied only once that commits."""
        done = self._unwritten
        if not done:
            return
        with session_scope(self._url) as s:
            outcome = record_results(s, owner=self.owner, results=[
                NewResult(job_id=f.job_id, result=r, diverged=bool(r.get("diverged"))) for f, r in done])
            refill = self._claim(s, self._free()) if self._may_refill() else ([], {})
            current = self._due_checks(s)
        self._unwritten = []
        if self._spooled:
            self._spool.clear()
            self._spooled = False
        if current:
            self._check_cancelled(current)
        if refill[0]:
            self._claimed_once = True
            self._submit(*refill)
        self._report_written(done, outcome)
        self._sweeps_finished(list(outcome.finished_sweeps))

    def _free(self) -> int:
        return self.options.max_in_flight - len(self._inflight)

    def _may_refill(self) -> bool:
        return self._may_claim() and self._free() >= self._claim_batch

    def _due_checks(self, s: Any) -> dict[int, tuple[str, str | None]] | None:
        """Lease renewal and the statuses for the cancellation check, when due, in `s`'s transaction."""
        now = time.monotonic()
        current = self._statuses(s) if now >= self._next_check else None
        if now >= self._next_renew:
            self._renew(s)
        return current

    def _report_written(self, done: list[tuple[_Flight, dict[str, Any]]], outcome: RecordedResults) -> None:
        """Counts, events and MLflow follow-ups for a stored batch; refused results are dropped with their reason."""
        for flight, result in done:
            reason = outcome.refused.get(flight.job_id)
            if reason is not None and flight.job_id not in outcome.stored:
                self.report.lost_lease += 1
                log.warning("dropping the result of job %s: %s", flight.job_id, reason)
                self._emit(flight, "lost", error=reason)
                continue
            self._carry.observe(flight.sweep_ids, flight.hyperparameters, result)
            status = JobStatus.DIVERGED if result.get("diverged") else JobStatus.SUCCEEDED
            if status == JobStatus.DIVERGED:
                self.report.diverged += 1
            else:
                self.report.succeeded += 1
            self._emit(flight, str(status), llc_mean=result.get("llc_mean"))
            if flight.sweep_ids:
                self._followup.job_done(FinishedJob(job_id=flight.job_id, sweep_id=flight.sweep_ids[0], key=flight.key,
                                                    step=flight.step, hyperparameters=flight.hyperparameters,
                                                    seed=flight.seed, result=result, mlflow_run_id=flight.mlflow_run_id))

    def _task_failed(self, flight: _Flight, exc: BaseException) -> None:
        """One failed Ray task, by fault class (docs/faults.md)."""
        node = placement.node_of(flight.attempt, exc)
        if isinstance(exc, rex.TaskCancelledError):
            # Our own cancels drop the flight first: this one was cancelled from outside
            # (dashboard, `ray` CLI). Hand the job back now rather than when its lease expires,
            # without charging an attempt: the job did nothing wrong.
            self._hand_back(flight)
        elif isinstance(exc, SYSTEM_ERRORS):
            flight.failed_on.append(node)
            self._infra_fault(flight, f"the Ray worker running job {flight.job_id} was lost ({type(exc).__name__})",
                              cost=1 + self.options.ray_max_retries)
        else:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            if is_infrastructure(cause):
                flight.failed_on.append(node)
                self._infra_fault(flight, _one_line(cause), cost=1)
            else:
                self._fail(flight.job_id, flight.sweep_ids, flight.step, _one_line(cause), retry=False)

    def _hand_back(self, flight: _Flight) -> None:
        """A job whose Ray task was cancelled from outside goes back to pending at once, uncharged."""
        with session_scope(self._url) as s:
            back = store_jobs.release_owner_jobs(s, owner=self.owner, job_ids=[flight.job_id])
        if back:
            self.report.retried += 1
            log.warning("the Ray task of job %s was cancelled outside the scheduler; handed the job back to pending",
                        flight.job_id)
            self._emit(flight, "retry", error="its Ray task was cancelled outside the scheduler; requeued")

    def _infra_fault(self, flight: _Flight, reason: str, *, cost: int) -> None:
        """Retry after a backoff within the infrastructure budget (no new claim, no attempt charged);
        past the budget the job fails with the reason."""
        delay = self._infra.schedule(flight.job_id, flight, cost=cost)
        nodes = ", ".join(n or "?" for n in flight.failed_on)
        if delay is None:
            self._fail(flight.job_id, flight.sweep_ids, flight.step,
                       f"{reason}; gave up after {self.options.infra_retries} infrastructure retries "
                       f"(on Ray nodes {nodes})", retry=False)
            return
        self.report.infra_retried += 1
        log.warning("job %s: %s (Ray node %s); retrying in %.1f s, on another node if there is one", flight.job_id,
                    reason, flight.failed_on[-1] or "?", delay)
        self._emit(flight, "retry", error=reason)

    def _fail(self, job_id: int, sweep_ids: tuple[int, ...], step: int, error: str, *, retry: bool) -> None:
        try:
            with session_scope(self._url) as s:
                outcome = store_jobs.record_failure(s, job_id=job_id, owner=self.owner, error=error, retry=retry,
                                                    max_attempts=self.options.max_attempts)
        except JobStateError as exc:
            self.report.lost_lease += 1
            log.warning("dropping the failure of job %s: %s", job_id, exc)
            return
        retried = outcome.status == JobStatus.PENDING
        if retried:
            self.report.retried += 1
        else:
            self.report.failed += 1
        log.warning("job %s %s: %s", job_id, "will be retried" if retried else "failed", error)
        if self._on_event is not None:
            self._on_event(JobEvent(job_id=job_id, sweep_ids=sweep_ids, step=step, error=error,
                                    status="retry" if retried else "failed"))
        self._sweeps_finished(list(outcome.finished_sweeps))

    def _sweeps_finished(self, sweep_ids: list[int]) -> None:
        for sid in sweep_ids:
            if sid not in self.report.finished_sweeps:
                if refine_adaptive(sid, database_url=self._url):
                    continue  # more checkpoints to estimate: the sweep is running again
                self.report.finished_sweeps.append(sid)
                self._followup.sweep_done(sid)

    def _renew(self, s: Any | None = None) -> None:
        """One UPDATE extends the leases of every in-flight job (in `s`'s transaction when given)."""
        self._next_renew = time.monotonic() + self._renew_every
        if not self._inflight and not self._infra.waiting:
            return
        ids = [f.job_id for f in self._inflight.values()] + self._infra.job_ids()
        if s is None:
            with session_scope(self._url) as s:
                held = store_jobs.renew_leases(s, owner=self.owner, job_ids=ids, lease_seconds=self.options.lease_seconds)
        else:
            held = store_jobs.renew_leases(s, owner=self.owner, job_ids=ids, lease_seconds=self.options.lease_seconds)
        if held < len(ids):
            log.warning("%d of %d leases were lost (expired or cancelled)", len(ids) - held, len(ids))

    def _statuses(self, s: Any | None = None) -> dict[int, tuple[str, str | None]]:
        self._next_check = time.monotonic() + self._check_every
        ids = [f.job_id for f in self._inflight.values()] + self._infra.job_ids()
        if not ids:
            return {}
        if s is None:
            with session_scope(self._url) as s:
                return store_jobs.job_holders(s, ids)
        return store_jobs.job_holders(s, ids)

    def _check_cancelled(self, current: dict[int, tuple[str, str | None]] | None = None) -> None:
        """Stop our copies of jobs that `llc cancel` cancelled or that another scheduler took over
        (our lease expired and the job was released and claimed again): one copy runs, not two."""
        if current is None:
            current = self._statuses()
        if not current:
            return
        gone = {job_id for job_id, (status, owner) in current.items()
                if status == JobStatus.CANCELLED or owner != self.owner}
        if not gone:
            return
        stopped = [(ref, f) for ref, f in self._inflight.items() if f.job_id in gone]
        for ref, flight in stopped:
            ray.cancel(ref, force=True)
            del self._inflight[ref]
            if flight.attempt:
                placement.forget(flight.attempt)      # a killed run leaves its node note behind
        for job_id in gone:
            if (flight := self._infra.drop(job_id)) is not None:
                stopped.append((None, flight))
        for _, flight in stopped:
            if current[flight.job_id][0] == JobStatus.CANCELLED:
                self.report.cancelled += 1
                self._emit(flight, "cancelled")
            else:
                self.report.taken_over += 1
                log.warning("job %s is no longer ours (%s, owner %s); stopped our copy", flight.job_id,
                            *current[flight.job_id])
                self._emit(flight, "lost", error="taken over by another scheduler")

    def _emit(self, flight: _Flight, status: str, *, llc_mean: float | None = None, error: str | None = None) -> None:
        if self._on_event is not None:
            self._on_event(JobEvent(job_id=flight.job_id, sweep_ids=flight.sweep_ids, status=status, step=flight.step,
                                    llc_mean=llc_mean, error=error))

    def _shutdown(self) -> None:
        """Graceful exit: store fetched results, cancel our tasks, hand our jobs back to pending,
        finish MLflow/aggregation."""
        try:
            self._write()
        except Exception as exc:
            self._spool.save([(f.job_id, r) for f, r in self._unwritten])
            log.warning("could not store %d fetched result(s) (%s); spooled to %s for the next scheduler started here",
                        len(self._unwritten), exc, self._spool.path)
        for ref in list(self._inflight):
            ray.cancel(ref, force=True)
        self._inflight.clear()
        self._infra.clear()
        try:
            with session_scope(self._url) as s:
                self.report.handed_back = store_jobs.release_owner_jobs(s, owner=self.owner)
                store_schedulers.remove(s, owner=self.owner)
        except Exception as exc:  # the store may be the thing that failed
            log.warning("could not hand back this scheduler's jobs (%s); their leases will expire", exc)
        self._followup.drain()
        self.report.tracking_errors = self._followup.tracking_errors
        self.report.aggregated_sweeps = list(self._followup.aggregated)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    from workers.job import JobInputError

    if isinstance(exc, JobInputError):
        return text
    return f"{type(exc).__name__}: {text}"[:2000]
