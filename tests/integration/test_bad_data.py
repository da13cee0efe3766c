"""Bad data through real DAG runs: each fails at its first try (the DAG allows retries), names the object, and
leaves the registry and its champion exactly as they were."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from airflow_tl.evaluation.task import evaluate_and_register
from airflow_tl.registry.promotion import Gate
from tests.faultproxy import Fault
from tests.helpers import copy_dataset, flatten_dataset, snapshot


@pytest.fixture
def registry(store, bucket, demo) -> str:
    """A registry whose champion is the demo's source model, so a failed run could have disturbed it."""
    uri = f"s3://{bucket}/registry"
    evaluate_and_register(
        store, model_uri=demo.source_model, dataset_uri=demo.source_dataset, registry_uri=uri, model_name="digits",
        version="champion", gate=Gate(),
    )  # fmt: skip
    return uri


def conf(demo, dataset: str, bucket: str, registry: str) -> dict:
    return {
        "dataset_uri": dataset,
        "pretrained_uri": demo.source_model,
        "registry_uri": registry,
        "model_name": "digits",
        "work_uri": f"s3://{bucket}/work",
        "epochs": 1,
    }


def assert_failed_once(result, task_id: str, error: str, *fragments: str) -> str:
    assert result.state == "failed"
    assert result.task_states[task_id] == "failed" and result.tries[task_id] == 1  # no retries, although allowed
    failure = result.failure(task_id)
    assert failure["type"] == error and "AirflowFailException" in failure["mro"]
    for fragment in fragments:
        assert fragment in failure["message"], failure["message"]
    return failure["message"]


def test_mixed_layouts(store, bucket, demo, small_target, registry, run_dag):
    dataset = f"s3://{bucket}/mixed"
    copy_dataset(store, small_target, dataset)
    store.copy(store.list(f"{small_target}/train/5")[0].uri, f"{dataset}/5/extra.png")
    before = snapshot(store, registry)

    result = run_dag("tl_test_retrying_partial_freeze", conf(demo, dataset, bucket, registry))

    assert_failed_once(result, "train", "DatasetError", f"Dataset {dataset} mixes split folders", "5/", "layout=")
    assert snapshot(store, registry) == before


def test_split_folders_with_unexpected_names(store, bucket, demo, small_target, registry, run_dag):
    dataset = f"s3://{bucket}/renamed"
    for obj in store.list(small_target):
        rel = obj.key.split("/", 2)[2]  # datasets/<name>/<split>/...
        split, rest = rel.split("/", 1)
        store.copy(obj.uri, f"{dataset}/{ {'train': 'Train', 'val': 'validation'}.get(split, split) }/{rest}")
    before = snapshot(store, registry)

    result = run_dag("tl_test_retrying_partial_freeze", conf(demo, dataset, bucket, registry))

    message = assert_failed_once(result, "train", "DatasetError", f"Dataset {dataset}", "Train/", "validation/")
    assert "Train/ -> train/" in message and "validation/ -> val/" in message
    assert snapshot(store, registry) == before


@pytest.mark.parametrize(
    ("change", "what"),
    [({"add_from": "source:train/3"}, "class folders appeared: 3"), ({"remove": "9"}, "class folders vanished: 9")],
)
def test_the_dataset_changing_between_training_and_evaluation(
    store, bucket, demo, small_target, registry, run_dag, change, what
):
    dataset = f"s3://{bucket}/flat"
    flatten_dataset(store, small_target, dataset)
    if "add_from" in change:
        change = {"add_from": f"{demo.source_dataset}/{change['add_from'].split(':', 1)[1]}"}
    before = snapshot(store, registry)

    result = run_dag(
        "tl_test_changing_data",
        {"pretrained_uri": demo.source_model, "dataset_uri": dataset, "registry_uri": registry,
         "work_uri": f"s3://{bucket}/work", **change},
    )  # fmt: skip

    assert result.task_states["train"] == "success"
    assert_failed_once(
        result, "evaluate", "DatasetChangedError", f"Dataset {dataset} changed since the training of", what
    )
    assert snapshot(store, registry) == before


@pytest.fixture
def through_proxy(proxy, monkeypatch):
    """The DAG's S3 traffic through the fault proxy (seeding and checks go straight to the S3 server)."""
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", proxy.connection())
    return proxy


def test_access_denied_on_the_dataset(store, bucket, demo, small_target, registry, run_dag, through_proxy):
    dataset = f"s3://{bucket}/private"
    copy_dataset(store, small_target, dataset)
    before = snapshot(store, registry)
    through_proxy.use(Fault("deny", methods=("GET",), path=rf"^/{bucket}\?.*prefix=private/"))

    result = run_dag("tl_test_retrying_partial_freeze", conf(demo, dataset, bucket, registry))

    assert through_proxy.injected["deny"] == 1  # asked once: an AccessDenied is not retried
    assert_failed_once(result, "train", "AccessDeniedError", f"s3://{bucket}/private", "AccessDenied")
    assert snapshot(store, registry) == before


def test_an_image_deleted_between_listing_and_reading(
    store, bucket, demo, small_target, registry, run_dag, through_proxy
):
    dataset = f"s3://{bucket}/shrinking"
    copy_dataset(store, small_target, dataset)
    before = snapshot(store, registry)
    images = Fault("hold", methods=("GET",), path=rf"^/{bucket}/shrinking/train/")
    through_proxy.use(images)

    def delete_the_first_image_asked_for() -> str:
        images.arrived.wait(300)
        time.sleep(0.5)  # the loader's other threads ask for their images too
        key = through_proxy.events[0].path.split("/", 2)[2]
        store.delete(f"s3://{bucket}/{key}")
        images.release()
        return key

    with ThreadPoolExecutor(1) as pool:
        deleted = pool.submit(delete_the_first_image_asked_for)
        result = run_dag("tl_test_retrying_partial_freeze", conf(demo, dataset, bucket, registry))

    assert_failed_once(
        result, "train", "DatasetChangedError", f"image s3://{bucket}/{deleted.result()} was listed", "no longer exists"
    )
    assert snapshot(store, registry) == before
