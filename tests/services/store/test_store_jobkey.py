from __future__ import annotations

import math
import subprocess
import sys

import pytest

from services.store.jobkey import canonical_json, job_key, setting_key

ARGS = dict(
    checkpoint_uri="s3://bucket/runs/demo/step-1000",
    fingerprint="etag-3f2a",
    dataset={"uri": "s3://bucket/data/induction", "n": 4096, "seq_len": 64},
    sampler={"epsilon": 1e-4, "gamma": 100.0, "nbeta": None, "num_chains": 4, "num_draws": 200},
    seed=7,
    estimator_version="1.0",
)
# Computed once (commit cd5eb8a); a change here silently orphans every stored result.
EXPECTED = "f5978dbd4c616c5ac99cbc2f29605eb1f259dc02b563021a0753c72e2ab65c18"


def test_job_key_matches_the_recorded_digest() -> None:
    assert job_key(**ARGS) == EXPECTED


def test_job_key_is_the_same_in_a_fresh_interpreter() -> None:
    code = "from services.store.jobkey import job_key; import sys, json; print(job_key(**json.loads(sys.argv[1])))"
    import json

    out = subprocess.run([sys.executable, "-c", code, json.dumps(ARGS)], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == EXPECTED


def test_job_key_ignores_order_and_int_float_spelling() -> None:
    reordered = dict(ARGS, sampler={"num_draws": 200, "num_chains": 4.0, "nbeta": None, "gamma": 100, "epsilon": 0.0001},
                     dataset={"seq_len": 64, "n": 4096, "uri": "s3://bucket/data/induction"})
    assert job_key(**reordered) == EXPECTED


@pytest.mark.parametrize("change", [
    {"checkpoint_uri": "s3://bucket/runs/demo/step-2000"},
    {"fingerprint": "etag-0000"},
    {"dataset": dict(ARGS["dataset"], n=2048)},
    {"sampler": dict(ARGS["sampler"], epsilon=2e-4)},
    {"seed": 8},
    {"estimator_version": "1.1"},
])
def test_every_component_changes_the_key(change: dict) -> None:
    key = job_key(**dict(ARGS, **change))
    assert key != EXPECTED and len(key) == 64 and int(key, 16) >= 0


def test_non_finite_and_non_json_inputs_are_refused_with_the_path() -> None:
    with pytest.raises(ValueError, match=r"sampler.epsilon"):
        job_key(**dict(ARGS, sampler={"epsilon": math.nan}))
    with pytest.raises(TypeError, match=r"dataset.path"):
        job_key(**dict(ARGS, dataset={"path": object()}))
    with pytest.raises(ValueError, match="fingerprint"):
        job_key(**dict(ARGS, fingerprint=""))


def test_canonical_json_and_setting_key() -> None:
    assert canonical_json({"b": [1.0, (2, 3.5)], "a": True}) == '{"a":true,"b":[1,[2,3.5]]}'
    assert setting_key({"lr": 1e-4, "gamma": 100}) == setting_key({"gamma": 100.0, "lr": 0.0001})
    assert setting_key({"lr": 1e-4}) != setting_key({"lr": 1e-3})


def test_job_keys_from_fragments_equal_job_key() -> None:
    from services.store.jobkey import JobKeys

    dataset = {"uri": "s3://b/run/dataset", "max_sequences": 64}
    keys = JobKeys(dataset=dataset, estimator_version="1.1.0")
    for sampler in ({"epsilon": 1e-4, "gamma": 100.0, "nbeta": None, "sample_params": ["h.*"]}, {"epsilon": 3.0}):
        for seed in (0, 7):
            assert keys.key(checkpoint_uri="s3://b/run/step-10", fingerprint="fp", sampler=sampler, seed=seed) == job_key(
                checkpoint_uri="s3://b/run/step-10", fingerprint="fp", dataset=dataset, sampler=sampler, seed=seed,
                estimator_version="1.1.0")
