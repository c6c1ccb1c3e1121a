"""epsilon=auto against known learning coefficients (figures for docs/estimator.md).

    python benchmarks/validation.py [--chains 4] [--draws 1000] [--n 100000] [--method sgld]

Reduced-rank regressions and deep linear networks at a rank-r teacher (lambda from Aoyagi's
formulas), a regular linear regression (lambda = d/2) and the normal crossing y = w1 w2^2 x
(lambda = 1/4). Prints lambda_hat / lambda, the picked step, the pilot cost and the wall time.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.workers.llc.llc_toy_models import (NormalCrossing, deep_linear, dln_lambda, half_mse,  # noqa: E402
                                              linear_regression, scalar_noise_data)
from workers.llc import SGLDConfig, estimate_llc  # noqa: E402


def cases(n: int) -> list[tuple[str, float, object, object]]:
    out = []
    for widths in ((4, 2, 3), (3, 1, 3), (3, 2, 2, 2), (4, 3, 3, 3)):
        model, data = deep_linear(widths=widths, rank=1, n=n, seed=0)
        kind = "RRR" if len(widths) == 3 else "DLN"
        out.append((f"{kind} {'-'.join(map(str, widths))} r=1", dln_lambda(widths, 1), model, data))
    model, data = linear_regression(n=n, d_in=4, d_out=2)
    out.append(("linear 4->2 (regular)", 5.0, model, data))
    out.append(("normal crossing w1 w2^2", 0.25, NormalCrossing(), scalar_noise_data(n)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--gamma", type=float, default=100.0)
    ap.add_argument("--method", default="sgld")
    ap.add_argument("--only", default=None, help="substring of the case names to run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ratios = []
    for name, lam, model, data in cases(args.n):
        if args.only and args.only not in name:
            continue
        cfg = SGLDConfig(epsilon="auto", gamma=args.gamma, num_chains=args.chains, num_draws=args.draws,
                         num_burnin=0, batch_size=1000, seed=0, method=args.method)
        t0 = time.perf_counter()
        res = estimate_llc(model, half_mse, data, config=cfg)
        wall = time.perf_counter() - t0
        cal = res.calibration or {}
        main_steps = res.diagnostics["chain_steps"]
        ratios.append(res.llc_mean / lam)
        pick = cal.get("epsilon", float("nan")) * res.nbeta * cal.get("scale", 1.0)
        print(f"{name:26s} lambda {lam:5.3g}  hat {res.llc_mean:7.3f} ± {res.llc_std / math.sqrt(args.chains):.3f}  "
              f"ratio {res.llc_mean / lam:5.3f}  pick eps*nbeta*s {pick:.3g}  "
              f"pilots/main steps {cal.get('pilot_chain_steps', 0) / max(main_steps, 1):.1f}  {wall:6.1f} s", flush=True)
    if ratios:
        print(f"median ratio {statistics.median(ratios):.3f}; worst |ratio - 1| {max(abs(r - 1) for r in ratios):.3f}")


if __name__ == "__main__":
    main()
