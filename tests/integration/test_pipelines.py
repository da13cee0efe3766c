"""The strategy DAGs end to end (dag.test(), SQLite, S3 over HTTP): versions in the registry, the gate, the
TaskGroup, and bad input that fails clearly without leaving anything half-written."""

from __future__ import annotations

import base64
import json
import re

import pytest

from airflow_tl.evaluation.task import evaluate_and_register
from airflow_tl.models.folder import load_model_folder
from airflow_tl.registry.naming import allocation
from airflow_tl.registry.promotion import Gate
from airflow_tl.registry.store import Registry
from tests.helpers import copy_dataset, keys_under

STRATEGIES = ["feature_extraction", "partial_freeze", "full_finetune", "from_scratch"]


def conf(demo, dataset: str, bucket: str, strategy: str, **extra) -> dict:
    settings = {
        "dataset_uri": dataset,
        "registry_uri": f"s3://{bucket}/registry",
        "work_uri": f"s3://{bucket}/work",
        "model_name": "digits",
        "epochs": 1,
    }
    if strategy == "from_scratch":  # the demo's 32 px digits, passed as the demo passes them
        settings |= {"architecture": "resnet18", "image_size": 32}
    else:
        settings["pretrained_uri"] = demo.source_model
    return settings | extra


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_dag_lands_a_complete_version(store, bucket, demo, small_target, run_dag, strategy):
    dag_id = f"tl_{strategy}"  # the file users drop into their DAG folder
    # The optimiser's knobs are Params of every strategy DAG (one conf serves all; the fitted head ignores them).
    knobs = {"optimizer": "sgd", "weight_decay": 0.0, "warmup_epochs": 0.5, "layer_decay": 0.7,
             "label_smoothing": 0.05}  # fmt: skip
    # partial_freeze names its last frozen block, as a user may instead of counting blocks.
    freeze = {"freeze_layers": "layer1"} if strategy == "partial_freeze" else {}
    result = run_dag(dag_id, conf(demo, small_target, bucket, strategy) | knobs | freeze)
    assert result.state == "success", result.failures
    summary = result.xcoms["evaluate"]
    version = "v1"  # the first version of a fresh registry; the run that made it is its metadata
    registry = Registry(store, f"s3://{bucket}/registry", "digits")
    assert summary["version"] == version and summary["model_uri"] == registry.version_uri(version)
    assert registry.versions() == [version]
    assert allocation(registry, version) == {"version": version, "dag_id": dag_id, "run_id": result.run_id,
                                             "candidate": None}  # fmt: skip

    _, card = load_model_folder(store, summary["model_uri"])  # a complete model folder, sha256-checked
    assert card.class_names == list("56789") and card.training["init"] == (
        "random" if strategy == "from_scratch" else "pretrained"
    )
    if strategy != "feature_extraction":
        assert {k: card.training[k] for k in knobs} == knobs
    if strategy == "partial_freeze":
        assert card.training["freeze_layers"] == "layer1" and card.training["frozen_blocks"] == ["stem", "layer1"]
    metrics = registry.read_metrics(version)
    assert metrics["summary"] == summary["metrics"] and metrics["context"]["strategy"] == strategy
    assert metrics["summary"]["n"] == sum(1 for k in keys_under(store, small_target) if "/test/" in k)
    assert {"per_class", "confusion", "calibration_error", "log_loss", "macro_f1"} <= set(metrics["metrics"])
    assert len(metrics["metrics"]["confusion"]) == 5

    report = store.get_bytes(summary["report_uri"]).decode()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', report)
    assert len(images) == 2 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert store.get_bytes(f"{summary['model_uri']}/plots/confusion.png") in [base64.b64decode(i) for i in images]

    # The first version of a fresh registry becomes its champion, and the history says so.
    assert summary["promoted"] and summary["reason"] == "there is no champion yet"
    champion = json.loads(store.get_bytes(f"s3://{bucket}/registry/digits/champion.json"))
    assert champion["version"] == version and champion["dag_id"] == dag_id and champion["run_id"] == result.run_id
    (event,) = registry.history()
    assert event["version"] == version and event["promoted"] and event["strategy"] == strategy
    assert _asset_event_extra(result.run_id)["version"] == version


