"""Start and stop moto's AWS emulator (`moto.server`, from `moto[server]`, with the GetAccountSettings it lacks:
localdev/moto_main.py) on a loopback port, in its own process.

`chalice deploy` and the stage tools run against it as against AWS once `environment()` is applied: every botocore
client honours AWS_ENDPOINT_URL, and the credentials are dummies, so nothing can reach a real account.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3

from localdev import lifecycle
from localdev.dynamodb_local import ServerProcess, free_port, stop_process

REGION = "us-east-1"
MOTO_MAIN = Path(__file__).with_name("moto_main.py")
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


class MotoServer(ServerProcess):
    """One `moto.server` process; its request log goes to a file (a pipe nobody reads would fill and stall it)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_dir = tempfile.TemporaryDirectory(prefix="moto-server-")
        self.log_path = Path(self._log_dir.name) / "moto.log"

    def _launch(self) -> None:
        # The script by its path (it imports only moto): it runs from any folder, and reads no project file.
        command = [sys.executable, str(MOTO_MAIN), "-H", "127.0.0.1", "-p", str(self.port)]
        with self.log_path.open("wb") as log:
            self._process = lifecycle.spawn(command, "moto", stdout=log, stderr=subprocess.STDOUT)

    def _wait_until_ready(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._process.poll() is not None:
                raise RuntimeError(f"moto.server exited with code {self._process.returncode}: {self._log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"moto.server did not answer on {self.endpoint} within {timeout:.0f} s")
            time.sleep(0.2)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop the emulator and wait for it to exit."""
        if self._process is not None:
            stop_process(self._process)
            self._process = None
        self._log_dir.cleanup()

    def environment(self) -> dict[str, str]:
        """Environment variables that send every AWS SDK and CLI call to this emulator, with dummy credentials."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }

    def client(self, service: str) -> Any:
        """A boto3 client of this emulator."""
        return boto3.session.Session(region_name=REGION, **CREDENTIALS).client(service, endpoint_url=self.endpoint)
