"""Chaos benchmark: a sweep run through injected faults of every kind, against the same sweep
without faults. Not a test: run by hand, figures in benchmarks/README.md.

    python benchmarks/chaos.py [--jobs 200] [--faults-per-kind 4] [--seed 0] [--cpus 2]

Real parts, each behind a TCP proxy that can cut it (tests/faults/proxy.py): a private Postgres
(initdb + pg_ctl), a moto S3 server, an `mlflow server`; a local Ray cluster started here, and
`llc scheduler --until-idle` as a subprocess. Fault kinds, on a seeded schedule keyed to
progress (after k results are stored): `store` (Postgres cut for a few seconds), `s3`, `mlflow`,
`worker` (SIGKILL of a Ray worker running a job: only this process's descendants), `scheduler`
(kill -9, restarted at once), `disk` (the cache directory replaced by a file for a few seconds).

Prints faults injected per kind, jobs lost (not succeeded), duplicated results, MLflow child
runs missing at the scheduler's exit and after one `sync-mlflow` pass, and the makespan against
the fault-free run. Goal: 0 lost, 0 duplicated, 0 missing, makespan ≤ 1.5× fault-free.
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
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KINDS = ("store", "s3", "mlflow", "worker", "scheduler", "disk")
OUTAGE_S = {"store": 3.0, "s3": 3.0, "mlflow": 5.0, "disk": 3.0}


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
        from tests.faults.mlflow_proc import MlflowProcess
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

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.store.port}/{database}"

    def direct(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.pg.port}/{database}"

    def start_scheduler(self, database: str, sweep_id: int) -> None:
        env = dict(os.environ, RAY_ADDRESS=self.ray_address, LLC_DATABASE_URL=self.url(database),
                   MLFLOW_TRACKING_URI=self.tracking.url, LLC_STORAGE_URI="s3://chaos")
        log = open(self.work / "scheduler.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from services.cli import main; sys.exit(main())", "scheduler",
             "--until-idle", "--sweep", str(sweep_id), "--lease-seconds", "6", "--outage-budget", "300",
             "--max-in-flight", "4", "storage=s3", "storage.uri=s3://chaos"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

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


def _stored(rig: Rig, database: str) -> int:
    from sqlalchemy import func, select

    from services.store.db import session_scope
    from services.store.models import Result

    with session_scope(rig.direct(database)) as s:
        return int(s.scalar(select(func.count()).select_from(Result)) or 0)


def _inject(rig: Rig, kind: str, database: str, sweep_id: int) -> bool:
    """One fault; False when it could not be injected now (e.g. no worker was running a job)."""
    if kind == "worker":
        victims = _descendant_workers()
        if not victims:
            return False
        os.kill(random.choice(victims), signal.SIGKILL)
        return True
    if kind == "scheduler":
        assert rig.proc is not None
        rig.proc.send_signal(signal.SIGKILL)
        rig.proc.wait()
        rig.start_scheduler(database, sweep_id)
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


def _run(rig: Rig, *, database: str, name: str, jobs: int, faults: list[tuple[int, str]]) -> dict[str, object]:
    from services.scheduler.mlflow_sync import sync_mlflow
    from services.store import outbox
    from services.store.db import session_scope
    from services.tracking import Tracker

    sweep_id = _setup_sweep(rig, database=database, name=name, jobs=jobs)
    start = time.perf_counter()
    rig.start_scheduler(database, sweep_id)
    injected: Counter[str] = Counter()
    pending = list(faults)
    while rig.proc is not None and rig.proc.poll() is None:
        done = _stored(rig, database)
        while pending and done >= pending[0][0]:
            _, kind = pending.pop(0)
            if _inject(rig, kind, database, sweep_id):
                injected[kind] += 1
        time.sleep(0.2)
    makespan = time.perf_counter() - start
    rc = rig.proc.returncode if rig.proc else None
    with session_scope(rig.direct(database)) as s:
        missing_at_exit = outbox.owed_count(s, sweep_ids=[sweep_id])
    deadline = time.monotonic() + 120      # a killed scheduler's sync lease (30 s) may still hold the sweep
    while sync_mlflow(database_url=rig.direct(database), tracker=Tracker(rig.mlflow.uri), owner="chaos",
                      sweep_id=sweep_id).busy and time.monotonic() < deadline:
        time.sleep(2)
    complete = time.perf_counter() - start   # results and every MLflow child run in place
    return dict(sweep_id=sweep_id, makespan=makespan, complete=complete, rc=rc, injected=injected,
                missing_at_exit=missing_at_exit,
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
    args = ap.parse_args()

    import logging

    from workers.demo_training import DemoSettings, train_demo

    logging.getLogger("werkzeug").setLevel(logging.ERROR)      # moto's per-request lines

    work = Path(tempfile.mkdtemp(prefix="llc-chaos-", dir="/tmp"))
    os.environ["LLC_HOME"] = str(work / "home")
    rig = Rig(work=work, cpus=args.cpus)
    try:
        train_demo("s3://chaos/chaos-run", DemoSettings(steps=20, num_checkpoints=20, d_model=16, n_heads=2, n_layers=2,
                                                        vocab_size=32, seq_len=16, batch_size=8, dataset_sequences=48,
                                                        eval_sequences=8, warmup_steps=1), show_progress=False)
        rng = random.Random(args.seed)
        kinds = [k for k in KINDS for _ in range(args.faults_per_kind)]
        rng.shuffle(kinds)
        at = sorted(rng.randint(int(0.05 * args.jobs), int(0.85 * args.jobs)) for _ in kinds)
        faults = list(zip(at, kinds, strict=True))
        base = _run(rig, database="chaos_base", name="chaos-base", jobs=args.jobs, faults=[])
        shutil.rmtree(rig.cache, ignore_errors=True)                 # the faulty run starts as cold as the baseline
        chaos = _run(rig, database="chaos_faults", name="chaos-faults", jobs=args.jobs, faults=faults)
    finally:
        rig.close()
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average at the end; {os.cpu_count()} CPUs)")
    for label, r in (("fault-free", base), ("with faults", chaos)):
        print(f"{label:12s} jobs {r['jobs']}, makespan {r['makespan']:.1f} s (with MLflow complete {r['complete']:.1f} s), "
              f"scheduler rc {r['rc']}, lost {r['lost']}, "
              f"duplicated {r['duplicated']}, MLflow missing at exit {r['missing_at_exit']} / after sync "
              f"{r['mlflow_missing']}")
    print("faults injected: " + ", ".join(f"{k} {chaos['injected'][k]}" for k in KINDS)  # type: ignore[index]
          + f" (total {sum(chaos['injected'].values())})")  # type: ignore[attr-defined]
    print(f"makespan ratio: {chaos['makespan'] / base['makespan']:.2f}× fault-free; until MLflow is complete too: "
          f"{chaos['complete'] / base['complete']:.2f}× (goal ≤ 1.5×)")  # type: ignore[operator]
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
