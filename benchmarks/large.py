"""Benchmark: λ̂ of GPT-NeoX models at Pythia's shapes through a sweep job, vs devinterp 2.0.1 (not a test).

    python benchmarks/large.py [--shapes 14m,70m] [--components all,l0h0] [--draws 50] [--threads 1]

Random-init GPT-NeoX models at Pythia-14M/70M/160M shapes are written as `step<N>/` Hugging Face
directories into a file:// object store (Pythia's layout) with a random token dataset; each row
runs in a fresh subprocess (peak memory = peak RSS minus RSS before the model loads):
- ours: `workers.job.run_job` (the sweep job: checkpoint through the cache, memory plan, SGLD);
- devinterp: `devinterp.slt.llc.llc` on the same model directory and tokens (`create_param_masks`
  for a head), in its own venv (benchmarks/devinterp_venv.py);
- reference: the model's weights plus one forward+backward of the batch (weights + activations).
Equal work: chains × draws SGLD steps, no burn-in, batch 4 × 128 tokens, the same ε, γ, nβ; our
baseline is INIT_BATCHES batches at w* like devinterp's init loss (`num_init_loss_batches`). Per chain-step time is
the estimate's wall time (setup, baselines and probes included) over chains × steps; the same in
process CPU seconds, which a busy shared machine distorts far less than wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.devinterp_venv import run_json  # noqa: E402

SHAPES = {   # Pythia's (hidden, layers, heads, intermediate); vocab 50304, rotary 25%, parallel residual
    "14m": (128, 6, 4, 512), "70m": (512, 6, 8, 2048), "160m": (768, 12, 12, 3072)}
VOCAB, SEQ, BATCH, N_SEQ, STEP = 50304, 128, 4, 64, 143000
EPS, GAMMA, NBETA = 1e-5, 100.0, 10.0
INIT_BATCHES = 4        # L_m(w*) batches on both sides (devinterp: num_init_loss_batches)


def rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------ setup (writes the "run")
def write_run(root: Path, shape: str) -> str:
    """s3-style layout under file://root: pythia-<shape>/step<STEP>/ and tokens/; returns the run URI."""
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from workers.datasets import write_token_dataset
    from workers.objectstore import join_uri, open_store

    store_uri = (root / "objects").as_uri()
    run_uri = join_uri(store_uri, f"pythia-{shape}")
    ckpt = root / "objects" / f"pythia-{shape}" / f"step{STEP}"
    if not (ckpt / "config.json").exists():
        hidden, layers, heads, inter = SHAPES[shape]
        torch.manual_seed(0)
        cfg = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            intermediate_size=inter, rotary_pct=0.25, max_position_embeddings=2048,
                            use_parallel_residual=True, tie_word_embeddings=False)
        model = GPTNeoXForCausalLM(cfg)
        with tempfile.TemporaryDirectory() as tmp:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{tmp}/model.safetensors",
                      metadata={"format": "pt"})
            cfg.save_pretrained(tmp)
            store = open_store(join_uri(run_uri, f"step{STEP}"))
            store.upload(Path(tmp) / "model.safetensors", "model.safetensors")
            store.upload(Path(tmp) / "config.json", "config.json")
    if not (root / "objects" / "tokens" / "header.json").exists():
        rng = np.random.default_rng(0)
        write_token_dataset(join_uri(store_uri, "tokens"), rng.integers(0, VOCAB, (N_SEQ, SEQ)), vocab_size=VOCAB)
    return run_uri


def load_tokens(root: Path):
    import numpy as np

    header = json.loads((root / "objects" / "tokens" / "header.json").read_text())
    return np.fromfile(root / "objects" / "tokens" / "tokens.bin", dtype=header["dtype"]).reshape(-1, SEQ)


