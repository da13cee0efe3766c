"""What ``make airflow`` runs: a local Airflow with our DAGs and dashboard, on 127.0.0.1, until Ctrl-C.

The local S3 (seeded with the demo data) unless an S3 connection is configured, then the processes
``airflow standalone`` starts: API server, scheduler, DAG processor and triggerer. They are started one by
one rather than through ``standalone`` because its log servers listen on every interface; with the
LocalExecutor on one machine, task logs are read from local files and no log server is needed. All of
them run in one process group of their own, which Ctrl-C (or SIGTERM) stops as a whole.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from airflow_tl.demo.runner import REPO, _prepare_airflow_env, _run, local_s3_unless_configured

USER = "admin"
PROCESSES = {
    "api-server": ["api-server"],  # host and port from the environment below
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}


def run_airflow(*, aws_conn_id: str, bucket: str, port: int, seed: bool) -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # stopped by a supervisor as by Ctrl-C: clean up the same way
    home = _prepare_airflow_env()
    logs = home / "airflow-logs"
    logs.mkdir(exist_ok=True)
    local = local_s3_unless_configured(aws_conn_id)
    url = f"http://127.0.0.1:{port}"
    registries = os.environ.get("AIRFLOW__AIRFLOW_TL__REGISTRIES", f"s3://{bucket}/registry")
    env = loopback_env(port, {USER: "admin"}, registries) | {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor"}
    group: subprocess.Popen | None = None
    try:
        _run([sys.executable, "-m", "airflow", "db", "migrate"], logs / "db-migrate.log", "airflow db migrate", env)
        if seed and local is not None:
            command = [sys.executable, "-m", "airflow_tl.demo", "seed", "--aws-conn-id", aws_conn_id]
            _run([*command, "--bucket", bucket], logs / "seed.log", "seed demo data", env)
        group = _start_group(env, logs)
        _wait_until_up(url, group, logs)
        password = _password(home)
        print(
            f"\nAirflow is up: {url}\n  login       {USER} / {password}\n"
            f"  dashboard   {url}/plugin/airflow-tl (Browse > Models)\n"
            f"  DAG folder  {env.get('AIRFLOW__CORE__DAGS_FOLDER', REPO / 'dags')}\n  logs        {logs}\n"
            "Ctrl-C stops everything this command started.",
            flush=True,
        )
        while group.poll() is None:
            time.sleep(1)
        print(f"An Airflow process exited (code {group.returncode}); stopping the rest. Logs: {logs}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopping Airflow and the local S3 ...", flush=True)
        return 0
    finally:
        if group is not None:
            stop_group(group)
        if local is not None:
            local.stop()


def loopback_env(port: int, users: dict[str, str], registries: str) -> dict[str, str]:
    """This process's environment for Airflow on 127.0.0.1:``port``, with ``users`` (name: role) and the
    dashboard showing ``registries``."""
    return {
        **os.environ,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{user}:{role}" for user, role in users.items()),
        "AIRFLOW__AIRFLOW_TL__REGISTRIES": registries,
    }


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _start_group(env: dict[str, str], logs: Path) -> subprocess.Popen:
    """The four processes under one shell that leads a new session, so killpg reaches all of them."""
    airflow = f"{sys.executable} -m airflow"
    lines = [f"{airflow} {' '.join(args)} > {logs / name}.log 2>&1 &" for name, args in PROCESSES.items()]
    script = "\n".join([*lines, "wait -n", "exit $?"])
    return subprocess.Popen(["bash", "-c", script], env=env, start_new_session=True)


def stop_group(group: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the whole process group, then SIGKILL whatever is left after ``timeout`` seconds."""
    try:
        os.killpg(group.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _group_alive(group.pid):
        time.sleep(0.3)
    if _group_alive(group.pid):
        os.killpg(group.pid, signal.SIGKILL)
    group.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_until_up(url: str, group: subprocess.Popen, logs: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if group.poll() is not None:
            raise SystemExit(f"An Airflow process exited during start-up; see the logs in {logs}")
        try:
            with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"Airflow did not answer on {url} within {timeout:.0f}s; see the logs in {logs}")


def _password(home: Path) -> str:
    path = home / "simple_auth_manager_passwords.json.generated"
    for _ in range(30):
        if path.exists():
            return json.loads(path.read_text()).get(USER, "?")
        time.sleep(1)
    return f"(see {path})"
