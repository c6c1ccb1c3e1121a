"""`llc train-demo`: train the attention-only demo model on the induction task.

Writes ~40 checkpoints spaced log-linearly over training to a run prefix (each an HF
model directory + metadata.json), plus the dataset used for λ̂ under `<run>/dataset/`
and `<run>/train_config.json` last, as the marker that the run is complete. The
induction heads form after a loss plateau, which is what the λ̂ curve should show.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from workers.checkpoints import CheckpointError, discover_checkpoints
from workers.datasets import induction_sequences, write_token_dataset
from workers.head_scores import scores_from_attentions
from workers.models import AttnOnlyConfig, AttnOnlyForCausalLM
from workers.objectstore import join_uri, open_store

TRAIN_CONFIG = "train_config.json"
METADATA = "metadata.json"
DATASET_PREFIX = "dataset"


class DemoRunError(ValueError):
    """The run prefix holds something other than this demo run."""


@dataclass(frozen=True)
class DemoSettings:
    steps: int = 3000
    num_checkpoints: int = 40
    seed: int = 0
    vocab_size: int = 64
    seq_len: int = 32
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    dataset_sequences: int = 1024
    eval_sequences: int = 256
    skip_bigram: float = 0.0        # share of tokens set by the token two back (workers.datasets)
    skip_bigram_period: int = 1     # > 1: skip-bigrams only at positions that are multiples of it


@dataclass
class DemoRun:
    run_uri: str
    settings: DemoSettings
    reused: bool
    wall_time_s: float
    checkpoints: list[dict] = field(default_factory=list)   # metadata.json of each checkpoint

    @property
    def formed_at_step(self) -> int | None:
        return formation_step(self.checkpoints)


def checkpoint_steps(total: int, count: int) -> list[int]:
    """`count` distinct steps from 0 to `total`, log-spaced (dense early, where most changes happen)."""
    if count < 2 or total < 1:
        return [0, total] if total > 0 else [0]
    count = min(count, total + 1)
    raw = np.geomspace(1, total, count - 1)
    steps = [0]
    for i, x in enumerate(raw):
        remaining = count - 1 - i                  # steps still to place after this one, incl. it
        hi = total - (remaining - 1)
        steps.append(int(min(max(round(x), steps[-1] + 1), hi)))
    steps[-1] = total
    return steps


def formation_step(checkpoints: list[dict]) -> int | None:
    """First step where the in-context loss has fallen half way from its plateau to its final value."""
    if len(checkpoints) < 3:
        return None
    losses = [c["in_context_loss"] for c in checkpoints]
    plateau, final = max(losses[: max(2, len(losses) // 4)]), losses[-1]
    if plateau - final < 0.5:
        return None
    target = (plateau + final) / 2
    for c in checkpoints:
        if c["in_context_loss"] <= target:
            return int(c["step"])
    return None


@torch.no_grad()
def evaluate(model: AttnOnlyForCausalLM, tokens: torch.Tensor, in_context: torch.Tensor,
             source: torch.Tensor) -> dict[str, float]:
    """Loss overall and on the repeated segment, the best head's induction attention, and every
    head's previous-token and induction scores (`heads`)."""
    model.eval()
    out = model(tokens, output_attentions=True)
    nll = F.cross_entropy(out.logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")  # (N, T-1)
    mask = in_context[:, 1:]
    rows, targets = mask.nonzero(as_tuple=True)
    targets = targets + 1
    queries, keys = targets - 1, source[rows, targets]
    heads = scores_from_attentions(out.attentions, tokens, targets=(rows, queries, keys))
    best = max(heads, key=lambda h: (heads[h]["induction"], h))
    model.train()
    return {"loss": float(nll.mean()), "in_context_loss": float(nll[mask].mean()),
            "other_loss": float(nll[~mask].mean()), "induction_score": heads[best]["induction"],
            "induction_head": best, "heads": heads}


def _existing_run(run_uri: str, settings: DemoSettings) -> list[dict] | None:
    """The checkpoints' metadata when the run prefix already holds this exact run, else None."""
    store = open_store(run_uri)
    try:
        stored = json.loads(store.get_bytes(TRAIN_CONFIG))
    except (ValueError, OSError):
        return None
    # A field added since the run was written was trained at its default (new fields keep the old behaviour).
    if {**asdict(DemoSettings()), **stored} != asdict(settings):
        return None
    try:
        refs = discover_checkpoints(run_uri)
    except CheckpointError:
        return None
    if [r.step for r in refs] != checkpoint_steps(settings.steps, settings.num_checkpoints):
        return None
    try:
        return [json.loads(open_store(r.uri).get_bytes(METADATA)) for r in refs]
    except ValueError:
        return None


def _save_checkpoint(model: AttnOnlyForCausalLM, run_uri: str, step: int, metadata: dict) -> None:
    """Upload one checkpoint; config.json goes last so a reader never takes a half-written one."""
    store = open_store(join_uri(run_uri, f"step-{step}"))
    with tempfile.TemporaryDirectory(prefix="llc-demo-ckpt-") as tmp:
        # save_file directly (what save_pretrained writes for an unsharded model, minus its progress bar).
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                  str(Path(tmp) / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        store.upload(Path(tmp) / "model.safetensors", "model.safetensors")
        store.put_bytes(METADATA, json.dumps(metadata, indent=1).encode())
        store.upload(Path(tmp) / "config.json", "config.json")


def train_demo(run_uri: str, settings: DemoSettings | None = None, *, force: bool = False,
               show_progress: bool = True, num_threads: int | None = 1) -> DemoRun:
    """Train (or reuse) the demo run at `run_uri`.

    num_threads: torch threads while training; the model is so small that one thread is
    faster than several (and leaves the other cores to the rest of the node).
    """
    settings = settings or DemoSettings()
    run_uri = run_uri.rstrip("/")
    started = time.perf_counter()
    if not force:
        existing = _existing_run(run_uri, settings)
        if existing is not None:
            return DemoRun(run_uri, settings, reused=True, wall_time_s=time.perf_counter() - started,
                           checkpoints=existing)

    store = open_store(run_uri)
    stored = store.list()
    if stored and not force:
        raise DemoRunError(f"The run prefix {run_uri} already holds other objects (a different or unfinished run); "
                           "choose another --out, or pass --force to replace them.")
    for obj in stored:  # --force: the user asked to replace the run
        store.delete(obj.key)

    threads_before = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        records = _train(run_uri, settings, show_progress=show_progress)
    finally:
        torch.set_num_threads(threads_before)
    open_store(run_uri).put_bytes(TRAIN_CONFIG, json.dumps(asdict(settings), indent=1).encode())
    return DemoRun(run_uri, settings, reused=False, wall_time_s=time.perf_counter() - started, checkpoints=records)


def _train(run_uri: str, settings: DemoSettings, *, show_progress: bool) -> list[dict]:
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    task = dict(seq_len=settings.seq_len, vocab_size=settings.vocab_size, skip_bigram=settings.skip_bigram,
                skip_bigram_period=settings.skip_bigram_period)
    dataset = induction_sequences(num_sequences=settings.dataset_sequences, seed=settings.seed + 1, **task)
    write_token_dataset(join_uri(run_uri, DATASET_PREFIX), dataset.tokens, vocab_size=settings.vocab_size)
    held_out = induction_sequences(num_sequences=settings.eval_sequences, seed=settings.seed + 2, **task)
    eval_args = (torch.from_numpy(held_out.tokens), torch.from_numpy(held_out.in_context),
                 torch.from_numpy(held_out.source))

    config = AttnOnlyConfig(vocab_size=settings.vocab_size, n_positions=settings.seq_len,
                            d_model=settings.d_model, n_heads=settings.n_heads, n_layers=settings.n_layers)
    model = AttnOnlyForCausalLM(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
                            betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, settings.warmup_steps)))
    save_at = set(checkpoint_steps(settings.steps, settings.num_checkpoints))
    records: list[dict] = []
    train_loss: float | None = None   # none before the first step
    columns = (TextColumn("[bold]train-demo"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        bar = progress.add_task("train", total=settings.steps, info="")
        for step in range(settings.steps + 1):
            if step in save_at:
                metrics = evaluate(model, *eval_args)
                meta = {"step": step, "train_loss": train_loss, **metrics}
                _save_checkpoint(model, run_uri, step, meta)
                records.append(meta)
                progress.update(bar, info=f"loss {metrics['loss']:.3f}  in-context {metrics['in_context_loss']:.3f}"
                                          f"  induction {metrics['induction_score']:.2f}")
            if step == settings.steps:
                break
            batch = torch.from_numpy(induction_sequences(num_sequences=settings.batch_size, seed=rng, **task).tokens)
            loss = model(batch, labels=batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            train_loss = float(loss.detach())
            progress.advance(bar)
    return records
