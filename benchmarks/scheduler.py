"""Scheduler benchmark: 200 short jobs on a local Ray cluster.

Reports, for the scheduling run (Ray workers warmed up first, so worker start-up and the
torch import are not counted):
  makespan   wall time of Scheduler.run (claim of the first job → last result stored);
  ideal      Σ job wall time (measured inside each task) / CPUs: the makespan with zero gaps;
  gap        makespan − ideal: what scheduling cost the workers (idle CPUs: waits on the driver,
             Ray dispatch, the end of the run where fewer jobs than CPUs are left, CPU
             contention with the driver and Postgres on a small machine);
  driver     wall time the driver spent on its own work (claims, submissions, result writes,
             lease renewals) and the driver process's CPU time, per job and as a share of the makespan.
Goal: scheduler overhead ≤ 2% of the makespan. Also times re-submitting the finished sweep
(discovery + expansion + job-key lookups; goal < 2 s).

    python benchmarks/scheduler.py [--jobs 200] [--cpus 2] [--database-url URL] [--tracking]

Uses the embedded parts unless told otherwise: a throwaway Postgres database when
LLC_BENCH_PG (an admin URL) is reachable, else SQLite; a file:// object store; local Ray.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path


def _pg_database(admin: str) -> str | None:
    try:
        import psycopg

        name = f"llc_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    except Exception:
        return None


def _drop(admin: str, url: str) -> None:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def _cpu_s() -> float:
    """CPU time of this (driver) process, all threads: the scheduling loop and Ray's client threads."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _warm_up(ray, cpus: int) -> None:  # type: ignore[no-untyped-def]
    """Start one Ray worker per CPU and import the job code there, outside the timed run."""

    @ray.remote(num_cpus=1)
    def warm() -> int:
        import workers.job  # noqa: F401

        time.sleep(0.5)  # hold the CPU so each warm-up lands on its own worker
        return os.getpid()

    ray.get([warm.remote() for _ in range(cpus)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--database-url", default=None)
    p.add_argument("--draws", type=int, default=3, help="SGLD draws per chain (job length)")
    p.add_argument("--max-in-flight", type=int, default=None, help="default: 4 × CPUs")
    p.add_argument("--tracking", action="store_true", help="also log child runs to a local MLflow store")
    args = p.parse_args()

    root = Path(tempfile.mkdtemp(prefix="llc-bench-"))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ["LLC_HOME"] = str(root / "home")
    admin = os.environ.get("LLC_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    url = args.database_url or _pg_database(admin) or f"sqlite:///{root / 'llc.db'}"
    created_pg = args.database_url is None and url.startswith("postgresql")

    import ray
    from rich.console import Console

    from services.scheduler.loop import Scheduler, SchedulerOptions
    from services.store.results import sweep_results
    from services.store.db import session_scope, upgrade
    from services.sweeps.config import load_config
    from services.sweeps.submit import submit_sweep
    from workers.demo_training import DemoSettings, train_demo

    console = Console()
    storage = (root / "objects").as_uri()
    settings = DemoSettings(steps=8, num_checkpoints=4, d_model=16, n_heads=2, n_layers=2, vocab_size=32, seq_len=16,
                            batch_size=8, dataset_sequences=48, eval_sequences=8, warmup_steps=1)
    train_demo(f"{storage}/bench-run", settings, show_progress=False)
    seeds = max(1, args.jobs // (4 * 5))
    overrides = ["sweep=small", f"storage.uri={storage}", "sweep.name=bench", "sweep.run=bench-run",
                 "sweep.dataset.uri=bench-run/dataset", "sweep.dataset.max_sequences=16", "sweep.checkpoints.every=1",
                 "sampler.epsilon=[1e-4,2e-4,3e-4,5e-4,1e-3]", "sampler.num_chains=[1]", f"sampler.num_draws=[{args.draws}]",
                 "sampler.num_burnin=[0]", "sampler.batch_size=[8]", f"sweep.seeds=[{','.join(map(str, range(seeds)))}]"]
    upgrade(url)
    cfg = load_config(overrides)
    sub = submit_sweep(cfg, submitted_by="bench", database_url=url)
    console.print(f"database {url.split('@')[-1]}: sweep {sub.sweep_id} with {sub.new} jobs")

    ray.init(num_cpus=args.cpus, include_dashboard=False, _temp_dir=str(root / "ray"), log_to_driver=False)
    try:
        tracker = None
        if args.tracking:
            from services.tracking import Tracker

            tracker = Tracker(f"sqlite:///{root / 'mlflow.db'}")
        opts = SchedulerOptions(database_url=url, sweep_id=sub.sweep_id, until_idle=True, max_in_flight=args.max_in_flight or 4 * args.cpus,
                                lease_seconds=60, poll_seconds=0.2)
        _warm_up(ray, args.cpus)
        cpu0 = _cpu_s()
        t0 = time.perf_counter()
        report = Scheduler(opts, tracker=tracker, aggregate=False).run()
        makespan = time.perf_counter() - t0
        driver_cpu = _cpu_s() - cpu0
    finally:
        ray.shutdown()
    with session_scope(url) as s:
        rows = sweep_results(s, sweep_id=sub.sweep_id)
    walls = [r.wall_time_s for r in rows if r.wall_time_s is not None]
    ideal = sum(walls) / args.cpus
    t1 = time.perf_counter()
    again = submit_sweep(cfg, submitted_by="bench", database_url=url)
    resubmit = time.perf_counter() - t1
    console.print(f"jobs: {report.succeeded} succeeded, {report.diverged} diverged, {report.failed} failed "
                  f"(median job wall {statistics.median(walls):.3f}s)")
    n = max(1, report.submitted)
    gap = makespan - ideal
    console.print(f"makespan {makespan:.2f}s; ideal (Σ job wall / {args.cpus} CPUs) {ideal:.2f}s; "
                  f"gap {gap:.2f}s = {100 * gap / makespan:.1f}% of the makespan")
    console.print(f"driver: busy {report.busy_s:.2f}s ({1000 * report.busy_s / n:.1f} ms/job), "
                  f"process CPU {driver_cpu:.2f}s ({1000 * driver_cpu / n:.1f} ms/job)")
    console.print(f"scheduler overhead (driver busy time / makespan): {100 * report.busy_s / makespan:.2f}%  (goal ≤ 2%)")
    console.print(f"re-submitting the finished sweep: {resubmit:.2f}s (new={again.new}, "
                  f"already_done={again.already_done})  (goal < 2 s)")
    if created_pg:
        _drop(admin, url)


if __name__ == "__main__":
    main()
