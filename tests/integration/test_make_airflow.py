"""``make airflow`` for real: it brings up Airflow with the dashboard on 127.0.0.1, says how to log in, and
Ctrl-C stops every process it started. While it is up, the shipped data-arrival DAGs run as the scheduler
and triggerer run them: ``tl_land_images`` waits deferred, an image that arrives is landed, and its Asset
event starts ``tl_retrain_on_data``; an event of the model's Asset starts ``tl_predict``, which scores with the
champion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from airflow_tl.demo.local_s3 import free_port
from airflow_tl.hooks.s3 import s3_store
from airflow_tl.registry.store import Registry
from airflow_tl.uris import slug

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


@dataclass
class Airflow:
    url: str
    home: str
    password: str
    process: subprocess.Popen
    output: list[str]

    def api(self) -> httpx.Client:
        answer = httpx.post(f"{self.url}/auth/token", json={"username": "admin", "password": self.password})
        token = answer.json()["access_token"]
        return httpx.Client(base_url=f"{self.url}/api/v2", headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.fixture(scope="module")
def airflow(local_s3, bucket_name):
    """``make airflow``'s command, up on a free port, with the shipped DAGs; stopped as Ctrl-C stops it."""
    home = tempfile.mkdtemp(prefix="airflow-tl-make-airflow-")
    port = free_port()
    dataset, incoming = f"s3://{bucket_name}/datasets/arrivals", f"s3://{bucket_name}/incoming/arrivals"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env |= {"AIRFLOW_HOME": home, "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "PYTHONUNBUFFERED": "1"}
    env |= {"AIRFLOW_TL_RETRAIN_DATASET": dataset, "AIRFLOW_TL_RETRAIN_INCOMING": incoming}
    env |= {"AIRFLOW_TL_RETRAIN_POKE_INTERVAL": "2"}
    env |= {f"AIRFLOW_TL_PREDICT_{k.upper()}": v for k, v in _predict_locations(bucket_name).items()}
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
        password = text.split("login       admin / ", 1)[1].split()[0]
        yield Airflow(f"http://127.0.0.1:{port}", home, password, process, output)
    finally:
        if process.poll() is None:  # a test failed while Airflow was up: let it clean up as on Ctrl-C
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        # By process group: the executor's workers retitle themselves over their environment, hiding the marker.
        for group in {_group_of(pid) for pid in _processes_with(f"AIRFLOW_HOME={home}")} - {None, os.getpgrp()}:
            os.killpg(group, signal.SIGKILL)


def _predict_locations(bucket: str) -> dict[str, str]:
    """Where the shipped tl_predict looks in these tests (its AIRFLOW_TL_PREDICT_* variables)."""
    return {"dataset": f"s3://{bucket}/photos", "registry": f"s3://{bucket}/registry", "model": "arrivals",
            "output": f"s3://{bucket}/predictions"}  # fmt: skip


@pytest.fixture(scope="module")
def bucket_name(local_s3) -> str:
    name = f"tl-make-airflow-{uuid.uuid4().hex[:8]}"
    s3_store().client.create_bucket(Bucket=name)
    return name


def test_make_airflow_serves_the_dashboard_on_loopback_and_says_how_to_log_in(airflow):
    text = "".join(airflow.output)
    assert f"{airflow.url}" in text and "login       admin / " in text
    assert httpx.get(f"{airflow.url}/airflow-tl/").status_code == 401  # the dashboard, behind auth
    assert len(_processes_with(f"AIRFLOW_HOME={airflow.home}")) >= 5  # bash and the four Airflow processes


def test_images_that_arrive_are_landed_and_start_the_retraining_dag(airflow, bucket_name):
    dataset, incoming = f"s3://{bucket_name}/datasets/arrivals", f"s3://{bucket_name}/incoming/arrivals"
    _data_arrival_retrains(airflow.url, airflow.password, dataset, incoming, PNG)


def test_a_new_champion_starts_tl_predict_which_scores_the_images(airflow, bucket_name):
    """The model's Asset, updated as an evaluate task would update it, starts the shipped tl_predict, which scores
    the prefix with the champion."""
    import io

    from PIL import Image

    from tests.helpers import publish_model

    where, store, api = _predict_locations(bucket_name), s3_store(), airflow.api()
    publish_model(store, f"s3://{bucket_name}/trained", classes=["cat", "dog"])
    registry = Registry(store, where["registry"], where["model"])
    registry.write_version("v1", model_uri=f"s3://{bucket_name}/trained", metrics={}, report_html=b"", plots={})
    assert registry.replace_champion({"version": "v1"}, etag=None)
    for i in range(3):
        png = io.BytesIO()
        Image.new("RGB", (40, 40), (60 * i, 90, 200)).save(png, "PNG")
        store.put_bytes(f"{where['dataset']}/2026-11-30/{i}.png", png.getvalue())

    uri = f"x-airflow-tl://{bucket_name}/registry/arrivals"
    _wait_for("the DAG processor", lambda: api.get("/dags/tl_predict").status_code == 200)
    assets = _wait_for("the model's Asset", lambda: api.get("/assets", params={"uri_pattern": uri}).json()["assets"])
    assert api.patch("/dags/tl_predict", json={"is_paused": False}).status_code == 200
    event = api.post("/assets/events", json={"asset_id": assets[0]["id"], "extra": {"version": "v1"}})
    assert event.status_code == 200, event.text

    def finished() -> list:
        runs = api.get("/dags/tl_predict/dagRuns").json()["dag_runs"]
        return [r for r in runs if r["state"] in ("success", "failed")]

    runs = _wait_for("the prediction run", finished, timeout=300)
    assert (runs[0]["run_type"], runs[0]["state"]) == ("asset_triggered", "success"), runs
    from airflow_tl.predict.parts import read_part

    parts = [o.uri for o in store.list(f"{where['output']}/version=v1") if o.key.endswith(".parquet")]
    keys = [k for uri in parts for k in read_part(store.get_bytes(uri), uri, ["key"]).column("key").to_pylist()]
    assert sorted(keys) == [f"photos/2026-11-30/{i}.png" for i in range(3)]
    api.patch("/dags/tl_predict", json={"is_paused": True})


def test_two_nodes_under_the_local_executor_train_as_one_and_publish_one_model(airflow, demo, small_target):
    """tl_full_finetune_multinode with nnodes=2: two mapped task instances run at once, their training processes
    meet at a loopback rendezvous, and rank 0's model is evaluated and published once."""
    api = airflow.api()
    _wait_for("the DAG processor", lambda: api.get("/dags/tl_full_finetune_multinode").status_code == 200)
    assert api.patch("/dags/tl_full_finetune_multinode", json={"is_paused": False}).status_code == 200
    bucket = small_target.split("/")[2]
    conf = {
        "dataset_uri": small_target, "pretrained_uri": demo.source_model, "work_uri": f"s3://{bucket}/multinode",
        "registry_uri": f"s3://{bucket}/multinode-registry", "model_name": "digits", "epochs": 1,
        "nnodes": 2, "num_processes": 1, "rdzv_endpoint": f"127.0.0.1:{free_port()}", "rdzv_timeout": 120,
        "on_class_change": "promote",
    }  # fmt: skip
    answer = api.post("/dags/tl_full_finetune_multinode/dagRuns", json={"logical_date": None, "conf": conf})
    assert answer.status_code == 200, answer.text
    run_id = answer.json()["dag_run_id"]
    run = f"/dags/tl_full_finetune_multinode/dagRuns/{run_id}"
    state = _wait_for("the run to end", lambda: api.get(run).json()["state"] in ("success", "failed"), timeout=600)
    tasks = api.get(f"{run}/taskInstances").json()["task_instances"]
    states = {(t["task_id"], t["map_index"]): t["state"] for t in tasks}
    assert state and api.get(run).json()["state"] == "success", states
    assert states[("train", 0)] == states[("train", 1)] == "success"
    nodes = [api.get(f"{run}/taskInstances/train/{i}").json() for i in (0, 1)]
    assert nodes[0]["start_date"] < nodes[1]["end_date"] and nodes[1]["start_date"] < nodes[0]["end_date"]  # at once
    store = s3_store()
    model = f"{conf['work_uri']}/runs/tl_full_finetune_multinode/{slug(run_id)}/train/model"
    card = json.loads(store.get_bytes(f"{model}/model.json"))
    assert card["training"]["processes"] == 2  # one process on each node, one world
    registry = Registry(store, conf["registry_uri"], "digits")
    (version,) = registry.versions()
    assert registry.champion().champion.version == version


def test_ctrl_c_stops_every_process_make_airflow_started(airflow):
    airflow.process.send_signal(signal.SIGINT)  # what Ctrl-C sends to the command
    assert airflow.process.wait(90) == 0, "".join(airflow.output)[-3000:]
    deadline = time.monotonic() + 30
    while _processes_with(f"AIRFLOW_HOME={airflow.home}") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_with(f"AIRFLOW_HOME={airflow.home}") == [], "processes left running after Ctrl-C"