# ------------------------------------------------------------------ sides (each in a fresh process)
def ours(root: Path, shape: str, component: str, chains: int, draws: int, threads: int, compile_: str,
         dtype: str, memory_gib: float | None = None, checkpointing: bool = False) -> dict:
    import torch

    from workers.checkpoints import inspect_checkpoint
    from workers.job import DatasetSpec, JobSpec, SamplerSpec, run_job
    from workers.objectstore import join_uri

    import transformers.models.gpt_neox.modeling_gpt_neox  # noqa: F401 - imports are not the job's memory
    import workers.llc.estimator  # noqa: F401

    torch.set_num_threads(threads)
    run_uri = (root / "objects" / f"pythia-{shape}").as_uri()
    ref = inspect_checkpoint(join_uri(run_uri, f"step{STEP}"))
    spec = JobSpec(checkpoint_uri=ref.uri, fingerprint=ref.fingerprint, step=STEP,
                   dataset=DatasetSpec(uri=(root / "objects" / "tokens").as_uri()),
                   sampler=SamplerSpec(epsilon=EPS, gamma=GAMMA, nbeta=NBETA, num_chains=chains, num_draws=draws,
                                       num_burnin=0, batch_size=BATCH, baseline=INIT_BATCHES),
                   seed=0, device="cpu", num_threads=threads, cache_dir=str(root / "cache"),
                   sample_params=None if component == "all" else (component,),
                   compile={"auto": None, "on": True, "off": False}[compile_], dtype=dtype,
                   memory_bytes=int(memory_gib * 2**30) if memory_gib else None,
                   activation_checkpointing=checkpointing)
    before = rss()
    res = run_job(spec)
    d = res.diagnostics
    return {"wall_s": d["wall_time_s"], "cpu_s": d["cpu_time_s"], "job_s": res.wall_time_s, "steps": chains * draws,
            "sampling_s": d["sampling_time_s"], "compile_s": d.get("compile_time_s", 0.0),
            "llc_mean": res.llc_mean, "llc_std": res.llc_std, "peak": peak_rss() - before,
            "estimate": d.get("memory_estimate_bytes"), "path": res.extra["path"], "compiled": d.get("compiled"),
            "micro": d.get("micro_batches"), "sampled": d.get("num_sampled_params"),
            "acts_per_item": d.get("memory_activations_per_item"),
            "per_chain": res.llc_per_chain, "baseline": res.baseline_loss, "init_loss": res.init_loss,
            "nbeta": res.nbeta, "loss_trace": res.loss_trace}


def devinterp(root: Path, shape: str, component: str, chains: int, draws: int, threads: int) -> dict:
    import torch
    from datasets import Dataset
    from devinterp.slt.llc import llc
    from devinterp.slt.weight_restrictions import create_param_masks
    from transformers import AutoModelForCausalLM

    import transformers.models.gpt_neox.modeling_gpt_neox  # noqa: F401

    torch.set_num_threads(threads)
    tokens = load_tokens(root)
    ds = Dataset.from_dict({"input_ids": tokens.tolist()}).with_format("torch")
    before = rss()
    model = AutoModelForCausalLM.from_pretrained(root / "objects" / f"pythia-{shape}" / f"step{STEP}",
                                                 dtype=torch.float32, use_safetensors=True).eval()
    masks = None if component == "all" else create_param_masks(model, component)
    t0, c0 = time.perf_counter(), time.process_time()
    out = llc(model, ds, {}, lr=EPS, n_beta=NBETA, localization=GAMMA, param_masks=masks, num_chains=chains,
              num_draws=draws, batch_size=BATCH, num_burnin_steps=0, num_init_loss_batches=INIT_BATCHES, device="cpu",
              output_path=str(root / f"devinterp-{time.time_ns()}.zarr"))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    per_chain = [float(v) for v in out["llc_per_chain"].values]
    mean = sum(per_chain) / len(per_chain)
    std = (sum((v - mean) ** 2 for v in per_chain) / max(1, len(per_chain) - 1)) ** 0.5
    return {"wall_s": wall, "cpu_s": cpu, "steps": chains * draws, "llc_mean": mean, "llc_std": std, "peak": peak_rss() - before,
            "per_chain": per_chain, "baseline": float(out["init_loss"]), "nbeta": NBETA,
            "loss_trace": [[float(x) for x in row] for row in out["loss_trace"].values]}


def reference(root: Path, shape: str, threads: int) -> dict:
    """Weights + activations: load, one forward+backward of one batch (gradients for one weight only)."""
    import torch

    from workers.job import causal_lm_loss
    from workers.loading import load_model_dir

    import transformers.models.gpt_neox.modeling_gpt_neox  # noqa: F401

    torch.set_num_threads(threads)
    batch = torch.as_tensor(load_tokens(root)[:BATCH].astype("int64"))
    before = rss()
    model = load_model_dir(root / "objects" / f"pythia-{shape}" / f"step{STEP}")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    w = model.gpt_neox.layers[0].attention.query_key_value.weight.requires_grad_(True)
    loss = causal_lm_loss(model, batch)
    (g,) = torch.autograd.grad(loss, w)
    return {"peak": peak_rss() - before, "weights": weights, "params": sum(p.numel() for p in model.parameters())}


# ------------------------------------------------------------------ driver
def save_row(root: Path, side: str, shape: str, comp: str, row: dict) -> None:
    """Keep each row's JSON (per-chain λ̂, baseline, loss traces) under root/rows/ for later comparison."""
    out = root / "rows" / f"{shape}-{comp}-{side}-{time.strftime('%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row))


