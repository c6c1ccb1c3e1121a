"""Infrastructure faults are waited out: S3 away for a while, a cache disk full or unusable.
Jobs end exactly once and no attempt is charged; a cached job needs no S3 at all."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from services.store.db import session_scope
from services.store.models import Job, Result
from services.sweeps.config import load_config
from services.sweeps.expand import spec_from_dict
from services.sweeps.submit import plan_sweep, submit_sweep
from tests.faults.proxy import FlakyProxy
from tests.services.sweeps.tiny_runs import tiny_overrides
from workers import datasets as datasets_mod
from workers import job as job_mod
from workers.cache import LocalCache
from workers.objectstore import ObjectInfo, open_store

LLC = [sys.executable, "-c", "import sys; from services.cli import main; sys.exit(main())"]


@pytest.fixture()
def proxy(s3_endpoint: str) -> Iterator[FlakyProxy]:
    url = urllib.parse.urlparse(s3_endpoint)
    p = FlakyProxy(url.hostname or "127.0.0.1", int(url.port or 80))
    yield p
    p.close()


def _one_spec(storage: str, cache_dir: Path) -> job_mod.JobSpec:
    plan = plan_sweep(load_config(tiny_overrides(storage, extra=("sampler.epsilon=[1e-4]", "sweep.checkpoints.steps=[6]"))))
    return dataclasses.replace(spec_from_dict(plan.jobs[0].spec), cache_dir=str(cache_dir))


def _forget_memos() -> None:
    job_mod._MODEL_MEMO.clear()
    datasets_mod._MEMO.clear()


def test_a_cached_job_runs_without_s3_and_an_uncached_one_is_an_infra_fault(
        storage: str, proxy: FlakyProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _one_spec(storage, tmp_path / "cache")
    _forget_memos()
    first = job_mod.run_job(spec)                   # S3 up: fills the cache
    _forget_memos()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    proxy.down()
    again = job_mod.run_job(spec)                   # S3 away: checkpoint and dataset come from the cache
    assert proxy.dropped == 0, "a cached job still talked to S3"
    assert again.llc_mean == pytest.approx(first.llc_mean)
    _forget_memos()
    with pytest.raises(job_mod.JobInfraError, match="could not be reached|dropped the connection|kept failing"):
        job_mod.run_job(dataclasses.replace(spec, cache_dir=str(tmp_path / "empty-cache")))
    assert proxy.dropped > 0


@pytest.mark.slow
def test_s3_away_mid_sweep_is_waited_out_without_using_attempts(storage: str, db: str, proxy: FlakyProxy,
                                                               tmp_path: Path) -> None:
    sub = submit_sweep(load_config(tiny_overrides(storage)), submitted_by="tester")
    proxy.down()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}   # its own local Ray, seeing the proxy
    env.update(LLC_DATABASE_URL=db, AWS_ENDPOINT_URL_S3=proxy.url, AWS_MAX_ATTEMPTS="1",
               LLC_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen([*LLC, "scheduler", "--no-tracking", "--until-idle", "--sweep", str(sub.sweep_id),
                             "--max-in-flight", "2", "cluster.num_cpus=2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any("retrying in" in line for line in err_lines):
            assert proc.poll() is None, "".join(err_lines)
            if time.monotonic() > deadline:
                pytest.fail("no job met the S3 outage: " + "".join(err_lines[-20:]))
            time.sleep(0.2)
        proxy.up()                                  # S3 is back with everything it held
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    assert proc.returncode == 0, "".join(err_lines[-30:])
    assert "failed 0" in out and "infrastructure)" in out and "(+0 infrastructure)" not in out, out
    with session_scope(db) as s:
        jobs = s.scalars(select(Job)).all()
        assert {j.status for j in jobs} == {"succeeded"} and len(jobs) == 6
        assert {j.attempts for j in jobs} == {1}                      # no attempt charged for the outage
        assert s.scalar(select(func.count()).select_from(Result)) == 6
        assert s.scalar(select(func.count(func.distinct(Result.job_id)))) == 6


def _source(tmp_path: Path, size: int) -> tuple[str, list[ObjectInfo]]:
    src = open_store((tmp_path / "objects").as_uri())
    src.put_bytes("ckpt/blob.bin", os.urandom(size))
    return src.child("ckpt").uri, src.child("ckpt").list()


def test_an_unusable_cache_directory_falls_back_to_a_temporary_one(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    uri, files = _source(tmp_path, 1000)
    cache = LocalCache(blocker / "cache")
    assert cache.fallback_reason is not None and "unusable" in caplog.text
    assert not str(cache.root).startswith(str(blocker))
    local = cache.fetch(uri, "fp-1", files)
    assert (local / "blob.bin").stat().st_size == 1000


@pytest.fixture()
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB filesystem (tmpfs), so writes fail with ENOSPC as on a full disk."""
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN) here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_cache_disk_evicts_then_falls_back(tiny_disk: Path, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    cache = LocalCache(tiny_disk / "cache", evict_grace_s=0.0)
    uri, files = _source(tmp_path, 150_000)
    cache.fetch(uri, "fp-1", files)                       # fits
    uri2, files2 = _source(tmp_path / "b", 150_000)
    second = cache.fetch(uri2, "fp-2", files2)            # disk full → evict the first entry → fits
    assert cache.fallback_reason is None and "is full" in caplog.text
    assert not cache.entry_dir(uri, "fp-1").exists() and second.is_relative_to(tiny_disk)
    uri3, files3 = _source(tmp_path / "c", 400_000)       # larger than the disk: temporary directory
    third = cache.fetch(uri3, "fp-3", files3)
    assert cache.fallback_reason is not None and not third.is_relative_to(tiny_disk)
    assert (third / "blob.bin").stat().st_size == 400_000
