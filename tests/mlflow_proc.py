"""An `mlflow server` subprocess (Postgres backend, S3 artifacts): the session-wide one of
conftest.py, and private ones a fault test may kill and restart on the same port and stores."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class MlflowProcess:
    def __init__(self, *, backend: str, artifacts: str, port: int, log_dir: Path, s3_endpoint: str) -> None:
        self.backend, self.artifacts, self.port = backend, artifacts, port
        self.log_dir, self.s3_endpoint = log_dir, s3_endpoint
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 240.0) -> None:
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true",
                   MLFLOW_S3_ENDPOINT_URL=self.s3_endpoint)
        log = open(self.log_dir / f"mlflow-{self.port}.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", self.backend, "--artifacts-destination", self.artifacts],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited early; see {log.name}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mlflow server did not become healthy in {timeout:.0f} s; see {log.name}")
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the server's whole process group (it forks gunicorn/uvicorn workers)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=30)
