"""`llc nightly` against real Postgres and moto S3: idempotent firings, new checkpoints only, cron times."""
from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from services.cli import main as llc_main
from services.nightly import SUBMITTED_BY, load_schedule, next_fire_time, run_nightly_once
from services.store.db import session_scope
from services.store.models import Job, Sweep
from services.sweeps.config import ConfigError, config_dir
from tests.services.sweeps.tiny_runs import tiny_run
from workers.objectstore import open_store

SAMPLER = ["sampler.epsilon=[1e-4,3e-4]", "sampler.num_chains=[2]", "sampler.num_draws=[4]", "sampler.num_burnin=[0]",
           "sampler.batch_size=[8]"]


@pytest.fixture()
def conf(tmp_path: Path) -> Path:
    """The project's conf/ plus two watched sweeps: one over the tiny run, one over a run not written yet."""
    root = tmp_path / "conf"
    shutil.copytree(config_dir(), root)
    body = ("# @package _global_\ndefaults:\n  - override /sampler: tiny\nsweep:\n  name: {name}\n  run: {run}\n"
            "  checkpoints: {{every: 1}}\n  dataset: {{uri: demo-run/dataset, max_sequences: 32}}\n  seeds: [0]\n")
    (root / "sweep" / "tiny.yaml").write_text(body.format(name="nightly-tiny", run="demo-run"))
    (root / "sweep" / "pending.yaml").write_text(body.format(name="nightly-pending", run="not-yet-run"))
    (root / "schedule" / "typo.yaml").write_text("cronn: '0 2 * * *'\nsweeps: [tiny]\n")
    return root


def _job_count(url: str) -> int:
    with session_scope(url) as s:
        return int(s.scalar(select(func.count()).select_from(Job)))


def test_nightly_submits_only_new_checkpoints(s3_endpoint: str, db: str, conf: Path) -> None:
    storage, run_uri = tiny_run(s3_endpoint)
    overrides = ["storage=s3", f"storage.uri={storage}", "schedule.sweeps=[tiny,pending]", *SAMPLER]
    lines: list[str] = []
    now = datetime(2026, 1, 2, 2, 0, tzinfo=timezone.utc)

    first = run_nightly_once(overrides, now=now, report=lines.append, conf_dir=conf)
    assert [(o.name, o.checkpoints, o.jobs, o.new) for o in first] == [("nightly-tiny", 3, 6, 6)]
    assert any("skipped sweep config pending" in line and "not-yet-run" in line for line in lines)
    with session_scope(db) as s:
        sweep = s.get(Sweep, first[0].sweep_id)
        assert sweep is not None and (sweep.submitted_by, sweep.submitter_kind) == (SUBMITTED_BY, "schedule")
    assert _job_count(db) == 6

    second = run_nightly_once(overrides, now=now, conf_dir=conf)
    assert [(o.new, o.already_done + o.already_queued) for o in second] == [(0, 6)]
    assert _job_count(db) == 6

    run = open_store(run_uri)   # training wrote a new checkpoint: step 9, a copy of step 6
    for obj in run.list("step-6/"):
        run.put_bytes("step-9/" + obj.key.removeprefix("step-6/"), run.get_bytes(obj.key))
    third = run_nightly_once(overrides, conf_dir=conf)
    assert [(o.checkpoints, o.jobs, o.new) for o in third] == [(4, 8, 2)]
    with session_scope(db) as s:
        newest = s.scalars(select(Job).order_by(Job.id.desc()).limit(2)).all()
        assert {j.spec["step"] for j in newest} == {9}
    assert _job_count(db) == 8


@pytest.mark.parametrize(("cron", "after", "expected"), [
    ("0 2 * * *", datetime(2026, 1, 1, 1, 59, tzinfo=timezone.utc), datetime(2026, 1, 1, 2, 0, tzinfo=timezone.utc)),
    ("0 2 * * *", datetime(2026, 1, 1, 2, 0, tzinfo=timezone.utc), datetime(2026, 1, 2, 2, 0, tzinfo=timezone.utc)),
    ("*/15 * * * *", datetime(2026, 3, 4, 10, 7, tzinfo=timezone.utc), datetime(2026, 3, 4, 10, 15, tzinfo=timezone.utc)),
    ("30 3 * * 1", datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc), datetime(2026, 11, 30, 3, 30, tzinfo=timezone.utc)),
    ("0 2 * * *", datetime(2026, 7, 1, 3, 0, tzinfo=ZoneInfo("Europe/Berlin")),
     datetime(2026, 7, 2, 2, 0, tzinfo=ZoneInfo("Europe/Berlin"))),
])
def test_next_fire_time(cron: str, after: datetime, expected: datetime) -> None:
    got = next_fire_time(cron, after)
    assert got == expected and got.utcoffset() == expected.utcoffset()


def test_unknown_schedule_key_is_refused(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert llc_main(["nightly", "schedule.crn=0 3 * * *", "--once"]) == 2
    err = capsys.readouterr().err
    assert err == "llc: error: Unknown config key `schedule.crn`; did you mean `schedule.cron`?\n"
    with pytest.raises(ConfigError, match=r"^Unknown config key `schedule.cronn`; did you mean `schedule.cron`\?$"):
        load_schedule(["schedule=typo"], conf_dir=conf)
    with pytest.raises(ConfigError, match="schedule.cron must be a 5-field cron expression"):
        load_schedule(["schedule.cron=every night"], conf_dir=conf)


def test_nightly_once_run_submits_and_runs_the_new_jobs(s3_endpoint: str, db: str, ray_cluster: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # `llc nightly --once --run`: the watched sweep's jobs are submitted, then a scheduler in the
    # same process runs them on the (real, local) Ray cluster until they are done.
    from services.store.models import Result

    storage, _ = tiny_run(s3_endpoint)
    args = ["nightly", "--once", "--run", "--no-tracking", "storage=s3", f"storage.uri={storage}",
            "schedule.sweeps=[small]", "sweep.dataset.max_sequences=32", *SAMPLER]
    assert llc_main(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "nightly: sweep 1: 4 succeeded, 0 diverged, 0 failed" in out    # steps 0 and 6 (the last) x 2 eps
    with session_scope(db) as s:
        assert [j.status for j in s.scalars(select(Job))] == ["succeeded"] * 4
        assert int(s.scalar(select(func.count()).select_from(Result))) == 4
    # The next firing finds nothing new and runs nothing.
    assert llc_main(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "0 new, 4 already done" in out and " succeeded, " not in out     # no scheduler report
    with session_scope(db) as s:
        assert int(s.scalar(select(func.count()).select_from(Result))) == 4
