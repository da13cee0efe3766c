"""``make airflow`` for real: it brings up Airflow with the dashboard on 127.0.0.1, says how to log in, and
Ctrl-C stops every process it started. While it is up, the shipped data-arrival DAGs run as the scheduler
and triggerer run them: ``tl_land_images`` waits deferred, an image that arrives is landed, and its Asset
event starts ``tl_retrain_on_data``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from airflow_tl.demo.local_s3 import free_port
from airflow_tl.hooks.s3 import s3_store

ROOT = Path(__file__).resolve().parents[2]
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
    "3a7e9b550000000a49444154789c6360000000020001e221bc330000000049454e44ae426082"
)


def _processes_with(marker: str) -> list[int]:
    """PIDs whose environment holds ``marker`` (the test's own AIRFLOW_HOME)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile, or not ours to read
                pass
    return found


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _wait_for(what: str, probe, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(2)
    return found


def _data_arrival_retrains(url: str, password: str, dataset: str, incoming: str, image: bytes) -> None:
    """Unpause the two DAGs, let an image arrive, and see it landed and the retraining DAG started by it."""
    token = httpx.post(f"{url}/auth/token", json={"username": "admin", "password": password}).json()["access_token"]
    api = httpx.Client(base_url=f"{url}/api/v2", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    _wait_for("the DAG processor", lambda: api.get("/dags/tl_retrain_on_data").status_code == 200)
    for dag_id in ("tl_land_images", "tl_retrain_on_data"):
        assert api.patch(f"/dags/{dag_id}", json={"is_paused": False}).status_code == 200

    def wait_state() -> str | None:
        runs = api.get("/dags/tl_land_images/dagRuns", params={"state": "running"}).json()["dag_runs"]
        if not runs:
            return None
        task = api.get(f"/dags/tl_land_images/dagRuns/{runs[0]['dag_run_id']}/taskInstances/wait_for_images")
        return task.json().get("state") if task.status_code == 200 else None

    assert _wait_for("the wait to defer", lambda: wait_state() == "deferred")  # no worker slot held
    store = s3_store()
    store.put_bytes(f"{incoming}/train/7/arrived.png", image)
    assert _wait_for("the image to land", lambda: store.exists(f"{dataset}/train/7/arrived.png"))
    assert not store.exists(f"{incoming}/train/7/arrived.png")
    runs = _wait_for("the retraining run", lambda: api.get("/dags/tl_retrain_on_data/dagRuns").json()["dag_runs"])
    assert runs[0]["run_type"] == "asset_triggered"
    assert _wait_for("the next wait", lambda: wait_state() == "deferred")  # continuous: it waits again


def test_make_airflow_serves_the_dashboard_on_loopback_and_ctrl_c_stops_everything(local_s3, bucket):
    home = tempfile.mkdtemp(prefix="airflow-tl-make-airflow-")
    port = free_port()
    dataset, incoming = f"s3://{bucket}/datasets/arrivals", f"s3://{bucket}/incoming/arrivals"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env |= {"AIRFLOW_HOME": home, "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "PYTHONUNBUFFERED": "1"}
    env |= {"AIRFLOW_TL_RETRAIN_DATASET": dataset, "AIRFLOW_TL_RETRAIN_INCOMING": incoming}
    env |= {"AIRFLOW_TL_RETRAIN_POKE_INTERVAL": "2"}
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_tl.demo", "airflow", "--port", str(port), "--no-seed"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 420
        while not any("Airflow is up" in line for line in output):
            assert process.poll() is None, "".join(output)[-4000:]
            assert time.monotonic() < deadline, "".join(output)[-4000:]
            time.sleep(1)
        text = "".join(output)
        assert f"http://127.0.0.1:{port}" in text and "login       admin / " in text
        assert httpx.get(f"http://127.0.0.1:{port}/airflow-tl/").status_code == 401  # the dashboard, behind auth
        assert len(_processes_with(f"AIRFLOW_HOME={home}")) >= 5  # bash and the four Airflow processes
        password = text.split("login       admin / ", 1)[1].split()[0]
        _data_arrival_retrains(f"http://127.0.0.1:{port}", password, dataset, incoming, PNG)

        process.send_signal(signal.SIGINT)  # what Ctrl-C sends to the command
        assert process.wait(90) == 0, "".join(output)[-3000:]
        deadline = time.monotonic() + 30
        while _processes_with(f"AIRFLOW_HOME={home}") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _processes_with(f"AIRFLOW_HOME={home}") == [], "processes left running after Ctrl-C"
    finally:
        if process.poll() is None:  # the test failed while Airflow was up: let it clean up as on Ctrl-C
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        # By process group: the executor's workers retitle themselves over their environment, hiding the marker.
        for group in {_group_of(pid) for pid in _processes_with(f"AIRFLOW_HOME={home}")} - {None, os.getpgrp()}:
            os.killpg(group, signal.SIGKILL)
