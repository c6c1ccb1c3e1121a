"""`llc train-demo`: train the attention-only demo model and write its checkpoints.

The default run prefix is `<LLC_STORAGE_URI or file://$LLC_HOME/objects>/demo-run`; the
URI is resolved here and handed to workers.demo_training (workers never import services).
"""
from __future__ import annotations

import argparse
from typing import Any

from services.core.endpoints import resolve_endpoints
from services.core.errors import UserError


def register(subparsers: Any) -> None:
    # Defaults live in workers.demo_training.DemoSettings; importing it here would load torch for every command.
    p = subparsers.add_parser("train-demo", help="train the demo model (induction heads) and write its checkpoints",
                              description="Train a 2-layer attention-only transformer on a synthetic induction "
                                          "task and write ~40 log-spaced checkpoints, metadata and the λ̂ dataset.")
    p.add_argument("--out", default=None, metavar="URI",
                   help="run prefix (default: <LLC_STORAGE_URI or file://$LLC_HOME/objects>/demo-run)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 3000)")
    p.add_argument("--checkpoints", type=int, default=None, help="checkpoints, log-spaced over training (default 40)")
    p.add_argument("--seed", type=int, default=None, help="seed of init, data and dataset (default 0)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=None, metavar="WD",
                   help="AdamW (decoupled) weight decay, on every parameter incl. LayerNorm (default 0)")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="steps of linear learning-rate warm-up (default 50)")
    p.add_argument("--skip-bigram", type=float, default=None, metavar="P",
                   help="share of tokens set by the token two back, a task a previous-token head solves alone (default 0)")
    p.add_argument("--skip-bigram-period", type=int, default=None, metavar="K",
                   help="lay skip-bigrams only at positions that are multiples of K, structure tied to absolute "
                        "position (default 1: anywhere)")
    p.add_argument("--dataset-sequences", type=int, default=None,
                   help="sequences in the λ̂ dataset written to <run>/dataset (default 1024)")
    p.add_argument("--force", action="store_true",
                   help="retrain even if the run exists, replacing whatever is under the run prefix")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train_demo)


def default_run_uri() -> str:
    return resolve_endpoints().under_storage("demo-run")


def _train_demo(args: argparse.Namespace) -> int:
    from workers.demo_training import DemoRunError, DemoSettings, train_demo
    from workers.objectstore import ObjectStoreError

    for name in ("steps", "checkpoints", "dataset_sequences"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if args.lr is not None and not args.lr > 0:
        raise UserError(f"--lr must be positive, got {args.lr}.")
    if args.weight_decay is not None and not 0 <= args.weight_decay < float("inf"):
        raise UserError(f"--weight-decay must be a finite number >= 0, got {args.weight_decay}; try 0.3.")
    if args.warmup_steps is not None and args.warmup_steps < 0:
        raise UserError(f"--warmup-steps must be >= 0, got {args.warmup_steps}.")
    if args.skip_bigram is not None and not 0 <= args.skip_bigram < 1:
        raise UserError(f"--skip-bigram is a probability in [0, 1), got {args.skip_bigram}; try 0.2.")
    if args.skip_bigram_period is not None and args.skip_bigram_period < 1:
        raise UserError(f"--skip-bigram-period must be at least 1, got {args.skip_bigram_period}.")
    chosen = {"steps": args.steps, "num_checkpoints": args.checkpoints, "seed": args.seed, "lr": args.lr,
              "dataset_sequences": args.dataset_sequences, "skip_bigram": args.skip_bigram,
              "weight_decay": args.weight_decay, "warmup_steps": args.warmup_steps,
              "skip_bigram_period": args.skip_bigram_period}
    settings = DemoSettings(**{k: v for k, v in chosen.items() if v is not None})
    out = args.out or default_run_uri()
    try:
        run = train_demo(out, settings, force=args.force, show_progress=not args.quiet)
    except (DemoRunError, ObjectStoreError) as exc:
        raise UserError(str(exc)) from exc
    first, last = run.checkpoints[0], run.checkpoints[-1]
    verb = "reused" if run.reused else f"trained in {run.wall_time_s:.0f}s"
    print(f"{run.run_uri}: {len(run.checkpoints)} checkpoints, steps 0..{settings.steps} ({verb})")
    print(f"  in-context loss {first['in_context_loss']:.3f} -> {last['in_context_loss']:.3f}, "
          f"induction score {first['induction_score']:.2f} -> {last['induction_score']:.2f}, "
          f"induction heads formed at step {run.formed_at_step if run.formed_at_step is not None else '(not yet)'}")
    print(f"  dataset for λ̂: {run.run_uri}/dataset")
    return 0
