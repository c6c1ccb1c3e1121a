"""Chaos benchmark: a sweep run through injected faults of every kind, against the same sweep
without faults. Not a test: run by hand, figures in benchmarks/README.md.

    python benchmarks/chaos.py [--jobs 200] [--faults-per-kind 4] [--seed 0] [--cpus 2] [--keep]

Real parts, each behind a TCP proxy that can cut it (tests/faults/proxy.py): a private Postgres
(initdb + pg_ctl), a moto S3 server, an `mlflow server`; a local Ray cluster started here, and a
long-lived `llc scheduler` subprocess (as a team runs it: no --until-idle, restarted after a
kill -9, stopped by SIGTERM once the work is done). Fault kinds: `store` (Postgres cut for a few
seconds), `s3`, `mlflow`, `worker` (SIGKILL of a Ray worker running a job: only this process's
descendants), `scheduler` (kill -9, restarted at once), `disk` (the cache directory replaced by
a file for a few seconds). The schedule is seeded and keyed to time: every fault fires within
the first 60 % of the fault-free makespan, each kind on its own thread, so all of them fire
however fast the sweep goes (kinds may overlap, as real faults do).

Order: an unmeasured warm-up sweep (Ray, the node cache, the OS page cache), then the
fault-free sweep, then the same sweep with faults; each on a fresh database with its own
scheduler. A run is over when every job has ended (makespan) and, for "complete", when the
store owes MLflow nothing more — paid by the running scheduler itself, no manual sync.

Prints faults injected per kind, jobs lost (not succeeded), duplicated results or child runs,
MLflow child runs missing when the jobs ended and once the service caught up, and the makespan
against the fault-free run. Goal: 0 lost, 0 duplicated, 0 missing, makespan ≤ 1.5× fault-free.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KINDS = ("store", "s3", "mlflow", "worker", "scheduler", "disk")
OUTAGE_S = {"store": 3.0, "s3": 3.0, "mlflow": 5.0, "disk": 3.0}
#: faults fire between these fractions of the fault-free makespan
WINDOW = (0.05, 0.6)
#: longest wait for the jobs to end, then for MLflow to catch up
RUN_LIMIT_S, CATCH_UP_LIMIT_S = 1800.0, 300.0


def _descendant_workers() -> list[int]:
    """PIDs of Ray workers running a job, started (through the raylet) by this process."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "cmdline").read_bytes().startswith(b"ray::execute_job"):
                continue
        except OSError:
            continue
        pid = int(entry.name)
        while pid > 1:
            try:
                pid = int((Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]))
            except (OSError, ValueError):
                break
            if pid == me:
                found.append(int(entry.name))
                break
    return found


