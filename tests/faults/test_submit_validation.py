"""Submit refuses sweeps whose jobs could never run, in one sentence, before anything is written."""
from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select

from services.cli import main as llc_main
from services.store.db import session_scope
from services.store.models import Job, Sweep
from services.sweeps.config import load_config
from services.sweeps.submit import submit_sweep
from services.sweeps.validate import SweepRefused
from tests.services.sweeps.tiny_runs import tiny_overrides, tiny_run
from workers.datasets import write_token_dataset


def _rows(url: str) -> tuple[int, int]:
    with session_scope(url) as s:
        return int(s.scalar(select(func.count()).select_from(Sweep))), int(s.scalar(select(func.count()).select_from(Job)))


@pytest.mark.parametrize(("extra", "message"), [
    (("sweep.dataset.uri=demo-run/no-dataset",), r"There is no token dataset at s3://.*/demo-run/no-dataset"),
    (("sweep.dataset.max_sequences=0",), r"sweep.dataset.max_sequences=0 leaves no data; set it to a positive"),
    (("sampler.batch_size=[8,33]",), r"sampler.batch_size=33 is larger than the 32 sequences the sweep uses"),
    (("sampler.baseline=init",), r"SGLDConfig.baseline=.init. is invalid.*; fix the sampler.\* override"),
])
def test_impossible_sweeps_are_refused_and_write_nothing(storage: str, db: str, extra: tuple[str, ...],
                                                         message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert llc_main(["submit", *tiny_overrides(storage, extra=extra)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(SweepRefused, match=message):
        submit_sweep(load_config(tiny_overrides(storage, extra=extra)))
    assert _rows(db) == (0, 0)


def test_a_dataset_the_model_cannot_embed_is_refused(storage: str, db: str) -> None:
    rng = np.random.default_rng(0)
    write_token_dataset(f"{storage}/wide-vocab", rng.integers(0, 1000, size=(40, 16)), vocab_size=1000)
    write_token_dataset(f"{storage}/long-seqs", rng.integers(0, 32, size=(40, 4096)), vocab_size=32)
    with pytest.raises(SweepRefused, match=r"has vocab_size 1000, larger than the 32 of checkpoint s3://"):
        submit_sweep(load_config(tiny_overrides(storage, extra=("sweep.dataset.uri=wide-vocab",))))
    with pytest.raises(SweepRefused, match=r"has seq_len 4096, longer than the \d+ positions of checkpoint"):
        submit_sweep(load_config(tiny_overrides(storage, extra=("sweep.dataset.uri=long-seqs",))))
    assert _rows(db) == (0, 0)


def test_the_dataset_follows_the_run(s3_endpoint: str, db: str) -> None:
    """Only `sweep.run` overridden (train-demo --out <storage>/<name>, then submit): the dataset
    written next to that run is the one used."""
    storage, _ = tiny_run(s3_endpoint, name="my-run")
    cfg = load_config(["sweep=small", "storage=s3", f"storage.uri={storage}", "sweep.run=my-run",
                       "sampler.batch_size=[8]"])
    out = submit_sweep(cfg, submitted_by="tester")
    with session_scope(db) as s:
        specs = [j.spec for j in s.scalars(select(Job))]
    assert out.new == len(specs) > 0
    assert {sp["dataset"]["uri"] for sp in specs} == {f"{storage}/my-run/dataset"}
    assert all(sp["dataset_fingerprint"] for sp in specs)