def fmt_chains(row: dict) -> str:
    """Per-chain λ̂, the between-chain standard error of the mean and the baseline L_m(w*)."""
    xs = row["per_chain"]
    mean = sum(xs) / len(xs)
    se = (sum((x - mean) ** 2 for x in xs) / max(1, len(xs) - 1) / len(xs)) ** 0.5
    return f"[{', '.join(f'{x:.3f}' for x in xs)}] mean {mean:.3f} s.e. {se:.3f}, baseline {row['baseline']:.5f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=["ours", "devinterp", "reference"])
    ap.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "llc-bench-large"))
    ap.add_argument("--shapes", default="14m,70m")
    ap.add_argument("--components", default="all,l0h0")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", default="off", choices=["auto", "on", "off"])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--skip-devinterp", action="store_true")
    ap.add_argument("--memory-gib", type=float, help="our job's memory budget (weights included); default: free memory")
    ap.add_argument("--activation-checkpointing", action="store_true", help="our job recomputes layer activations")
    args = ap.parse_args()
    root = Path(args.root)
    if args.side:
        shape, comp = args.shapes, args.components
        out = (ours(root, shape, comp, args.chains, args.draws, args.threads, args.compile, args.dtype, args.memory_gib,
                    args.activation_checkpointing)
               if args.side == "ours" else
               devinterp(root, shape, comp, args.chains, args.draws, args.threads) if args.side == "devinterp" else
               reference(root, shape, args.threads))
        print(json.dumps(out))
        return
    root.mkdir(parents=True, exist_ok=True)
    print(f"load: {os.getloadavg()}; {args.chains} chains x {args.draws} draws, batch {BATCH} x {SEQ}, "
          f"threads {args.threads}, compile {args.compile}, dtype {args.dtype}, "
          f"activation checkpointing {'on' if args.activation_checkpointing else 'off'}", flush=True)
    me = Path(__file__)
    common = ["--root", str(root), "--chains", str(args.chains), "--draws", str(args.draws), "--threads", str(args.threads)]
    for shape in args.shapes.split(","):
        write_run(root, shape)
        ref = run_json(me, ["--side", "reference", "--shapes", shape, *common], python=Path(sys.executable))
        gib = 2 ** 30
        print(f"pythia-{shape}: {ref['params'] / 1e6:.1f}M params, weights {ref['weights'] / gib:.3f} GiB, "
              f"weights + activations (one fwd+bwd) {ref['peak'] / gib:.3f} GiB", flush=True)
        for comp in args.components.split(","):
            budget = ["--memory-gib", str(args.memory_gib)] if args.memory_gib else []
            budget += ["--activation-checkpointing"] if args.activation_checkpointing else []
            o = run_json(me, ["--side", "ours", "--shapes", shape, "--components", comp, "--compile", args.compile,
                              "--dtype", args.dtype, *budget, *common], python=Path(sys.executable))
            line = (f"  {comp:<5} ours      {o['wall_s'] / o['steps']:7.3f} s/chain-step  peak {o['peak'] / gib:6.3f} GiB "
                    f"(plan estimate {o['estimate'] / gib:.3f}, {o['path']}, micro {o['micro']:.0f}) "
                    f"= {o['peak'] / ref['peak']:.2f}x weights+acts  llc {o['llc_mean']:.2f} +- {o['llc_std']:.2f}")
            print(line, flush=True)
            save_row(root, "ours", shape, comp, o)
            print(f"        plan's activations {o['acts_per_item'] / 2**20:.1f} MiB/item; "
                  f"sampling alone {o['sampling_s'] / o['steps']:.3f} s/chain-step, CPU {o['cpu_s'] / o['steps']:.3f} s/chain-step"
                  f"{', compiled (compile ' + format(o['compile_s'], '.0f') + ' s)' if o['compiled'] else ''}", flush=True)
            if args.skip_devinterp:
                continue
            d = run_json(me, ["--side", "devinterp", "--shapes", shape, "--components", comp, *common])
            print(f"  {comp:<5} devinterp {d['wall_s'] / d['steps']:7.3f} s/chain-step  peak {d['peak'] / gib:6.3f} GiB "
                  f"= {d['peak'] / ref['peak']:.2f}x weights+acts  llc {d['llc_mean']:.2f} +- {d['llc_std']:.2f}   "
                  f"speed ours/devinterp x{(d['wall_s'] / d['steps']) / (o['wall_s'] / o['steps']):.2f}", flush=True)
            save_row(root, "devinterp", shape, comp, d)
            print(f"        λ̂ per chain: ours {fmt_chains(o)}; devinterp {fmt_chains(d)}", flush=True)
            print(f"        devinterp CPU {d['cpu_s'] / d['steps']:.3f} s/chain-step: CPU-time ratio "
                  f"x{d['cpu_s'] / o['cpu_s']:.2f} (less sensitive to a shared machine's load)", flush=True)
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
