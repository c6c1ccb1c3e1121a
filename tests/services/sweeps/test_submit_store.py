"""`llc submit` against real Postgres and moto S3: jobs written once, refusals write nothing."""
from __future__ import annotations


import pytest
from sqlalchemy import func, select

from services.cli import main as llc_main
from services.store.db import session_scope
from services.store.models import Job, Sweep
from services.sweeps.config import load_config
from services.sweeps.submit import SubmitError, submit_sweep
from services.sweeps.validate import SweepRefused
from tests.services.sweeps.tiny_runs import tiny_overrides


def _rows(url: str) -> tuple[int, int]:
    with session_scope(url) as s:
        return int(s.scalar(select(func.count()).select_from(Sweep))), int(s.scalar(select(func.count()).select_from(Job)))


def test_submit_writes_jobs_and_resubmit_reuses_them(storage: str, db: str) -> None:
    cfg = load_config(tiny_overrides(storage))
    first = submit_sweep(cfg, submitted_by="tester")
    assert (first.checkpoints, first.jobs, first.new, first.already_done) == (3, 6, 6, 0)
    with session_scope(db) as s:
        jobs = s.scalars(select(Job).order_by(Job.id)).all()
        specs = [j.spec for j in jobs]
        sweep = s.get(Sweep, first.sweep_id)
        assert sweep is not None and sweep.config["sampler"]["epsilon"] == [1e-4, 3e-4]
    steps = sorted({sp["step"] for sp in specs})
    assert len(steps) == 3 and steps[0] == 0 and steps[-1] == 6
    assert {(sp["step"], sp["sampler"]["epsilon"]) for sp in specs} == {(st, e) for st in steps for e in (1e-4, 3e-4)}
    assert all(sp["checkpoint_uri"].startswith(f"{storage}/demo-run/step") for sp in specs)
    assert all(sp["dataset"] == {"uri": f"{storage}/demo-run/dataset", "max_sequences": 32} for sp in specs)
    assert all(sp["num_threads"] == 1 for sp in specs)
    assert all(sp["compile"] is None for sp in specs)           # the estimator decides
    second = submit_sweep(cfg, submitted_by="tester")
    assert (second.new, second.already_queued) == (0, 6)
    assert _rows(db) == (2, 6)
    # How a job runs (torch.compile) is not what it estimates: same job keys, nothing new.
    compiled = submit_sweep(load_config([*tiny_overrides(storage), "sweep.compile=true"]), submitted_by="tester")
    assert (compiled.new, compiled.already_queued) == (0, 6)
    assert all(sp["activation_checkpointing"] is False for sp in specs)
    # The tiny run's attention-only architecture has no activation checkpointing: refused at submit
    # (every job would fail on it), nothing written.
    with pytest.raises(SweepRefused, match=r"'llc-attn-only' model, whose transformers class has no activation "
                                           r"checkpointing; set sweep\.activation_checkpointing=false\.$"):
        submit_sweep(load_config([*tiny_overrides(storage), "sweep.activation_checkpointing=true"]), submitted_by="tester")
    assert _rows(db) == (3, 6)          # the three sweeps above, nothing more
    with pytest.raises(SweepRefused, match=r"cannot combine with compile=True.*fix the sweep\.\* override"):
        submit_sweep(load_config([*tiny_overrides(storage), "sweep.activation_checkpointing=true", "sweep.compile=true"]),
                     submitted_by="tester")


def test_invalid_override_writes_nothing(storage: str, db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = llc_main(["submit", *tiny_overrides(storage, extra=("sampler.epsilonn=[1e-3]",))])
    err = capsys.readouterr().err
    assert code == 2
    assert "did you mean `sampler.epsilon`" in err and err.count("\n") == 1
    assert _rows(db) == (0, 0)


def test_no_matching_checkpoint_writes_nothing(storage: str, db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = llc_main(["submit", *tiny_overrides(storage, extra=("sweep.checkpoints.start=1000",))])
    err = capsys.readouterr().err
    assert code == 2
    assert f"No checkpoint under {storage}/demo-run matches the selection (steps 1000..last)" in err
    with pytest.raises(SubmitError, match=f"under {storage}/no-such-run"):
        submit_sweep(load_config(tiny_overrides(storage, run="no-such-run")))
    assert _rows(db) == (0, 0)


def test_components_expand_heads_from_the_checkpoint_config(storage: str, db: str) -> None:
    cfg = load_config(tiny_overrides(storage, extra=("sampler.epsilon=[1e-4]", "sweep.components=[all,heads,l1.attn]")))
    out = submit_sweep(cfg, submitted_by="tester")
    # tiny demo run: 2 layers x 2 heads -> all + 4 heads + l1.attn = 6 components x 3 checkpoints
    assert (out.jobs, out.new) == (18, 18)
    with session_scope(db) as s:
        jobs = s.scalars(select(Job).where(Job.status == "pending")).all()
        by_component = {j.hyperparameters["component"]: j.spec["sample_params"] for j in jobs}
    assert by_component == {"all": None, "l0h0": ["l0h0"], "l0h1": ["l0h1"], "l1h0": ["l1h0"], "l1h1": ["l1h1"],
                            "l1.attn": ["l1.attn"]}
    # The component is part of the job key; resubmitting one of them finds it queued.
    again = submit_sweep(load_config(tiny_overrides(storage, extra=("sampler.epsilon=[1e-4]", "sweep.components=[l0h1]"))))
    assert (again.jobs, again.new, again.already_queued) == (3, 0, 3)
    with pytest.raises(Exception, match="sweep.components and sweep.sample_params both"):
        load_config(tiny_overrides(storage, extra=("sweep.components=[all]", "sweep.sample_params=[wte.*]")))


def test_components_the_architecture_lacks_are_refused_at_submit(storage: str, db: str) -> None:
    # The demo model is attention-only: `l1.mlp` would fail every job of the sweep; a head or layer
    # past its 2 x 2 fails the same way. One sentence at submit, nothing written.
    for components, says in (("[all,heads,l1.mlp]", "has no MLP"), ("[l0h2]", "has 2 heads"), ("[l2.attn]", "has 2 layers")):
        cfg = load_config(tiny_overrides(storage, extra=("sampler.epsilon=[1e-4]", f"sweep.components={components}")))
        with pytest.raises(SubmitError, match=f"sweep.components: .*{says}.*nothing was submitted"):
            submit_sweep(cfg, submitted_by="tester")
    assert _rows(db) == (0, 0)
