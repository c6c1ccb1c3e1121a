"""Why do our λ̂ and devinterp's differ on large.py's rows? Splits each side's λ̂ into its parts (not a test).

    python benchmarks/large.py --shapes 70m ...                 # writes root/rows/*.json
    python benchmarks/llc_gap.py --shapes 70m --components all  # reads them

Both sides compute λ̂_c = nβ (mean_t L_{B_t}(w_t) − b) with a constant baseline b = the mean of
L_m(w*) over 4 minibatches, so λ̂ carries a term that is the same for every chain and that the
between-chain standard error does not see:

    λ̂_c = nβ mean_t (L_{B_t}(w_t) − L_{B_t}(w*))   [paired: what SGLD moved]
        + nβ (mean_t L_{B_t}(w*) − b)              [batch term: which batches were drawn]

With the per-item losses at w* (one forward per item) both parts are exact for each side's
own batches: devinterp's are its DataLoader's first shuffled pass (seed init_seed=100, the same
for every chain and for its init loss, replayed by `cycle`), ours are the job's seeded index
streams (`workers.llc.data.chain_generator`). Each side's baseline is recomputed from those
batches and checked against the one it reported, so the batches are the ones actually used.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.large import BATCH, INIT_BATCHES, NBETA, STEP, load_tokens  # noqa: E402

DEVINTERP_SEED = 100          # devinterp.slt.sampling.sample(init_seed=100), its default


def latest_row(root: Path, shape: str, comp: str, side: str) -> dict:
    rows = sorted((root / "rows").glob(f"{shape}-{comp}-{side}-*.json"))
    if not rows:
        raise SystemExit(f"no {side} row for {shape} {comp} under {root}/rows (run benchmarks/large.py first)")
    return json.loads(rows[-1].read_text())


def item_losses(root: Path, shape: str) -> np.ndarray:
    """L(w*) of each sequence alone: the causal-LM loss the job uses, one item per forward (float64)."""
    from workers.job import causal_lm_loss
    from workers.loading import load_model_dir

    tokens = torch.as_tensor(load_tokens(root).astype("int64"))
    model = load_model_dir(root / "objects" / f"pythia-{shape}" / f"step{STEP}")
    with torch.no_grad():
        return np.array([float(causal_lm_loss(model, tokens[i:i + 1])) for i in range(len(tokens))])


def devinterp_batches(n: int, draws: int) -> tuple[np.ndarray, np.ndarray]:
    """(init-loss batches, draw batches) as item indices: one shuffled pass replayed, as devinterp's feed does."""
    from itertools import cycle, islice

    from torch.utils.data import DataLoader

    gen = torch.Generator(device="cpu")
    gen.manual_seed(DEVINTERP_SEED)
    loader = DataLoader(list(range(n)), batch_size=BATCH, shuffle=True, generator=gen, drop_last=True)
    first_pass = [b.numpy() for b in loader]
    take = lambda k: np.stack(list(islice(cycle(first_pass), k)))  # noqa: E731
    return take(INIT_BATCHES), take(draws)


def our_batches(n: int, chains: int, draws: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(baseline batches, draw batches per chain) from the job's seeded index streams."""
    from workers.llc.data import IndexStream, chain_generator

    base = IndexStream(n, BATCH, chain_generator(seed, chains, 2))
    streams = [IndexStream(n, BATCH, chain_generator(seed, c, 0)) for c in range(chains)]
    return (np.stack([base.next().numpy() for _ in range(INIT_BATCHES)]),
            np.stack([np.stack([s.next().numpy() for _ in range(draws)]) for s in streams]))


def mean_se(xs: np.ndarray) -> tuple[float, float]:
    return float(xs.mean()), float(xs.std(ddof=1) / np.sqrt(len(xs)))


def split(side: str, row: dict, losses: np.ndarray, base_idx: np.ndarray, draw_idx: np.ndarray) -> dict:
    """One side's λ̂ per chain, its paired part and its batch term; checks the recomputed baseline."""
    trace = np.asarray(row["loss_trace"], dtype=np.float64)            # (chains, draws)
    chains, draws = trace.shape
    draw_idx = np.broadcast_to(draw_idx, (chains, draws, BATCH))
    base = losses[base_idx].mean()
    at_star = losses[draw_idx].mean(axis=-1)                           # L_{B_t}(w*) per (chain, draw)
    reported = NBETA * (trace.mean(axis=1) - row["baseline"])
    paired = NBETA * (trace - at_star).mean(axis=1)
    full = NBETA * (trace.mean(axis=1) - losses.mean())
    out = {"side": side, "baseline_reported": row["baseline"], "baseline_recomputed": float(base),
           "reported": mean_se(reported), "paired": mean_se(paired), "full_data": mean_se(full),
           "batch_term": float(NBETA * (at_star.mean() - base)),
           "trace_vs_star_corr": float(np.corrcoef(trace.ravel(), at_star.ravel())[0, 1])}
    print(f"{side:<9} baseline {row['baseline']:.6f} (recomputed from its batches {base:.6f}); "
          f"corr(L_B(w_t), L_B(w*)) {out['trace_vs_star_corr']:.3f}")
    for key in ("reported", "paired", "full_data"):
        m, se = out[key]
        print(f"          λ̂ {key:<9} {m:7.3f} ± {se:.3f} (between-chain s.e.)")
    print(f"          batch term nβ(mean_t L_B(w*) − b) = {out['batch_term']:+.3f}  (shared by all chains)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=None, help="large.py's --root (default: its default)")
    ap.add_argument("--shapes", default="70m")
    ap.add_argument("--components", default="all")
    args = ap.parse_args()
    import tempfile

    for shape in args.shapes.split(","):
        root = Path(args.root or Path(tempfile.gettempdir()) / "llc-bench-large")
        losses = item_losses(root, shape)
        n = len(losses)
        batch_means = losses[np.arange(n - n % BATCH).reshape(-1, BATCH)].mean(axis=1)
        print(f"pythia-{shape}: L_n(w*) {losses.mean():.5f} over {n} items; per-item sd {losses.std(ddof=1):.5f}; "
              f"sd of a {BATCH}-item batch mean {losses.std(ddof=1) / np.sqrt(BATCH):.5f} "
              f"(x nβ = {NBETA * losses.std(ddof=1) / np.sqrt(BATCH):.3f} in λ̂; consecutive batches: {batch_means.std(ddof=1):.5f})")
        for comp in args.components.split(","):
            ours, dvi = latest_row(root, shape, comp, "ours"), latest_row(root, shape, comp, "devinterp")
            chains, draws = np.asarray(ours["loss_trace"]).shape
            print(f"-- {shape} {comp}: {chains} chains x {draws} draws")
            a = split("ours", ours, losses, *our_batches(n, chains, draws))
            b = split("devinterp", dvi, losses, *devinterp_batches(n, draws))
            for key in ("reported", "paired", "full_data"):
                (ma, sa), (mb, sb) = a[key], b[key]
                gap, se = ma - mb, float(np.hypot(sa, sb))
                print(f"   ours − devinterp, {key:<9}: {gap:+.3f} ± {se:.3f}  ({gap / se:+.1f} s.e.)")


if __name__ == "__main__":
    main()
