"""All four strategies through real DAG runs (dag.test(), SQLite) against the S3 server over HTTP."""

from __future__ import annotations

import pytest

from airflow_tl.devices import placement
from airflow_tl.models.folder import load_model_folder
from airflow_tl.uris import slug as run_slug


def _conf(demo, dataset_uri: str, work: str, **extra) -> dict:
    return {"pretrained_uri": demo.source_model, "dataset_uri": dataset_uri, "work_uri": work, "epochs": 2} | extra


@pytest.mark.parametrize("strategy", ["feature_extraction", "partial_freeze", "full_finetune", "from_scratch"])
def test_each_strategy_trains_a_model_folder(store, bucket, demo, small_target, run_dag, strategy):
    result = run_dag(f"tl_test_train_{strategy}", _conf(demo, small_target, f"s3://{bucket}/work"))
    assert result.state == "success", result.failures
    summary = result.xcoms["train"]
    expected = f"s3://{bucket}/work/runs/tl_test_train_{strategy}/{run_slug(result.run_id)}/train/model"
    assert summary["model_uri"] == expected
    _, card = load_model_folder(store, expected)
    assert card.class_names == list("56789")
    if strategy == "feature_extraction":  # fitted to convergence: epochs do not apply, the history is the l2 path
        assert summary["epochs_run"] == 1 and summary["method"] == "lbfgs"
        assert {"l2", "train_loss", "val_loss", "val_accuracy", "iterations", "chosen"} <= set(card.history[0])
    else:
        assert summary["epochs_run"] == 2 and len(card.history) == 2
        assert {"epoch", "train_loss", "val_loss", "val_accuracy", "images_per_s"} <= set(card.history[0])
    assert card.training["freeze_layers"] == {"feature_extraction": "all", "partial_freeze": 3}.get(strategy, 0)
    assert card.training["init"] == ("random" if strategy == "from_scratch" else "pretrained")
    # device="auto": this worker's GPU, else the CPU; a head fitted on features always runs on the CPU.
    where = "cpu" if strategy == "feature_extraction" else placement("auto").describe()["device"]
    assert card.training["device"]["device"] == where
    frozen = {"feature_extraction": 5, "partial_freeze": 3}.get(strategy, 0)
    assert card.training["frozen_blocks"] == ["stem", "layer1", "layer2", "layer3", "layer4"][:frozen]
    assert (
        summary["trainable_params"] < summary["total_params"]
        if frozen
        else summary["trainable_params"] == summary["total_params"]
    )


def test_second_extraction_of_the_same_inputs_is_a_cache_hit(store, bucket, demo, small_target, run_dag):
    conf = _conf(demo, small_target, f"s3://{bucket}/work", epochs=1)
    first = run_dag("tl_test_train_feature_extraction", conf)
    second = run_dag("tl_test_train_feature_extraction", conf)
    assert first.state == second.state == "success"
    assert (
        first.xcoms["extract_features"]["cache_hit"] is False and first.xcoms["extract_features"]["forward_passes"] > 0
    )
    assert (
        second.xcoms["extract_features"]["cache_hit"] is True
        and second.xcoms["extract_features"]["forward_passes"] == 0
    )
    assert second.xcoms["extract_features"]["features_uri"] == first.xcoms["extract_features"]["features_uri"]
    assert first.xcoms["extract_features"]["features_uri"].startswith(f"s3://{bucket}/work/features/")


def test_a_changed_image_recomputes_the_features(store, bucket, demo, small_target, run_dag):
    conf = _conf(demo, small_target, f"s3://{bucket}/work", epochs=1)
    first = run_dag("tl_test_train_feature_extraction", conf)
    key = f"{small_target}/val/5/" + sorted(o.key for o in store.list(f"{small_target}/val/5"))[0].rsplit("/", 1)[1]
    original = store.get_bytes(key)
    try:
        store.put_bytes(
            key,
            store.get_bytes(f"{small_target}/val/6/" + store.list(f"{small_target}/val/6")[0].key.rsplit("/", 1)[1]),
        )
        second = run_dag("tl_test_train_feature_extraction", conf)
    finally:
        store.put_bytes(key, original)
    assert second.xcoms["extract_features"]["cache_hit"] is False
    assert second.xcoms["extract_features"]["features_uri"] != first.xcoms["extract_features"]["features_uri"]


def test_freeze_layers_beyond_the_blocks_fails_naming_them(bucket, demo, small_target, run_dag):
    result = run_dag("tl_test_train_partial_freeze", _conf(demo, small_target, f"s3://{bucket}/work", freeze_layers=6))
    assert result.task_states["train"] == "failed"
    failure = result.failure("train")
    assert failure["type"] == "InvalidArgumentError" and "AirflowException" in failure["mro"]
    assert "freeze_layers accepts only 0…5, a block name or 'all' for resnet18" in failure["message"]
    assert "stem, layer1, layer2, layer3, layer4. Provided value: 6" in failure["message"]
