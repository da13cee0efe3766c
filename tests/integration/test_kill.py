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

import pytest
import torch
from safetensors.torch import load

from airflow_tl.evaluation.task import evaluate_and_register
from airflow_tl.registry.promotion import Gate
from airflow_tl.registry.store import Registry
from tests.faultproxy import Fault, FaultProxy

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


def weights(store, version_uri: str) -> dict[str, torch.Tensor]:
    return load(store.get_bytes(f"{version_uri}/model.safetensors"))
