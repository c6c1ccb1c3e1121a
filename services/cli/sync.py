"""`llc sync-mlflow [SWEEP]`: pay what MLflow is still owed, by hand.

The scheduler's follow-up thread does this on its own; this command is for when no scheduler
runs with tracking (after an MLflow outage, for sweeps whose jobs were all done already) or
to check that nothing is owed. Idempotent: runs are found by tag before one is created.
"""
from __future__ import annotations

import argparse
import os
import socket
from typing import Any

from services.core.endpoints import resolve_endpoints


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sync-mlflow", help="log the MLflow runs the store says are still owed (child runs, "
                                                  "aggregates, parent runs' final state)")
    p.add_argument("sweep", nargs="?", default=None, metavar="SWEEP", help="only this sweep (an id)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. store=postgres tracking=server")
    p.add_argument("--no-aggregate", action="store_true", help="log child runs and parent states, skip aggregation")
    p.set_defaults(func=_sync)


def _sync(args: argparse.Namespace) -> int:
    from services.cli.sweeps import split_sweep_arg
    from services.scheduler.mlflow_sync import sync_mlflow
    from services.store import outbox
    from services.store.db import check_schema, session_scope
    from services.sweeps.config import load_config
    from services.tracking import Tracker

    sweep_id, overrides = split_sweep_arg(args)
    ends = resolve_endpoints(load_config(overrides))
    check_schema(ends.database_url)
    owner = f"sync-mlflow@{socket.gethostname()}:{os.getpid()}"
    report = sync_mlflow(database_url=ends.database_url, tracker=Tracker(ends.tracking_uri), owner=owner,
                         sweep_id=sweep_id, aggregate=not args.no_aggregate, storage_uri=ends.storage_uri)
    ended = ", ".join(f"{sid} {status}" for sid, status in sorted(report.ended.items())) or "none"
    print(f"sync-mlflow: {report.children} child run(s) logged, sweeps ended in MLflow: {ended}, "
          f"aggregated: {report.aggregated or 'none'}")
    with session_scope(ends.database_url) as s:
        left = outbox.owed_sweeps(s, sweep_id=sweep_id)
    if report.busy:
        print(f"sync-mlflow: sweep(s) {report.busy} are being synced by another process; they are left to it")
    if left and set(left) - set(report.busy):
        print(f"sync-mlflow: still owed (active sweeps end later): {left}")
    return 0
