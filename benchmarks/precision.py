"""λ̂ of one small model computed in fp32, bf16 and fp16 (the fp32 master copy at work; not a test).

    python benchmarks/precision.py [--draws 100] [--chains 4]

A random-init GPT-NeoX (2 layers, width 32, 4 heads, vocabulary 64; weights + 0.05·N(0, 1) so
biases and norms are not trivial), 64 × 12 random tokens; the same seeds for every dtype, so the
chains get the same batches and noise and differ only by the model's arithmetic. The low-precision
runs sample an fp32 master copy and compute the loss in fp32 (docs/estimator.md, Precision).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.job import causal_lm_loss  # noqa: E402
from workers.llc import SGLDConfig, estimate_llc  # noqa: E402

VOCAB = 64


def model(dtype: torch.dtype) -> torch.nn.Module:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    m = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, max_position_embeddings=16, attn_implementation="eager"))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval().to(dtype)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--chains", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tokens = torch.randint(0, VOCAB, (64, 12), generator=torch.Generator().manual_seed(3))
    data = torch.utils.data.TensorDataset(tokens)
    loss = lambda m, batch: causal_lm_loss(m, batch[0])  # noqa: E731 - TensorDataset batches are 1-tuples
    print(f"{args.chains} chains x {args.draws} draws, burn-in 2, batch 8, eps 1e-3, gamma 100, seed 1")
    for sel in (None, "l1h2"):
        ref = None
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            cfg = SGLDConfig(epsilon=1e-3, gamma=100.0, num_chains=args.chains, num_draws=args.draws, num_burnin=2,
                             batch_size=8, seed=1, vectorize=False, sample_params=sel)
            r = estimate_llc(model(dtype), loss, data, config=cfg)
            ref = r.llc_mean if ref is None else ref
            print(f"{sel or 'all':<5} {str(dtype):<15} λ̂ {r.llc_mean:7.3f} ± {r.llc_std:.3f} (chains' sd)   "
                  f"vs fp32 {r.llc_mean - ref:+.4f}", flush=True)


if __name__ == "__main__":
    main()
