"""One demo-training variant, its λ̂ curve and its stages (figures for docs/induction_split.md).

    python benchmarks/induction_split.py NAME [--seed 0] [--steps 1500] [--lr 2e-3] [--weight-decay 1.0]
        [--warmup-steps 50] [--skip-bigram 0.1] [--skip-bigram-period 4] [--vocab-size 64] [--checkpoints 40] [--every 2] [--min-step 0]

Trains the run with `workers.demo_training.train_demo` (under $LLC_HOME/objects/induction-split/),
estimates λ̂ at every `--every`-th log-spaced checkpoint from `--min-step` on (and the last) with
the estimator directly, then runs the service's bootstrap stage detection on the per-chain λ̂ and
the held-out loss. Prints one line per checkpoint (losses, best layer-0 previous-token and
layer-1 induction scores, λ̂ ± σ over chains, weight and LayerNorm-gain norms), the stage table,
wall times and the load average; writes the rows to <NAME>-s<SEED>.json in the working directory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.aggregator.bootstrap import bootstrap_stages  # noqa: E402
from workers.datasets import induction_sequences, load_token_dataset  # noqa: E402
from workers.demo_training import DemoSettings, train_demo  # noqa: E402
from workers.llc import SGLDConfig, estimate_llc  # noqa: E402
from workers.models import AttnOnlyForCausalLM  # noqa: E402

SGLD = dict(epsilon=1e-3, gamma=100.0, num_burnin=20, batch_size=32, seed=0)
LAMBDA_SEQUENCES = 512


def lm_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model(batch, labels=batch).loss


def best(heads: dict[str, dict[str, float]], layer: int, score: str) -> tuple[float, str]:
    return max((v[score], k) for k, v in heads.items() if k.startswith(f"{layer}."))


def norms(model: torch.nn.Module) -> dict[str, float]:
    sd = model.state_dict()
    out = {"all": float(torch.sqrt(sum((v.float() ** 2).sum() for v in sd.values() if v.is_floating_point())))}
    for name, key in (("ln0", "layers.0.ln.weight"), ("ln1", "layers.1.ln.weight"), ("lnf", "ln_f.weight")):
        out[name] = float(sd[key].norm()) if key in sd else float("nan")
    return out


@torch.no_grad()
def attention_probe(model: torch.nn.Module, settings: DemoSettings, *, sequences: int = 256) -> dict[str, list[float]]:
    """Where the heads look, beyond the stored scores (docs/induction_split.md, third round):
    `prev_at` / `prev_off`: each layer-0 head's attention to t − 1 from the queries where the
    skip-bigram's source sits (t ≡ −1 mod the period) and from the others — a positional table
    scores high on the first only; `source-1`, `source`, `source+1`: each layer-1 head's attention
    from a position in the second copy to the induction key and its neighbours."""
    batch = induction_sequences(num_sequences=sequences, seq_len=settings.seq_len, vocab_size=settings.vocab_size,
                                seed=99, skip_bigram=settings.skip_bigram,
                                skip_bigram_period=settings.skip_bigram_period)
    tokens, in_context, source = (torch.from_numpy(x) for x in (batch.tokens, batch.in_context, batch.source))
    model.eval()
    first, second = model(tokens, output_attentions=True).attentions[:2]
    q = torch.arange(1, settings.seq_len)
    prev = first[:, :, q, q - 1].mean(0)                                   # (H, T−1)
    at = (q + 1) % settings.skip_bigram_period == 0
    out = {"prev_at": prev[:, at].mean(1).tolist(), "prev_off": prev[:, ~at].mean(1).tolist() if (~at).any() else []}
    rows, targets = in_context.nonzero(as_tuple=True)
    queries, keys = targets - 1, source[rows, targets]
    for name, shift in (("source-1", -1), ("source", 0), ("source+1", 1)):
        k = keys + shift
        ok = (k >= 0) & (k <= queries)
        out[name] = second[rows[ok], :, queries[ok], k[ok]].mean(0).tolist()
    return out


def probe_text(p: dict[str, list[float]]) -> str:
    fmt = lambda xs: " ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    off = f" / elsewhere [{fmt(p['prev_off'])}]" if p["prev_off"] else ""
    return (f"layer 0 → t−1 at the skip-bigram queries [{fmt(p['prev_at'])}]{off}; layer 1 → source−1/source/source+1 "
            + "  ".join(f"{a:.2f}/{b:.2f}/{c:.2f}" for a, b, c in zip(p["source-1"], p["source"], p["source+1"])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--warmup-steps", type=int, default=50)
    ap.add_argument("--skip-bigram", type=float, default=0.0)
    ap.add_argument("--skip-bigram-period", type=int, default=1)
    ap.add_argument("--vocab-size", type=int, default=64)
    ap.add_argument("--checkpoints", type=int, default=40)
    ap.add_argument("--every", type=int, default=2, help="estimate λ̂ at every n-th checkpoint")
    ap.add_argument("--min-step", type=int, default=0)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=80)
    ap.add_argument("--probe-only", action="store_true",
                    help="train (or reuse) the run and print the attention probe at every checkpoint; no λ̂")
    a = ap.parse_args()
    torch.set_num_threads(1)

    settings = DemoSettings(steps=a.steps, num_checkpoints=a.checkpoints, seed=a.seed, lr=a.lr,
                            weight_decay=a.weight_decay, warmup_steps=a.warmup_steps, skip_bigram=a.skip_bigram,
                            skip_bigram_period=a.skip_bigram_period, vocab_size=a.vocab_size)
    home = Path(os.environ.get("LLC_HOME", Path.home() / ".llc"))
    root = home / "objects" / "induction-split" / f"{a.name}-s{a.seed}"
    started = time.perf_counter()
    run = train_demo(root.as_uri(), settings, show_progress=False)
    train_s = time.perf_counter() - started
    if a.probe_only:
        for c in run.checkpoints:
            model = AttnOnlyForCausalLM.from_pretrained(root / f"step-{c['step']}")
            print(f"{c['step']:5d} loss {c['loss']:.3f} in-context {c['in_context_loss']:.3f}  "
                  f"{probe_text(attention_probe(model, settings))}", flush=True)
        return
    dataset = load_token_dataset((root / "dataset").as_uri(), max_sequences=LAMBDA_SEQUENCES)
    later = [c for c in run.checkpoints if c["step"] >= a.min_step]
    chosen = later[::a.every] + ([later[-1]] if (len(later) - 1) % a.every else [])

    rows = []
    started = time.perf_counter()
    config = SGLDConfig(num_chains=a.chains, num_draws=a.draws, **SGLD)
    for c in chosen:
        model = AttnOnlyForCausalLM.from_pretrained(root / f"step-{c['step']}")
        r = estimate_llc(model, lm_loss, dataset, config=config)
        prev0, ind1 = best(c["heads"], 0, "prev_token"), best(c["heads"], 1, "induction")
        row = dict(step=c["step"], loss=c["loss"], icl=c["in_context_loss"], prev0=prev0, ind1=ind1,
                   lam=r.llc_mean, sd=r.llc_std, per_chain=r.llc_per_chain, norms=norms(model),
                   probe=attention_probe(model, settings))
        rows.append(row)
        n = row["norms"]
        print(f"{c['step']:5d} loss {c['loss']:.3f} in-context {c['in_context_loss']:.3f} "
              f"prev0 {prev0[0]:.2f} ({prev0[1]}) ind1 {ind1[0]:.2f} ({ind1[1]}) λ̂ {r.llc_mean:6.1f} ± {r.llc_std:4.1f} "
              f"|w| {n['all']:.1f} ln0 {n['ln0']:.2f} ln1 {n['ln1']:.2f} lnf {n['lnf']:.2f}\n      "
              f"{probe_text(row['probe'])}", flush=True)
    lambda_s = time.perf_counter() - started

    load = os.getloadavg()
    # Written before the stage analysis, so the per-chain λ̂ (minutes of work) survive a failure there.
    Path(f"{a.name}-s{a.seed}.json").write_text(json.dumps(
        dict(args=vars(a), rows=rows, train_s=train_s, lambda_s=lambda_s, load=load), indent=1))
    steps = [r["step"] for r in rows]
    found = bootstrap_stages(steps, [r["per_chain"] for r in rows], loss_steps=steps,
                             loss=[r["loss"] for r in rows], replicates=100)

    def at(step: float, key: str) -> float:
        return float(np.interp(step, steps, [r[key][0] if isinstance(r[key], (list, tuple)) else r[key] for r in rows]))

    for su in found.stages:
        s = su.stage
        probs = ", ".join(f"{k} {v:.0%}" for k, v in su.kind_probability.items() if v)
        d = {k: at(s.end_step, k) - at(s.start_step, k) for k in ("prev0", "ind1", "icl")}
        print(f"stage {s.index + 1}: {su.interval_text('start')} – {su.interval_text('end')}  {s.kind} ({probs})  "
              f"Δλ̂ {s.llc_change:+.1f}  Δloss {s.loss_change:+.3f}  Δprev0 {d['prev0']:+.2f}  "
              f"Δind1 {d['ind1']:+.2f}  Δin-context {d['icl']:+.2f}  resolved={su.resolved}")
    print(f"{a.name} seed {a.seed}: training {train_s:.0f} s, λ̂ {lambda_s:.0f} s at {len(rows)} checkpoints, "
          f"load {load[0]:.1f}")


if __name__ == "__main__":
    main()
