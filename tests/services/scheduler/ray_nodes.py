"""Real Ray nodes on this machine, each a `ray start --block` process this test owns.

`--block` keeps the node's processes under one process we started (in its own session), so a
node is killed or stopped by that PID / session id alone — never `ray stop`, which would take
every Ray on the machine with it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port


def session_members(sid: int) -> list[int]:
    """PIDs whose session id is `sid` (the processes a node started, workers included)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:   # after "pid (comm)": state ppid pgrp session ...
            found.append(int(entry.name))
    return found


@dataclass
class RayNode:
    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, *, env: dict[str, str], log: Path, head_port: int | None = None, address: str | None = None,
              num_cpus: int, num_gpus: int = 0) -> RayNode:
        ports = {flag: str(free_port()) for flag in (
            "--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")}
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats",
               "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
               *[f"{k}={v}" for k, v in ports.items()]]
        if head_port is not None:
            cmd += ["--head", f"--port={head_port}", "--include-dashboard=false",
                    f"--ray-client-server-port={free_port()}", f"--temp-dir={env['RAY_TMPDIR']}"]
        else:
            cmd += [f"--address={address}"]
        out = open(log, "wb")
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return cls(proc=proc, log=log)

    def kill(self) -> None:
        """Lose the node abruptly: SIGKILL to every process of its session."""
        self._signal_all(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Graceful stop (SIGTERM to `ray start --block`, which stops its node), then SIGKILL leftovers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 30
        while session_members(self.proc.pid) and time.monotonic() < deadline:
            self._signal_all(signal.SIGKILL)
            time.sleep(0.2)
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)

    def _signal_all(self, sig: int) -> None:
        for pid in session_members(self.proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
