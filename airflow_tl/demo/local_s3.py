"""A local S3 endpoint (moto's server) on 127.0.0.1, reached over HTTP like any S3-compatible store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

# moto accepts any credentials; real ones must never reach a local endpoint.
LOCAL_CREDENTIALS = {"login": "airflow-tl-local", "password": "airflow-tl-local"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalS3:
    endpoint_url: str
    process: subprocess.Popen

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def connection_uri(self) -> str:
        """Value for ``AIRFLOW_CONN_AWS_DEFAULT`` pointing the ``aws_default`` connection here."""
        return connection_json(self.endpoint_url)


def connection_json(endpoint_url: str, region: str = "us-east-1") -> str:
    return json.dumps(
        {"conn_type": "aws", **LOCAL_CREDENTIALS, "extra": {"endpoint_url": endpoint_url, "region_name": region}}
    )


def start_local_s3(port: int | None = None, timeout: float = 30.0) -> LocalS3:
    """Start ``moto_server`` in its own process on 127.0.0.1 and wait until it answers."""
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MOTO_PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with code {process.returncode} before answering on {endpoint}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return LocalS3(endpoint, process)
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"moto server did not answer on {endpoint} within {timeout:.0f}s")
