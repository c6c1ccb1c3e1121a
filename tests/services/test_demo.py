"""`llc demo --small`: the README's main command, end to end on the embedded default.

Runs the real command in a subprocess (its own LLC_HOME, its own local Ray), then checks
what a user would: the stages table, the plot, the rows in the SQLite store, and that a
second run reuses the checkpoints and the finished jobs.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image


def _llc(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LLC_DATABASE_URL", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "AWS_ENDPOINT_URL_S3", "LLC_STORAGE_URI")}
    # Ray's socket paths must stay under 107 bytes: a short private RAY_TMPDIR.
    env.update(LLC_HOME=str(home), RAY_TMPDIR=tempfile.mkdtemp(prefix="r", dir="/tmp"), COLUMNS="160", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-c", "import sys; from services.cli import main; sys.exit(main())", *args],
                          env=env, capture_output=True, text=True, timeout=900)


def _flat(text: str) -> str:
    """Rich wraps long lines at the terminal width; compare on single-spaced text."""
    return " ".join(text.split())


def test_demo_small_runs_end_to_end_and_reuses_its_work(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = _llc(["demo", "--small"], home)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = _flat(first.stdout)
    assert "Developmental stages" in out
    assert "6 new, 0 already done" in out
    plot = home / "aggregates" / "sweep-1" / "overview.png"
    assert f"Overview plot: {plot}" in first.stdout.replace("\n", "")
    with Image.open(plot) as img:
        img.verify()
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.size[0] > 400 and img.size[1] > 300

    heads = home / "aggregates" / "sweep-1" / "heads.png"
    assert f"Per-head heatmap: {heads}" in first.stdout.replace("\n", "") and heads.exists()
    assert (home / "aggregates" / "sweep-1" / "stages-heads.png").exists()
    assert "Per-head scores" in out and "type (prob.)" in out and "heads that moved" in out

    db = sqlite3.connect(home / "llc.db")
    statuses = dict(db.execute("select status, count(*) from jobs group by status").fetchall())
    llcs = [r[0] for r in db.execute("select llc_mean from results").fetchall()]
    db.close()
    assert statuses == {"succeeded": 6}
    assert len(llcs) == 6 and all(v is not None and abs(v) < 1e4 for v in llcs)
    assert (home / "mlflow.db").exists()

    second = _llc(["demo", "--small"], home)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "reused" in second.stdout
    assert "0 new, 6 already done" in _flat(second.stdout)


def test_demo_refuses_a_bad_override_before_any_work(tmp_path: Path) -> None:
    home = tmp_path / "home"
    res = _llc(["demo", "--small", "sampler.epsilonn=[1e-3]"], home)
    assert res.returncode == 2
    assert "sampler.epsilon" in res.stderr and "Traceback" not in res.stderr
    assert not (home / "objects").exists() and not (home / "llc.db").exists()