def asset_event_extras(run_id: str) -> list[dict]:
    """The extras of the Asset events a DAG run emitted, in the order they were emitted."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(AssetEvent).where(AssetEvent.source_run_id == run_id).order_by(AssetEvent.id)
        return [dict(event.extra) for event in session.scalars(query)]


def _asset_event_extra(run_id: str) -> dict:
    (extra,) = asset_event_extras(run_id)
    return extra


def test_the_gate_keeps_a_better_champion_and_promotes_a_better_run(store, bucket, demo, small_target, run_dag):
    registry = Registry(store, f"s3://{bucket}/registry", "digits")
    runs = [
        ("partial_freeze", {"epochs": 1}),  # a network barely trained: the first champion
        ("from_scratch", {"epochs": 1, "learning_rate": 1e-6}),  # an untrained network: worse
        ("feature_extraction", {}),  # a head fitted to convergence on the pretrained features: better
    ]
    results = []
    for strategy, extra in runs:
        result = run_dag(f"tl_test_pipeline_{strategy}", conf(demo, small_target, bucket, strategy, **extra))
        assert result.state == "success", result.failures
        results.append(result.xcoms["evaluate"])
    first, worse, better = (r["metrics"]["accuracy"] for r in results)
    assert worse < first < better, (first, worse, better)  # the premise of this test

    assert [r["promoted"] for r in results] == [True, False, True]
    assert "does not beat champion" in results[1]["reason"]
    assert results[1]["champion_before"] == results[2]["champion_before"] == results[0]["version"]
    assert results[2]["champion_score"] == first  # the champion was scored again on the same test split
    assert registry.champion().champion.version == results[2]["version"]
    history = registry.history()
    assert [(e["version"], e["promoted"]) for e in history] == [(r["version"], r["promoted"]) for r in results]
    assert history[2]["champion_before"] == results[0]["version"] and "beats champion" in history[2]["reason"]
    # The worse run is registered too, just not promoted; each run got the next name.
    assert registry.versions() == [r["version"] for r in results] == ["v1", "v2", "v3"]


def test_the_pipeline_as_a_task_group_in_a_users_dag(store, bucket, demo, small_target, run_dag):
    root = f"s3://{bucket}/team"
    copy_dataset(store, small_target, f"{root}/data")
    for name in ("model.safetensors", "model.json"):
        store.copy(f"{demo.source_model}/{name}", f"{root}/source/{name}")
    result = run_dag("tl_test_group", {"root": root})
    assert result.state == "success", result.failures
    assert set(result.task_states) == {
        "retrain.fetch_pretrained", "retrain.extract_features", "retrain.train", "retrain.evaluate"
    }  # fmt: skip
    summary = result.xcoms["retrain.evaluate"]
    assert summary["promoted"] and summary["model_uri"].startswith(f"{root}/registry/grouped/versions/")


@pytest.mark.parametrize(
    ("conf_", "param"),
    [
        ({"epochs": -1}, "epochs"),
        ({"dataset_uri": "https://example.com/images"}, "dataset_uri"),
        ({"registry_uri": "/tmp/registry"}, "registry_uri"),
        ({"gate_metric": "f2"}, "gate_metric"),
        ({"freeze_layers": -1}, "freeze_layers"),
        ({"freeze_layers": "layer 3"}, "freeze_layers"),  # a block name has no spaces
    ],
)
def test_params_that_fail_validation_are_rejected_naming_the_param(run_dag, conf_, param):
    with pytest.raises(Exception, match=param) as err:
        run_dag("tl_partial_freeze", conf_)
    assert "ParamValidationError" in type(err.value).__name__ or "Invalid input for param" in str(err.value)


def test_a_gpu_the_worker_lacks_fails_training_at_its_first_try_naming_it(store, bucket, demo, small_target, run_dag):
    from airflow_tl.devices import DeviceUnavailableError
    from airflow_tl.training.config import TrainConfig
    from airflow_tl.training.task import train

    result = run_dag("tl_partial_freeze", conf(demo, small_target, bucket, "partial_freeze", device="cuda:99"))
    assert result.task_states["train"] == "failed" and result.tries["train"] == 1  # no retry can add a GPU
    assert keys_under(store, f"s3://{bucket}/registry") == []
    # What the task raised: the same call, before it reads anything.
    with pytest.raises(DeviceUnavailableError, match=r"Argument device is 'cuda:99', but this machine has "):
        train(store, model_uri=demo.source_model, dataset_uri=small_target, config=TrainConfig(),
              output_uri=f"s3://{bucket}/never", checkpoint_uri=None, device="cuda:99")  # fmt: skip
    assert keys_under(store, f"s3://{bucket}/never") == []


def test_a_test_class_the_model_does_not_know_fails_evaluation_and_registers_nothing(store, bucket, demo, run_dag):
    dataset = f"s3://{bucket}/digits-0-4-plus"
    copy_dataset(store, demo.source_dataset, dataset)
    for obj in store.list(f"{demo.target_dataset}/test/7")[:3]:
        store.put_bytes(f"{dataset}/test/seven/{obj.key.rsplit('/', 1)[1]}", store.get_bytes(obj.uri))
    registry = f"s3://{bucket}/registry"
    result = run_dag(
        "tl_test_evaluate", {"model_uri": demo.source_model, "dataset_uri": dataset, "registry_uri": registry}
    )
    assert result.state == "failed"
    (failure,) = result.failures
    assert failure["type"] == "DatasetError" and "AirflowException" in failure["mro"]
    assert (
        f"The test split of {dataset} has classes that model {demo.source_model} does not know: seven"
        in (failure["message"])
    )
    assert keys_under(store, registry) == []


def test_a_champion_pointing_at_a_missing_version_counts_as_none(store, bucket, demo, run_dag):
    registry = f"s3://{bucket}/registry"
    store.put_bytes(f"{registry}/m/champion.json", json.dumps({"version": "deleted-by-hand"}).encode())
    result = run_dag(
        "tl_test_evaluate",
        {"model_uri": demo.source_model, "dataset_uri": demo.source_dataset, "registry_uri": registry},
    )
    assert result.state == "success", result.failures
    summary = result.xcoms["evaluate"]
    assert summary["promoted"] and summary["metrics"]["accuracy"] > 0.9  # the source model on its own task
    champion = json.loads(store.get_bytes(f"{registry}/m/champion.json"))
    assert champion["version"] == summary["version"]
    (event,) = Registry(store, registry, "m").history()
    assert "deleted-by-hand" in event["problem"] and "no champion" in event["problem"]


def test_a_min_score_keeps_a_weak_model_out(store, bucket, demo, run_dag):
    registry = f"s3://{bucket}/registry"
    result = run_dag(
        "tl_test_evaluate",
        {"model_uri": demo.source_model, "dataset_uri": demo.source_dataset, "registry_uri": registry,
         "min_score": 1.01},
    )  # fmt: skip
    assert result.state == "success", result.failures
    summary = result.xcoms["evaluate"]
    assert not summary["promoted"] and "misses min_score" in summary["reason"]
    assert not store.exists(f"{registry}/m/champion.json")
    assert Registry(store, registry, "m").versions() == [summary["version"]]


def test_a_retried_evaluation_keeps_its_version_and_promotes_once(store, bucket, demo):
    """A task retried after it promoted (say the worker died before reporting success) changes nothing."""
    registry = f"s3://{bucket}/registry"
    kwargs = {"model_uri": demo.source_model, "dataset_uri": demo.source_dataset, "registry_uri": registry,
              "model_name": "m", "version": "run-1", "gate": Gate(), "context": {"run_id": "run-1"}}  # fmt: skip
    first = evaluate_and_register(store, **kwargs)
    second = evaluate_and_register(store, **kwargs)
    assert first.written and not second.written
    assert first.decision.promoted and second.decision.promoted
    assert second.decision.reason.startswith("already the champion")
    assert first.metrics.summary() == second.metrics.summary()
    reg = Registry(store, registry, "m")
    assert reg.versions() == ["run-1"] and [e["version"] for e in reg.history()] == ["run-1"]


def test_a_block_name_the_model_lacks_fails_the_run_at_its_first_try_before_any_download(
    store, bucket, demo, small_target, run_dag
):
    result = run_dag("tl_test_retrying_partial_freeze", conf(demo, small_target, bucket, "partial_freeze") | {
        "freeze_layers": "layer5"
    })  # fmt: skip
    assert result.state == "failed"
    assert result.task_states["fetch_pretrained"] == "failed" and result.tries["fetch_pretrained"] == 1  # no retry
    failure = result.failure("fetch_pretrained")
    assert failure["type"] == "InvalidArgumentError" and "AirflowFailException" in failure["mro"]
    assert (
        "Argument freeze_layers accepts only 0…5, a block name or 'all' for resnet18, whose 5 blocks are: "
        "stem, layer1, layer2, layer3, layer4. Provided value: 'layer5'." in failure["message"]
    )
    assert keys_under(store, f"s3://{bucket}") == []  # nothing fetched, trained or registered


def test_a_conf_key_that_is_not_a_param_fails_the_run_at_once_naming_it(store, bucket, demo, small_target, run_dag):
    settings = conf(demo, small_target, bucket, "partial_freeze") | {"epoch": 3, "dropout": 0.2}
    result = run_dag("tl_test_retrying_partial_freeze", settings)
    assert result.state == "failed"
    assert result.task_states["fetch_pretrained"] == "failed" and result.tries["fetch_pretrained"] == 1  # no retry
    failure = result.failure("fetch_pretrained")
    assert failure["type"] == "InvalidArgumentError"
    assert (
        "has keys that are not Params of the DAG: 'dropout', 'epoch' (did you mean 'epochs'?)" in (failure["message"])
    )
    assert "Valid Params: " in failure["message"] and "freeze_layers" in failure["message"]
    assert all(state != "success" for state in result.task_states.values())
    assert keys_under(store, f"s3://{bucket}") == []  # nothing fetched, trained or registered
