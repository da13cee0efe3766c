"""Data-parallel training in two CPU processes (gloo), started by torch's elastic launcher from a real DAG run.

Tolerance: with the same global batch and seed, two processes compute the same gradients as one up to the order
of floating-point sums (BatchNorm included: it normalises over the global batch). AdamW's step is about the
learning rate wherever a gradient is close to zero, whatever its size, so such noise can move a weight by up to
the learning rate per step: weights agree within ``learning_rate × steps``, validation loss within 1e-4.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import signal
import time

import psutil
import pytest
import torch
from safetensors.torch import load

from airflow_tl.data.dataset import list_dataset
from airflow_tl.data.loader import CorruptImagesError
from airflow_tl.demo.local_s3 import free_port
from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.features.extract import extract_features, load_split, read_features_index
from airflow_tl.hooks.s3 import s3_store
from airflow_tl.models.folder import read_card
from airflow_tl.training.config import TrainConfig
from airflow_tl.training.task import train
from airflow_tl.uris import slug
from tests.helpers import copy_dataset
from tests.integration.test_kill import Run

BUCKET = "tl-distributed"
DATA = f"s3://{BUCKET}/data"  # 45 training images: batches of 16 end with one of 13, split 7 and 6


@pytest.fixture(scope="module")
def data(local_s3, demo) -> str:
    store = s3_store("aws_default")
    store.client.create_bucket(Bucket=BUCKET)
    copy_dataset(store, demo.target_dataset, DATA, per_class_train=9)
    return DATA


def test_two_processes_in_a_dag_run_train_the_model_one_process_trains(store, demo, data, run_dag):
    conf = {
        "pretrained_uri": demo.source_model, "dataset_uri": data, "epochs": 2, "batch_size": 16,
        "learning_rate": 1e-3, "freeze_layers": 3, "seed": 3,
    }  # fmt: skip
    runs = {}
    for n in (1, 2):
        result = run_dag(
            "tl_test_train_partial_freeze", conf | {"num_processes": n, "work_uri": f"s3://{BUCKET}/work-{n}"}
        )
        assert result.state == "success", result.failures
        runs[n] = result.xcoms["train"]
    one, two = (load(store.get_bytes(f"{runs[n]['model_uri']}/model.safetensors")) for n in (1, 2))
    steps = conf["epochs"] * math.ceil(45 / conf["batch_size"])
    assert one.keys() == two.keys()
    for name in one:  # BatchNorm's statistics too: they are the global batch's
        assert torch.allclose(one[name].float(), two[name].float(), rtol=0, atol=conf["learning_rate"] * steps), name
    assert abs(runs[1]["val_loss"] - runs[2]["val_loss"]) <= 1e-4
    assert runs[1]["best_epoch"] == runs[2]["best_epoch"] and runs[1]["val_accuracy"] == runs[2]["val_accuracy"]
    card = read_card(store, runs[2]["model_uri"])
    assert card.training["processes"] == 2 and card.training["device"]["device"] == "cpu"
    assert "processes" not in read_card(store, runs[1]["model_uri"]).training


def _a_rank(runner_pid: int) -> psutil.Process | None:
    """A training process of the run: the launcher spawns them (their rank is set after they start)."""
    for child in psutil.Process(runner_pid).children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "spawn_main" in command and "resource_tracker" not in command:
            return child
    return None


def test_sigkill_of_one_rank_fails_the_try_and_the_retry_resumes_from_the_checkpoint(
    store, demo, data, bucket, airflow_db
):
    dag = "tl_test_retrying_partial_freeze"  # retries 1 s apart
    conf = {
        "dataset_uri": data, "pretrained_uri": demo.source_model, "model_name": "digits", "epochs": 3,
        "patience": None, "batch_size": 16, "num_processes": 2, "work_uri": f"s3://{bucket}/work",
        "registry_uri": f"s3://{bucket}/registry", "on_class_change": "promote",
    }  # fmt: skip
    run = Run("start", dag, json.dumps(conf), env=dict(os.environ))
    prefix = f"s3://{bucket}/work/runs/{dag}/{slug(run.run_id())}/train"
    deadline = time.monotonic() + 300
    while not store.exists(f"{prefix}/checkpoints/latest.json"):
        assert run.process.poll() is None, run.output[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.1)
    victim = _a_rank(run.process.pid)
    assert victim is not None, "no training process among the run's"
    victim.send_signal(signal.SIGKILL)

    output = run.finish()
    assert re.search(rf"Training process rank \d of 2 \(pid {victim.pid}\) was killed by SIGKILL", output), output
    assert f"[rank 0] INFO airflow_tl.training.engine: Resuming from checkpoint {prefix}/checkpoints" in output
    card = read_card(store, f"{prefix}/model")
    assert card.training["resumed_from_epoch"] >= 1 and [h["epoch"] for h in card.history] == [1, 2, 3]


def test_a_corrupt_image_in_one_ranks_share_fails_at_once_naming_rank_and_image(store, demo, data, bucket):
    dataset = f"s3://{bucket}/data"
    copy_dataset(store, data, dataset)
    store.put_bytes(f"{dataset}/train/7/broken.png", b"not a png")
    with pytest.raises(CorruptImagesError, match=r"rank \d of 2 failed: .*broken\.png"):
        train(
            store, model_uri=demo.source_model, dataset_uri=dataset, output_uri=f"s3://{bucket}/out/model",
            checkpoint_uri=None, config=TrainConfig(epochs=1, batch_size=16, freeze_layers=5), device="cpu",
            num_processes=2, worker_store=functools.partial(s3_store, "aws_default"),
        )  # fmt: skip
    assert not store.exists(f"s3://{bucket}/out/model/model.json")


def test_more_processes_than_a_batch_can_be_shared_among_is_refused_before_any_starts(store, demo, data):
    started = time.monotonic()
    with pytest.raises(InvalidArgumentError, match=r"num_processes=3 makes 3 processes, .* at most 2"):
        train(
            store, model_uri=demo.source_model, dataset_uri=data, output_uri=f"s3://{BUCKET}/never/model",
            checkpoint_uri=None, config=TrainConfig(batch_size=2), num_processes=3,
            worker_store=functools.partial(s3_store, "aws_default"),
        )  # fmt: skip
    assert time.monotonic() - started < 5


def test_a_node_that_never_comes_fails_every_node_after_the_timeout_and_nothing_is_published(
    store, demo, data, bucket, run_dag
):
    # dag.test runs one task instance at a time: node 0 waits alone, then node 1 does.
    conf = {
        "dataset_uri": data, "pretrained_uri": demo.source_model, "work_uri": f"s3://{bucket}/work", "epochs": 1,
        "registry_uri": f"s3://{bucket}/registry", "nnodes": 2, "rdzv_endpoint": f"127.0.0.1:{free_port()}",
        "rdzv_timeout": 5,
    }  # fmt: skip
    started = time.monotonic()
    result = run_dag("tl_test_multinode_partial_freeze", conf)
    assert result.state == "failed" and result.task_states["evaluate"] == "upstream_failed"
    failures = [f for f in result.failures if f["task_id"] == "train"]
    assert len(failures) == 2, result.failures
    for failure in failures:
        assert failure["type"] == "RendezvousFailedError", failure
        assert f"did not all meet at {conf['rdzv_endpoint']} within 5 s" in failure["message"]
    assert not [o.key for o in store.list(f"s3://{bucket}/work") if "/train/" in o.key]
    assert not list(store.list(f"s3://{bucket}/registry"))
    assert time.monotonic() - started < 120


def test_features_extracted_by_two_processes_in_a_dag_run_are_one_processs_in_the_same_order(
    store, demo, data, run_dag
):
    result = run_dag(
        "tl_test_train_feature_extraction",
        {"pretrained_uri": demo.source_model, "dataset_uri": data, "work_uri": f"s3://{BUCKET}/fx", "num_processes": 2},
    )
    assert result.state == "success", result.failures
    two = result.xcoms["extract_features"]
    dataset = list_dataset(store, data)
    one = extract_features(store, model_uri=demo.source_model, dataset=dataset, features_root=f"s3://{BUCKET}/fx-1")
    assert two["counts"] == one.counts and two["forward_passes"] > one.forward_passes  # a block per process
    index_one, index_two = (read_features_index(store, uri) for uri in (one.uri, two["features_uri"]))
    assert index_two["processes"] == 2 and [s["file"] for s in index_two["shards"]["train"]] == [
        "train-r000-00000.safetensors", "train-r001-00000.safetensors"
    ]  # fmt: skip
    for split in ("train", "val", "test"):
        x1, y1 = load_split(store, one.uri, index_one, split)
        x2, y2 = load_split(store, two["features_uri"], index_two, split)
        assert torch.equal(y1, y2) and torch.allclose(x1, x2, atol=1e-5), split


def test_two_processes_train_from_a_sharded_dataset_and_more_than_its_shards_are_refused(store, demo, data, bucket):
    from airflow_tl.data.shard_writer import prepare_shards

    dataset = f"s3://{bucket}/data"
    copy_dataset(store, data, dataset)
    prepare_shards(store, dataset, shard_images=12)  # 45 training images: 4 shards
    common = {
        "model_uri": demo.source_model, "dataset_uri": f"{dataset}/shards", "checkpoint_uri": None, "device": "cpu",
        "worker_store": functools.partial(s3_store, "aws_default"),
    }  # fmt: skip
    with pytest.raises(InvalidArgumentError, match=r"5 processes would read the 4 training shards of s3://"):
        train(store, output_uri=f"s3://{bucket}/never/model", config=TrainConfig(batch_size=16), num_processes=5,
              **common)  # fmt: skip
    config = TrainConfig(epochs=2, batch_size=16, freeze_layers=5)
    result = train(store, output_uri=f"s3://{bucket}/out/model", config=config, num_processes=2, **common)
    card = read_card(store, f"s3://{bucket}/out/model")
    assert card.training["processes"] == 2 and len(card.history) == 2
    assert result.summary()["epochs_run"] == 2
    assert not store.exists(f"s3://{bucket}/never/model/model.json")
