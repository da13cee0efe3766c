"""Kill -9 a training process mid-epoch; running the same task again resumes from its last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from airflow_tl.models.folder import load_model_folder
from tests.helpers import copy_dataset

ROOT = Path(__file__).resolve().parents[2]

TASK = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s", force=True)
from airflow_tl.hooks.s3 import s3_store
from airflow_tl.training.config import TrainConfig
from airflow_tl.training.task import train
args = json.loads(sys.argv[1])
config = TrainConfig(epochs=4, batch_size=8, learning_rate=1e-3, freeze_layers=2, patience=None, seed=5)
result = train(s3_store(), config=config, **args)
print("SUMMARY " + json.dumps(result.summary()))
"""


def _start(args: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", TASK, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ,
        cwd=ROOT,
    )


def test_sigkill_mid_epoch_then_rerun_resumes_and_finishes(store, bucket, demo):
    dataset = f"s3://{bucket}/data"
    copy_dataset(store, demo.target_dataset, dataset, per_class_train=12)
    args = {
        "model_uri": demo.source_model,
        "dataset_uri": dataset,
        "output_uri": f"s3://{bucket}/run/train/model",
        "checkpoint_uri": f"s3://{bucket}/run/train/checkpoints",
    }
    pointer = f"s3://{bucket}/run/train/checkpoints/latest.json"

    first = _start(args)
    deadline = time.monotonic() + 300
    while not store.exists(pointer):
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    state = json.loads(store.get_bytes(pointer))
    time.sleep(state["history"][-1]["seconds"] * 0.4)  # well inside the next epoch
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = json.loads(store.get_bytes(pointer))["epoch"]
    assert first.returncode == -signal.SIGKILL and 1 <= killed_at < 4
    assert not store.exists(args["output_uri"] + "/model.json")

    second = _start(args)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output[-3000:]
    assert f"Resuming from checkpoint {args['checkpoint_uri']} after epoch {killed_at}" in output
    summary = json.loads(output.split("SUMMARY ", 1)[1].splitlines()[0])
    assert summary["resumed_from_epoch"] == killed_at and summary["epochs_run"] == 4
    _, card = load_model_folder(store, args["output_uri"])
    assert [row["epoch"] for row in card.history] == [1, 2, 3, 4]
    assert card.training["resumed_from_epoch"] == killed_at
    # The epochs before the kill come from the checkpoint, not from a second run of them.
    assert sum(f"Epoch {e}/4:" in output for e in range(1, killed_at + 1)) == 0
