"""`llc export SWEEP --format csv|parquet [--out PATH]`: a sweep's results, one row per job.

The same table as `services.api.results(SWEEP)` (run, step, hyperparameters, seed, λ̂, std,
R-hat, ESS, diverged, wall time, MLflow run id, ...), for spreadsheets and other tools.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from services.core.errors import UserError

FORMATS = ("csv", "parquet")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("export", help="write a sweep's results (one row per job) as CSV or Parquet")
    p.add_argument("sweep", metavar="SWEEP", help="sweep id or name (a name means its newest sweep)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides naming the store, e.g. store=postgres")
    p.add_argument("--format", choices=FORMATS, default="csv", dest="fmt", help="file format (default csv)")
    p.add_argument("--out", type=Path, default=None, metavar="PATH",
                   help="output file (default: sweep-ID-results.csv|parquet in the current directory)")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from services import api

    frame = api.results(args.sweep, overrides=args.overrides)
    sweep_id = int(frame["sweep_id"].iloc[0]) if len(frame) else args.sweep
    out: Path = args.out or Path(f"sweep-{sweep_id}-results.{args.fmt}")
    if out.parent and not out.parent.is_dir():
        raise UserError(f"the directory of --out {out} does not exist; create it or pick another path.")
    if args.fmt == "csv":
        frame.to_csv(out, index=False)
    else:
        frame.to_parquet(out, index=False)
    print(f"{out}: {len(frame)} jobs of sweep {sweep_id}")
    return 0
