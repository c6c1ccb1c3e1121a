"""The devinterp 2.0.1 side of a benchmark: its own venv, run in a subprocess.

devinterp pins versions the service does not use, so it lives in a venv of its own that sees
the system's torch (--system-site-packages; torch stays 2.13.0) with devinterp installed
without dependencies plus the few it needs that the system lacks. The venv is
$DEVINTERP_VENV, else /work/venv-devinterp when present, else .bench-venv in the repo.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_EXTRA = ("datasets", "xarray", "zarr>=3")


def venv_path() -> Path:
    if os.environ.get("DEVINTERP_VENV"):
        return Path(os.environ["DEVINTERP_VENV"])
    shared = Path("/work/venv-devinterp")
    return shared if shared.exists() else REPO / ".bench-venv"


def ensure_python() -> Path:
    """The devinterp venv's python, created on first use."""
    venv = venv_path()
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"creating {venv} (system torch, devinterp==2.0.1 --no-deps, {', '.join(_EXTRA)}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "devinterp==2.0.1"], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *_EXTRA], check=True)
    return py


def run_json(script: Path, args: list[str], *, python: Path | None = None) -> dict:
    """Run `script args` (under devinterp's python unless `python` is given); its last stdout line is JSON."""
    py = python or ensure_python()
    proc = subprocess.run([str(py), str(script), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
