"""``python -m airflow_tl``: an operator's work as a command a container can run, against the real S3 server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from airflow_tl.models.folder import read_card


def _cli(command: str, config: dict | str, cwd) -> subprocess.CompletedProcess:
    text = config if isinstance(config, str) else json.dumps(config)
    return subprocess.run(
        [sys.executable, "-m", "airflow_tl", command, "--config", text],
        capture_output=True, text=True, env=os.environ, cwd=cwd, timeout=600,
    )  # fmt: skip


def _summary(done: subprocess.CompletedProcess) -> dict | None:
    """The JSON summary the command prints last on stdout; None when it printed none (log lines may precede it)."""
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None


def test_training_from_the_command_line_does_what_the_operator_does(
    store, bucket, small_target, trained_by_operator, tmp_path
):
    fetched, trained = trained_by_operator["fetched"], trained_by_operator["trained"]
    # The operator's arguments as the test DAG renders them; the rest are both sides' defaults.
    config = {
        "model_uri": fetched, "dataset_uri": small_target, "output_uri": f"s3://{bucket}/cli/model",
        "checkpoint_uri": f"s3://{bucket}/cli/checkpoints", "epochs": 1, "batch_size": 32, "learning_rate": 1e-3,
        "seed": 0, "freeze_layers": 0, "init": "pretrained",
    }  # fmt: skip
    store.put_bytes(f"s3://{bucket}/cli/config.json", json.dumps(config).encode())
    done = _cli("train", f"s3://{bucket}/cli/config.json", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = _summary(done)
    assert summary["model_uri"] == config["output_uri"] and summary["epochs_run"] == 1
    ours, theirs = read_card(store, config["output_uri"]), read_card(store, trained)
    assert ours.weights_sha256 == theirs.weights_sha256  # the same seeded work, bit for bit
    assert ours.training["device"] == theirs.training["device"]


def test_a_bad_config_fails_with_exit_2_naming_the_keys(bucket, tmp_path):
    done = _cli("train", {"model_uri": f"s3://{bucket}/m", "epoch": 3}, tmp_path)
    assert done.returncode == 2
    assert "The train config has unknown key(s) epoch and no output_uri. Accepted keys: " in done.stderr
    assert _summary(done) is None
    done = _cli("evaluate", "[1, 2]", tmp_path)
    assert done.returncode == 2 and "must be a JSON object, got list" in done.stderr


def test_an_empty_dataset_is_permanent_and_an_unreachable_s3_is_worth_a_retry(bucket, tmp_path, monkeypatch):
    config = {"model_uri": f"s3://{bucket}/m", "dataset_uri": f"s3://{bucket}/d",
              "features_root": f"s3://{bucket}/f", "device": "cpu"}  # fmt: skip
    done = _cli("extract", config, tmp_path)
    assert done.returncode == 2 and f"DatasetError: Dataset s3://{bucket}/d holds no images" in done.stderr
    retry_once = {"retries": {"total_max_attempts": 1}}
    extra = {"endpoint_url": "http://127.0.0.1:9", "config_kwargs": retry_once}  # nothing listens on port 9
    closed = json.dumps({"conn_type": "aws", "login": "x", "password": "y", "extra": extra})
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", closed)
    done = _cli("extract", config, tmp_path)
    assert done.returncode == 75, done.stderr[-2000:]


def test_shards_from_the_command_line_and_a_sharded_dataset_that_is_not_there(store, bucket, small_target, tmp_path):
    from airflow_tl.data.dataset import list_dataset
    from tests.helpers import copy_dataset

    data = f"s3://{bucket}/digits"
    copy_dataset(store, small_target, data)
    done = _cli("shards", {"dataset_uri": data, "shard_images": 50, "threads": 4}, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = _summary(done)
    assert summary["shards_uri"] == f"{data}/shards" and summary["counts"] == list_dataset(store, data).counts()
    config = {"model_uri": f"s3://{bucket}/m", "dataset_uri": f"s3://{bucket}/elsewhere/shards",
              "features_root": f"s3://{bucket}/f", "device": "cpu"}  # fmt: skip
    done = _cli("extract", config, tmp_path)
    assert done.returncode == 2 and f"ShardError: s3://{bucket}/elsewhere/shards has no index.json" in done.stderr


def test_predict_from_the_command_line_scores_a_sharded_dataset_and_refuses_a_registry_without_champion(
    store, bucket, small_target, tmp_path
):
    from airflow_tl.data.dataset import list_dataset
    from airflow_tl.predict.parts import read_part
    from airflow_tl.registry.store import Registry
    from tests.helpers import copy_dataset, publish_model

    data = f"s3://{bucket}/digits"
    copy_dataset(store, small_target, data, per_class_train=4)
    assert _cli("shards", {"dataset_uri": data, "shard_images": 40}, tmp_path).returncode == 0
    config = {"dataset_uri": f"{data}/shards", "registry_uri": f"s3://{bucket}/registry", "model_name": "digits",
              "output_uri": f"s3://{bucket}/predictions", "device": "cpu"}  # fmt: skip
    done = _cli("predict", config, tmp_path)
    assert done.returncode == 2
    assert f"NoChampionError: Registry s3://{bucket}/registry/digits has no champion" in done.stderr

    registry = Registry(store, config["registry_uri"], "digits")
    publish_model(store, f"s3://{bucket}/model", classes=["5", "6", "7", "8", "9"])
    registry.write_version("v1", model_uri=f"s3://{bucket}/model", metrics={}, report_html=b"", plots={})
    assert registry.replace_champion({"version": "v1"}, etag=None)
    done = _cli("predict", config, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = _summary(done)
    images = list_dataset(store, data, for_training=False).items
    assert (summary["version"], summary["scored"]) == ("v1", len(images))
    parts = [o.uri for o in store.list(f"s3://{bucket}/predictions/version=v1")]
    keys = [key for uri in parts for key in read_part(store.get_bytes(uri), uri).column("key").to_pylist()]
    assert sorted(keys) == sorted(item.key for item in images)  # every split, read from the shards
