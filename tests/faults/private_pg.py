"""A private Postgres instance (initdb + pg_ctl on a free port) that a test may stop and start
mid-sweep without touching the shared server."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import free_port


class PrivatePostgres:
    def __init__(self) -> None:
        # Under /tmp itself: the postgres user must be able to reach it (pytest's tmp dirs are 0700 root).
        self.base = Path(tempfile.mkdtemp(prefix="llc-pg-", dir="/tmp"))
        self.data = self.base / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
        self._pg(["initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])

    def _pg(self, cmd: list[str]) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{cmd[0]} failed: {done.stderr or done.stdout}")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        self._pg(["pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.base / "log"), "-w", "start"])

    def stop(self) -> None:
        """An immediate stop: as a crash or a network cut looks to clients."""
        self._pg(["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"])

    def remove(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass
        shutil.rmtree(self.base, ignore_errors=True)
