"""SIGKILL of a DAG run's tasks at the worst moments, each followed by Airflow's retry: the final weights equal an
uninterrupted run's, bit for bit, nothing partial is left in the registry, and the champion pointer names a
complete version at every moment in between."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load

from airflow_tl.evaluation.task import evaluate_and_register
from airflow_tl.registry.promotion import Gate
from airflow_tl.registry.store import Registry
from airflow_tl.uris import slug
from tests.faultproxy import Fault

ROOT = Path(__file__).resolve().parents[2]
DAG = "tl_test_pipeline_partial_freeze"


class Run:
    """One process of ``tests.dag_runner``, its output collected as it comes."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.dag_runner", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def run_id(self, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line.split(" ", 1)[1].strip() for line in self.lines if line.startswith("RUN_ID ")]
            if found:
                return found[0]
            assert self.process.poll() is None, self.output[-3000:]
            time.sleep(0.1)
        raise AssertionError("the run printed no RUN_ID")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._reader.join(5)
        assert self.process.returncode == -signal.SIGKILL

    def finish(self, timeout: float = 600) -> str:
        self.process.wait(timeout)
        self._reader.join(5)
        assert self.process.returncode == 0, self.output[-5000:]
        return self.output


class PointerWatch(threading.Thread):
    """Reads champion.json over and over; every pointer seen must name a complete version."""

    def __init__(self, registry: Registry) -> None:
        super().__init__(daemon=True)
        self.registry = registry
        self.seen: list[str] = []
        self.invalid: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        uri = f"{self.registry.uri}/champion.json"
        while not self.stop.is_set():
            found = self.registry.store.get_with_etag(uri)
            version = json.loads(found[0])["version"] if found else None
            if version is None or not self.registry.is_complete(version):
                self.invalid.append(str(version))
            elif not self.seen or self.seen[-1] != version:
                self.seen.append(version)
            time.sleep(0.02)


def wait_for(condition, what: str, run: Run, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert run.process.poll() is None, f"the run ended before {what}:\n{run.output[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f}s"
        time.sleep(0.05)


def resume_and_kill_at(proxy, put_path: str, run_id: str, env: dict[str, str]) -> Run:
    """Retry the run until it PUTs to ``put_path``; hold that request in flight, SIGKILL the run, drop it."""
    held = Fault("hold", methods=("PUT",), path=put_path)
    proxy.use(held)
    run = Run("resume", DAG, run_id, env=env)
    wait_for(held.arrived.is_set, f"a PUT to {put_path}", run)
    run.kill()
    held.drop()
    return run


def weights(store, version_uri: str) -> dict[str, torch.Tensor]:
    return load(store.get_bytes(f"{version_uri}/model.safetensors"))


def test_sigkill_mid_epoch_mid_checkpoint_and_mid_publish_then_retries_end_as_an_uninterrupted_run(
    store, bucket, demo, run_dag, proxy
):
    conf = {
        "dataset_uri": demo.target_dataset, "pretrained_uri": demo.source_model, "model_name": "digits",
        "work_uri": f"s3://{bucket}/work", "epochs": 3, "patience": None, "on_class_change": "promote",
    }  # fmt: skip
    reference = run_dag(DAG, conf | {"registry_uri": f"s3://{bucket}/reference"})
    assert reference.state == "success", reference.failures
    expected = weights(store, reference.xcoms["evaluate"]["model_uri"])

    conf |= {"registry_uri": f"s3://{bucket}/registry"}
    registry = Registry(store, conf["registry_uri"], "digits")
    # A champion to keep valid throughout (digits 0-4: other classes, so on_class_change decides the end).
    evaluate_and_register(
        store, model_uri=demo.source_model, dataset_uri=demo.source_dataset, registry_uri=conf["registry_uri"],
        model_name="digits", version="before", gate=Gate(),
    )  # fmt: skip
    watch = PointerWatch(registry)
    watch.start()

    env = {**os.environ, "AIRFLOW_CONN_AWS_DEFAULT": proxy.connection()}

    # 1. Mid-epoch: epoch 1 is checkpointed, epoch 2 is under way.
    first = Run("start", DAG, json.dumps(conf), env=env)
    run_id = first.run_id()
    prefix = f"s3://{bucket}/work/runs/{DAG}/{slug(run_id)}"
    pointer = f"{prefix}/train/checkpoints/latest.json"
    wait_for(lambda: store.exists(pointer), "first checkpoint", first)
    epoch_seconds = json.loads(store.get_bytes(pointer))["history"][-1]["seconds"]
    time.sleep(epoch_seconds * 0.4)
    first.kill()
    resumed_from = json.loads(store.get_bytes(pointer))["epoch"]
    assert resumed_from in (1, 2) and not store.exists(f"{prefix}/train/model/model.json")

    # 2. While the next epoch's checkpoint is being uploaded: every part of it is held, then the worker dies.
    second = resume_and_kill_at(proxy, r"/train/checkpoints/epoch-\d+\.safetensors", run_id, env)
    assert f"Resuming from checkpoint {prefix}/train/checkpoints after epoch {resumed_from}" in second.output
    assert json.loads(store.get_bytes(pointer))["epoch"] == resumed_from  # the pointer still names a whole file
    assert not store.exists(f"{prefix}/train/checkpoints/epoch-{resumed_from + 1:04d}.safetensors")

    # 3. While the version is being published: the report's PUT is held, then the worker dies.
    resume_and_kill_at(proxy, r"/versions/[^/]+/report\.html", run_id, env)
    version = next(v for v in _version_folders(store, registry) if v != "before")
    assert not registry.is_complete(version) and registry.versions() == ["before"]
    assert registry.champion().champion.version == "before"

    # The last retry finishes the run: evaluate again, publish the same version, promote it.
    proxy.use()
    fourth = Run("resume", DAG, run_id, env=env)
    output = fourth.finish()
    watch.stop.set()
    watch.join(5)

    assert "RETRY evaluate" in output and "RETRY train" not in output
    assert registry.versions() == sorted(["before", version]) and registry.champion().champion.version == version
    actual = weights(store, registry.version_uri(version))
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[k], expected[k]) for k in expected), "weights differ from the uninterrupted run"
    assert watch.invalid == [] and watch.seen == ["before", version]
    assert [e["version"] for e in registry.history() if e["promoted"]] == ["before", version]


def _version_folders(store, registry: Registry) -> set[str]:
    prefix = f"{registry.root.key}/versions/"
    return {o.key[len(prefix) :].split("/", 1)[0] for o in store.list(f"{registry.uri}/versions")}
