"""The job body: a JobSpec of URIs in, a finite JobResult out; bad inputs are one sentence."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.workers.storage_helpers import tiny_attn_only, upload_model
from workers.checkpoints import discover_checkpoints
from workers.datasets import induction_sequences, write_token_dataset
from workers.job import DatasetSpec, JobInputError, JobResult, JobSpec, SamplerSpec, run_job
from workers.objectstore import open_store

SAMPLER = SamplerSpec(epsilon=1e-3, gamma=100.0, nbeta=None, num_chains=2, num_draws=12, num_burnin=4, batch_size=16)


@pytest.fixture()
def spec(s3_bucket: str, tmp_path: Path) -> JobSpec:
    run = f"s3://{s3_bucket}/runs/tiny"
    upload_model(tiny_attn_only(vocab_size=16, n_positions=12), f"{run}/step-3", tmp_path)
    data = induction_sequences(num_sequences=64, seq_len=12, vocab_size=16, seed=0).tokens
    write_token_dataset(f"{run}/dataset", data, vocab_size=16)
    (ref,) = discover_checkpoints(run)
    return JobSpec(checkpoint_uri=ref.uri, fingerprint=ref.fingerprint, step=ref.step,
                   dataset=DatasetSpec(uri=f"{run}/dataset"), sampler=SAMPLER, seed=0, device="auto",
                   num_threads=1, cache_dir=str(tmp_path / "cache"))


def test_run_job_returns_a_finite_result(spec: JobSpec) -> None:
    calls: list[tuple[int, int]] = []
    res = run_job(spec, progress=lambda done, total: calls.append((done, total)))
    assert math.isfinite(res.llc_mean) and math.isfinite(res.init_loss) and not res.diverged
    assert res.n == 64 and res.nbeta == pytest.approx(64 / math.log(64))
    assert (res.num_chains, res.num_draws) == (2, 12) and len(res.llc_per_chain) == 2
    assert np.asarray(res.loss_trace).shape == (2, 12) and np.isfinite(res.loss_trace).all()
    assert res.device == "cpu" and res.host and res.estimator_version and res.wall_time_s > 0
    assert all(v is None or isinstance(v, (bool, float)) for v in res.diagnostics.values())
    assert calls and calls[-1][0] == calls[-1][1]
    # The same job again: same seed, same numbers (the model and dataset come from the per-process memo).
    again = run_job(spec)
    assert again.llc_per_chain == res.llc_per_chain

    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    back = JobResult.from_dict(d)
    assert back.llc_mean == res.llc_mean and back.loss_trace == res.loss_trace and back.diagnostics == res.diagnostics


def test_a_compiled_job_follows_the_eager_one(spec: JobSpec) -> None:
    eager = run_job(spec)
    compiled = run_job(replace(spec, compile=True))
    assert compiled.diagnostics["compiled"] is True and eager.diagnostics["compiled"] is False
    assert compiled.diagnostics["compile_time_s"] > 0
    np.testing.assert_allclose(compiled.llc_per_chain, eager.llc_per_chain, rtol=1e-3)
    np.testing.assert_allclose(compiled.loss_trace, eager.loss_trace, rtol=1e-4)


def test_a_diverged_estimate_is_a_result_not_an_error(spec: JobSpec) -> None:
    wild = replace(spec, sampler=replace(SAMPLER, epsilon=10.0, gamma=0.0, nbeta=1e6))
    res = run_job(wild)
    assert res.diverged
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))   # NaNs become null: strict JSON
    assert d["diverged"] is True


def test_to_dict_is_strict_json_and_round_trips_nan() -> None:
    res = JobResult(llc_mean=math.nan, llc_std=math.inf, llc_per_chain=[1.0, math.nan], init_loss=1.0,
                    baseline_loss=1.0, nbeta=2.0, n=3, num_chains=2, num_draws=1, diverged=True,
                    diagnostics={"r_hat": math.nan, "diverged": True, "ess": 3.0}, loss_trace=[[1.0], [math.nan]],
                    wall_time_s=0.5, device="cpu", host="h", estimator_version="v")
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["llc_mean"] is None and d["llc_per_chain"] == [1.0, None] and d["diagnostics"]["r_hat"] is None
    back = JobResult.from_dict(d)
    assert math.isnan(back.llc_mean) and math.isnan(back.llc_per_chain[1]) and back.diagnostics["diverged"] is True


def test_bad_inputs_are_one_clear_sentence(spec: JobSpec, s3_bucket: str) -> None:
    missing = replace(spec, checkpoint_uri=f"s3://{s3_bucket}/runs/tiny/step-999")
    with pytest.raises(JobInputError, match=rf"no checkpoint at s3://{s3_bucket}/runs/tiny/step-999"):
        run_job(missing)
    with pytest.raises(JobInputError, match="changed since the sweep was submitted"):
        run_job(replace(spec, fingerprint="0" * 64))
    with pytest.raises(JobInputError, match=r"no token dataset at .*/nodata"):
        run_job(replace(spec, dataset=DatasetSpec(uri=f"s3://{s3_bucket}/nodata")))
    big = f"s3://{s3_bucket}/runs/tiny/bigvocab"
    write_token_dataset(big, np.arange(24).reshape(2, 12) * 4, vocab_size=100)
    with pytest.raises(JobInputError, match=rf"{big} has vocab_size 100, larger than the 16 of {spec.checkpoint_uri}"):
        run_job(replace(spec, dataset=DatasetSpec(uri=big)))
    with pytest.raises(JobInputError, match="batch_size=16 is larger than the 8 sequences"):
        run_job(replace(spec, dataset=replace(spec.dataset, max_sequences=8)))
    with pytest.raises(JobInputError, match="epsilon"):
        run_job(replace(spec, sampler=replace(SAMPLER, epsilon=-1.0)))
    # Nothing stored was touched by any of the refusals.
    assert {o.key for o in open_store(spec.checkpoint_uri).list()} == {"config.json", "model.safetensors"}


def test_corrupt_checkpoint_is_a_job_input_error(spec: JobSpec) -> None:
    store = open_store(spec.checkpoint_uri)
    store.put_bytes("model.safetensors", b"garbage" * 10)
    (ref,) = discover_checkpoints(spec.checkpoint_uri.rsplit("/", 1)[0])
    with pytest.raises(JobInputError, match=rf"checkpoint {spec.checkpoint_uri} is not a valid safetensors file"):
        run_job(replace(spec, fingerprint=ref.fingerprint))


def test_an_epsilon_auto_job_carries_its_calibration_and_loss_wstar(spec: JobSpec) -> None:
    from dataclasses import replace

    auto = replace(spec, sampler=replace(SAMPLER, epsilon="auto", num_draws=40))
    res = run_job(auto)
    cal = res.extra["calibration"]
    assert cal["carried"] is False and cal["points"] and cal["epsilon"] == res.diagnostics["epsilon"]
    assert res.loss_wstar is not None and math.isfinite(res.loss_wstar)
    back = JobResult.from_dict(json.loads(json.dumps(res.to_dict(), allow_nan=False)))
    assert back.extra["calibration"]["epsilon"] == cal["epsilon"] and back.loss_wstar == res.loss_wstar
    hinted = run_job(replace(auto, epsilon_hint=cal["epsilon"]))            # the sweep's carried pick
    assert hinted.extra["calibration"]["carried"] in (True, False)          # kept, or recalibrated when its traces fail
    assert hinted.diagnostics["epsilon_carried"] == hinted.extra["calibration"]["carried"]
