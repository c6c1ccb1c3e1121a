"""Store benchmark at sweep scale: 100,000 jobs (2,000 checkpoints × 50 grid points) on Postgres.

Prints four figures (goals in brackets) and where the time of a submission goes:
  first submit   `llc submit`'s work for a new sweep: one listing of the run prefix, selection,
                 grid expansion (specs + job keys), one transaction of bulk inserts   [≤ 10 s]
  re-submit      the same sweep again, unchanged: every key found, nothing inserted  [≤ 3 s]
  status         `llc status` (every sweep with its counts by state), in-process    [≤ 0.5 s]
  claim + write  driver time per job, as the scheduler does it: claim a batch, store its
                 results and claim the next batch in one transaction, 100,000 pending [≤ 1 ms]

    python benchmarks/store.py [--checkpoints 2000] [--grid 50] [--claim-batch 32] [--claims 3000]

Needs Postgres: LLC_BENCH_PG (an admin URL, default postgresql://postgres@127.0.0.1:5432/postgres);
a throwaway database is created and dropped. The checkpoints are tiny files in a file:// store
(listing and fingerprints only: no weights are read).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
import uuid
from pathlib import Path

EPSILONS = ("1e-5", "2e-5", "5e-5", "1e-4", "2e-4", "5e-4", "1e-3", "2e-3", "5e-3", "1e-2")
GAMMAS = ("1.0", "10.0", "100.0", "1000.0", "10000.0")


def _pg_database(admin: str) -> str:
    import psycopg

    name = f"llc_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"


def _drop(admin: str, url: str) -> None:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def _write_run(root: Path, checkpoints: int) -> None:
    """`checkpoints` Hugging Face-shaped directories (config.json + model.safetensors), a few bytes each."""
    for i in range(checkpoints):
        d = root / "bench-run" / f"step-{i * 10}"
        d.mkdir(parents=True)
        (d / "config.json").write_text('{"model_type": "bench"}')
        (d / "model.safetensors").write_bytes(i.to_bytes(4, "little"))
    import numpy as np

    from workers.datasets import write_token_dataset

    # Submit-time validation reads the dataset's header: 64 sequences of 16 tokens.
    write_token_dataset((root / "bench-run" / "dataset").as_uri(), np.zeros((64, 16), dtype=np.int64), vocab_size=100)


def _timed(fn):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=int, default=2000)
    ap.add_argument("--grid", type=int, choices=(10, 50), default=50, help="grid points: 10 ε × 1 or 5 γ")
    ap.add_argument("--claim-batch", type=int, default=32)
    ap.add_argument("--claims", type=int, default=3000, help="jobs claimed and written for the per-job figure")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="llc-bench-store-"))
    os.environ["LLC_HOME"] = str(tmp / "home")
    admin = os.environ.get("LLC_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    url = _pg_database(admin)
    os.environ["LLC_DATABASE_URL"] = url
    try:
        _run(args, tmp, url)
    finally:
        from services.store.db import dispose_engines

        dispose_engines()
        _drop(admin, url)


def _run(args: argparse.Namespace, tmp: Path, url: str) -> None:
    from services.cli import main as llc_main
    from services.store import jobs as store_jobs
    from services.store.db import session_scope, upgrade
    from services.store.entities import NewResult
    from services.store.results import record_results
    from services.sweeps.config import load_config
    from services.sweeps.submit import plan_sweep, submit_plan

    upgrade(url)
    _write_run(tmp / "objects", args.checkpoints)
    # ESTIMATOR_VERSION comes from workers.llc, which imports torch: once per process, reported apart.
    _, t_import = _timed(lambda: __import__("workers.llc"))
    gammas = GAMMAS if args.grid == 50 else GAMMAS[:1]
    overrides = [f"storage.uri={(tmp / 'objects').as_uri()}", "sweep=small", "sweep.name=bench", "sweep.run=bench-run",
                 "sweep.checkpoints.every=1", "sweep.dataset.uri=bench-run/dataset",
                 f"sampler.epsilon=[{','.join(EPSILONS)}]", f"sampler.gamma=[{','.join(gammas)}]"]
    cfg = load_config(overrides)

    def submit() -> tuple[object, float, float]:
        plan, t_plan = _timed(lambda: plan_sweep(cfg))
        outcome, t_store = _timed(lambda: submit_plan(plan, name=cfg.sweep.name, submitted_by="bench",
                                                       database_url=url))
        return outcome, t_plan, t_store

    (first, plan1, store1), t_first = _timed(submit)
    (again, plan2, store2), t_again = _timed(submit)
    jobs = first.jobs  # type: ignore[attr-defined]
    assert first.new == jobs and again.new == 0 and again.already_queued == jobs, (first, again)  # type: ignore[attr-defined]

    with contextlib.redirect_stdout(io.StringIO()):
        llc_main(["status"])  # warm: imports, engine, schema check
        _, t_status = _timed(lambda: llc_main(["status"]))
        _, t_detail = _timed(lambda: llc_main(["status", str(first.sweep_id)]))  # type: ignore[attr-defined]

    result = {"llc_mean": 10.0, "llc_std": 1.0, "llc_per_chain": [9.0, 11.0], "init_loss": 2.0, "loss_wstar": 1.9,
              "baseline_loss": 2.0, "nbeta": 100.0, "n": 1024, "num_chains": 2, "num_draws": 100,
              "diverged": False, "diagnostics": {"r_hat": 1.01, "ess": 150.0}, "wall_time_s": 1.0,
              "device": "cpu", "host": "bench", "estimator_version": "x", "extra": {}}
    owner = "bench-scheduler"
    with session_scope(url) as s:
        batch = store_jobs.claim_jobs(s, owner=owner, limit=args.claim_batch, lease_seconds=600)
    done = 0
    t0 = time.perf_counter()
    while done < args.claims:
        with session_scope(url) as s:  # as Scheduler._write: store a batch and claim the next in one transaction
            out = record_results(s, owner=owner, results=[NewResult(job_id=j.id, result=result, diverged=False)
                                                          for j in batch])
            batch = store_jobs.claim_jobs(s, owner=owner, limit=args.claim_batch, lease_seconds=600)
        done += len(out.stored)
    per_job_ms = (time.perf_counter() - t0) / done * 1e3
    with contextlib.redirect_stdout(io.StringIO()):  # the detail again, now that results exist
        _, t_detail_results = _timed(lambda: llc_main(["status", str(first.sweep_id)]))  # type: ignore[attr-defined]

    load = os.getloadavg()
    print(f"store benchmark: {jobs:,} jobs = {args.checkpoints:,} checkpoints × {len(EPSILONS) * len(gammas)} grid "
          f"points, Postgres; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    print(f"  (torch import for ESTIMATOR_VERSION, once per process, not counted below: {t_import:.2f} s)")
    print(f"  first submit   {t_first:6.2f} s   (plan {plan1:.2f} s: listing, selection, specs + keys; store {store1:.2f} s)  goal ≤ 10 s")
    print(f"  re-submit      {t_again:6.2f} s   (plan {plan2:.2f} s; store {store2:.2f} s)  goal ≤ 3 s")
    print(f"  llc status     {t_status:6.2f} s   (all sweeps)  goal ≤ 0.5 s")
    print(f"  llc status {first.sweep_id}   {t_detail:6.2f} s   (one sweep's detail before any result; "  # type: ignore[attr-defined]
          f"{t_detail_results:.2f} s with {done:,} results)")
    print(f"  claim + write  {per_job_ms:6.2f} ms/job (batches of {args.claim_batch}, {done:,} jobs, "
          f"{jobs - done:,} still pending)  goal ≤ 1 ms")


if __name__ == "__main__":
    main()
