"""A real Airflow API server for the dashboard's tests: the test session's AIRFLOW_HOME and S3, users
``admin`` (role admin) and ``viewer`` (role viewer), on 127.0.0.1, in its own process group, stopped with it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from airflow_tl.demo.airflow_ui import loopback_env, stop_group
from airflow_tl.demo.local_s3 import free_port

USERS = {"admin": "admin", "viewer": "viewer"}


@dataclass
class AirflowServer:
    url: str
    home: Path
    process: subprocess.Popen
    log: Path
    registry_uri: str
    tokens: dict[str, str] = field(default_factory=dict)

    def token(self, user: str) -> str:
        if user not in self.tokens:
            passwords = json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())
            answer = httpx.post(f"{self.url}/auth/token", json={"username": user, "password": passwords[user]})
            answer.raise_for_status()
            self.tokens[user] = answer.json()["access_token"]
        return self.tokens[user]

    def request(self, method: str, path: str, *, user: str | None, data=None, **query) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token(user)}"} if user else {}
        return httpx.request(method, f"{self.url}{path}", params=query, data=data, headers=headers, timeout=60)

    def get(self, path: str, *, user: str | None, **query) -> httpx.Response:
        return self.request("GET", path, user=user, **query)

    def stop(self) -> None:
        stop_group(self.process, timeout=20)


def start_api_server(home: Path, registry_uri: str, timeout: float = 180) -> AirflowServer:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = loopback_env(port, USERS, registry_uri) | {"AIRFLOW__API__WORKERS": "1"}
    log = home / "api-server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "airflow", "api-server", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    server = AirflowServer(url, home, process, log, registry_uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"airflow api-server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"airflow api-server did not answer on {url} within {timeout:.0f}s:\n{log.read_text()[-4000:]}")