class Rig:
    """The services, their proxies and the scheduler subprocess of one run."""

    def __init__(self, *, work: Path, cpus: int) -> None:
        import boto3
        import ray
        from moto.server import ThreadedMotoServer

        from tests.conftest import free_port
        from tests.mlflow_proc import MlflowProcess
        from tests.faults.private_pg import PrivatePostgres
        from tests.faults.proxy import FlakyProxy

        self.work = work
        moto_port = free_port()
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
        self.moto.start()
        moto_url = f"http://127.0.0.1:{moto_port}"
        os.environ.update(AWS_ACCESS_KEY_ID="chaos", AWS_SECRET_ACCESS_KEY="chaos", AWS_DEFAULT_REGION="us-east-1",
                          AWS_ENDPOINT_URL_S3=moto_url, AWS_MAX_ATTEMPTS="2", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                          MLFLOW_HTTP_REQUEST_TIMEOUT="5", RAY_USAGE_STATS_ENABLED="0")
        self.s3 = FlakyProxy("127.0.0.1", moto_port)
        boto3.client("s3", endpoint_url=moto_url).create_bucket(Bucket="chaos")
        self.pg = PrivatePostgres()
        self.pg.start()
        self.store = FlakyProxy("127.0.0.1", self.pg.port)
        self.mlflow = MlflowProcess(backend=f"sqlite:///{work / 'mlflow.db'}", artifacts="s3://chaos/mlartifacts",
                                    port=free_port(), log_dir=work, s3_endpoint=moto_url)
        self.mlflow.start()
        self.tracking = FlakyProxy("127.0.0.1", self.mlflow.port)
        self.cache = work / "cache"
        os.environ["AWS_ENDPOINT_URL_S3"] = self.s3.url          # workers and the driver see S3 through the proxy
        os.environ["LLC_CACHE_DIR"] = str(self.cache)
        ctx = ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False,
                       _temp_dir=tempfile.mkdtemp(prefix="r", dir=work))
        self.ray_address = str(ctx.address_info["gcs_address"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()           # the scheduler fault restarts it from its own thread

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.store.port}/{database}"

    def direct(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.pg.port}/{database}"

    def start_scheduler(self, database: str) -> None:
        """A long-lived `llc scheduler` (no --until-idle), as a team leaves it running."""
        env = dict(os.environ, RAY_ADDRESS=self.ray_address, LLC_DATABASE_URL=self.url(database),
                   MLFLOW_TRACKING_URI=self.tracking.url, LLC_STORAGE_URI="s3://chaos")
        log = open(self.work / "scheduler.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from services.cli import main; sys.exit(main())", "scheduler",
             "--lease-seconds", "6", "--outage-budget", "300", "--max-in-flight", "4", "storage=s3",
             "storage.uri=s3://chaos"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def stop_scheduler(self) -> int | None:
        """SIGTERM (what systemd sends) and its exit code; None if it had to be killed."""
        if self.proc is None:
            return None
        with self.lock:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def close(self) -> None:
        import ray

        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        ray.shutdown()
        self.mlflow.kill()
        self.pg.remove()
        self.moto.stop()


def _setup_sweep(rig: Rig, *, database: str, name: str, jobs: int) -> int:
    import psycopg

    from services.store.db import upgrade
    from services.sweeps.config import load_config
    from services.sweeps.submit import submit_sweep

    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{rig.pg.port}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    upgrade(rig.direct(database))
    grid = max(1, jobs // 20)
    eps = [round(1e-4 * (1 + i / grid), 8) for i in range(grid)]
    cfg = load_config(["sweep=small", "storage=s3", "storage.uri=s3://chaos", "sweep.run=chaos-run",
                       f"sweep.name={name}", "sweep.checkpoints.every=1", "sweep.dataset.max_sequences=32",
                       f"sampler.epsilon=[{','.join(map(str, eps))}]", "sampler.num_chains=[2]",
                       "sampler.num_draws=[40]", "sampler.num_burnin=[0]", "sampler.batch_size=[8]"])
    return submit_sweep(cfg, submitted_by="chaos", database_url=rig.direct(database)).sweep_id



def _progress(rig: Rig, database: str, sweep_id: int) -> tuple[int, int]:
    """(jobs still pending or running, sweeps still owed something by MLflow)."""
    from services.store import jobs as store_jobs
    from services.store import outbox
    from services.store.db import session_scope

    with session_scope(rig.direct(database)) as s:
        return store_jobs.remaining(s, sweep_id=sweep_id), len(outbox.owed_sweeps(s, sweep_id=sweep_id))


def _kill_a_worker(timeout: float = 20.0) -> bool:
    """SIGKILL one of our Ray workers running a job; waits a little for one to be running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        victims = _descendant_workers()
        if victims:
            os.kill(random.choice(victims), signal.SIGKILL)
            return True
        time.sleep(0.2)
    return False


def _inject(rig: Rig, kind: str, database: str) -> bool:
    """One fault; False when it could not be injected (no worker was running a job)."""
    if kind == "worker":
        return _kill_a_worker()
    if kind == "scheduler":
        with rig.lock:
            assert rig.proc is not None
            rig.proc.send_signal(signal.SIGKILL)
            rig.proc.wait()
            rig.start_scheduler(database)
        return True
    if kind == "disk":
        moved = rig.cache.with_name("cache-away")
        if rig.cache.exists():
            os.replace(rig.cache, moved)
        rig.cache.write_text("not a directory")
        time.sleep(OUTAGE_S["disk"])
        rig.cache.unlink()
        if moved.exists():
            os.replace(moved, rig.cache)
        return True
    proxy = {"store": rig.store, "s3": rig.s3, "mlflow": rig.tracking}[kind]
    proxy.down(cut=True)
    time.sleep(OUTAGE_S[kind])
    proxy.up()
    return True


class Injector:
    """Fires a seeded, time-keyed fault schedule: one thread per kind (a kind never overlaps
    itself; different kinds may). Faults due after `stop()` are skipped and counted."""

    def __init__(self, rig: Rig, database: str, faults: list[tuple[float, str]]) -> None:
        self.injected: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._threads = [threading.Thread(target=self._kind, args=(rig, database, sorted(t for t, k in faults if k == kind),
                                                                   kind), daemon=True)
                         for kind in KINDS]
        for t in self._threads:
            t.start()

    def _kind(self, rig: Rig, database: str, times: list[float], kind: str) -> None:
        for i, at in enumerate(times):
            if self._stop.wait(max(0.0, self._start + at - time.monotonic())):
                self.skipped[kind] += len(times) - i
                return
            if _inject(rig, kind, database):
                self.injected[kind] += 1
            else:
                self.skipped[kind] += 1

    def stop(self) -> None:
        """Skip what is not due yet; wait for a fault in progress to end (a proxy back up)."""
        self._stop.set()
        for t in self._threads:
            t.join()


def _run(rig: Rig, *, database: str, name: str, jobs: int, faults: list[tuple[float, str]]) -> dict[str, object]:
    from services.store import outbox
    from services.store.db import session_scope

    sweep_id = _setup_sweep(rig, database=database, name=name, jobs=jobs)
    start = time.perf_counter()
    rig.start_scheduler(database)
    injector = Injector(rig, database, faults)
    left, owed, at_end = 1, 1, None
    try:
        while left and time.perf_counter() - start < RUN_LIMIT_S:
            time.sleep(0.5)
            left, owed = _progress(rig, database, sweep_id)
        makespan = time.perf_counter() - start
        with session_scope(rig.direct(database)) as s:
            at_end = outbox.owed_count(s, sweep_ids=[sweep_id])
        while owed and time.perf_counter() - start < makespan + CATCH_UP_LIMIT_S:
            time.sleep(0.5)
            left, owed = _progress(rig, database, sweep_id)
        complete = time.perf_counter() - start   # results and every MLflow run in place, paid by the service
    finally:
        injector.stop()
        rc = rig.stop_scheduler()
    return dict(sweep_id=sweep_id, makespan=makespan, complete=complete, rc=rc, injected=injector.injected,
                skipped=injector.skipped, missing_at_end=at_end, owed_sweeps=owed,
                **_outcome(rig, database, sweep_id, name))


def _outcome(rig: Rig, database: str, sweep_id: int, name: str) -> dict[str, int]:
    from mlflow.tracking import MlflowClient
    from sqlalchemy import func, select

    from services.store import outbox
    from services.store.db import session_scope
    from services.store.models import Job, Result

    with session_scope(rig.direct(database)) as s:
        total = int(s.scalar(select(func.count()).select_from(Job)) or 0)
        lost = int(s.scalar(select(func.count()).select_from(Job).where(Job.status != "succeeded")) or 0)
        results = int(s.scalar(select(func.count()).select_from(Result)) or 0)
        distinct = int(s.scalar(select(func.count(func.distinct(Result.job_id)))) or 0)
        owed = outbox.owed_count(s, sweep_ids=[sweep_id])
    client = MlflowClient(rig.mlflow.uri)
    exp = client.get_experiment_by_name(name)
    keys: Counter[str] = Counter()
    if exp is not None:
        for run in client.search_runs([exp.experiment_id], f"tags.`llc.sweep_id` = '{sweep_id}' and tags.`llc.kind` = 'job'",
                                      max_results=5000):
            keys[run.data.tags["llc.job_key"]] += 1
    return dict(jobs=total, lost=lost, duplicated=(results - distinct) + sum(n - 1 for n in keys.values() if n > 1),
                mlflow_missing=total - len(keys), owed_after_sync=owed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--faults-per-kind", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (scheduler.log, Ray and MLflow logs)")
    args = ap.parse_args()

    import logging

    from workers.demo_training import DemoSettings, train_demo

    logging.getLogger("werkzeug").setLevel(logging.ERROR)      # moto's per-request lines

    work = Path(tempfile.mkdtemp(prefix="llc-chaos-", dir="/tmp"))
    os.environ["LLC_HOME"] = str(work / "home")
    rig = Rig(work=work, cpus=args.cpus)
    began = time.perf_counter()
    try:
        train_demo("s3://chaos/chaos-run", DemoSettings(steps=20, num_checkpoints=20, d_model=16, n_heads=2, n_layers=2,
                                                        vocab_size=32, seq_len=16, batch_size=8, dataset_sequences=48,
                                                        eval_sequences=8, warmup_steps=1), show_progress=False)
        _run(rig, database="chaos_warm", name="chaos-warm", jobs=20, faults=[])   # warm-up, not measured
        base = _run(rig, database="chaos_base", name="chaos-base", jobs=args.jobs, faults=[])
        rng = random.Random(args.seed)
        lo, hi = (f * float(base["makespan"]) for f in WINDOW)  # type: ignore[arg-type]
        faults = [(rng.uniform(lo, hi), k) for k in KINDS for _ in range(args.faults_per_kind)]
        chaos = _run(rig, database="chaos_faults", name="chaos-faults", jobs=args.jobs, faults=faults)
    finally:
        rig.close()
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average at the end; {os.cpu_count()} CPUs); "
          f"{time.perf_counter() - began:.0f} s in all")
    for label, r in (("fault-free", base), ("with faults", chaos)):
        print(f"{label:12s} jobs {r['jobs']}, makespan {r['makespan']:.1f} s (MLflow complete {r['complete']:.1f} s), "
              f"scheduler rc after SIGTERM {r['rc']}, lost {r['lost']}, duplicated {r['duplicated']}, "
              f"MLflow child runs missing when the jobs ended {r['missing_at_end']} / once caught up "
              f"{r['mlflow_missing']} (sweeps still owed {r['owed_sweeps']})")
    injected, skipped = chaos["injected"], chaos["skipped"]
    print("faults injected: " + ", ".join(f"{k} {injected[k]}" for k in KINDS)  # type: ignore[index]
          + f" (total {sum(injected.values())}; not fired: {sum(skipped.values())})")  # type: ignore[attr-defined]
    print(f"makespan ratio: {chaos['makespan'] / base['makespan']:.2f}× fault-free; until MLflow is complete too: "
          f"{chaos['complete'] / base['complete']:.2f}× (goal ≤ 1.5×)")  # type: ignore[operator]
    if args.keep:
        print(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
