"""Retraining when data arrives, through real DAG runs against the real S3 server: landing new images emits
the dataset's Asset, landing nothing emits nothing, and the retraining DAG is scheduled on that Asset."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from airflow_tl.data.landing import land_images
from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.pipelines.assets import dataset_asset
from tests.helpers import copy_dataset


def _events(asset_uri: str) -> list[tuple[str, dict]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = (
            select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id).where(AssetModel.uri == asset_uri)
        )
        return [(e.source_run_id, dict(e.extra)) for e in session.scalars(query)]


def test_landing_new_images_emits_the_dataset_asset_and_landing_none_emits_nothing(
    store, bucket, small_target, run_dag, monkeypatch
):
    dataset, incoming = f"s3://{bucket}/datasets/flowers", f"s3://{bucket}/incoming/[odd] flowers"
    copy_dataset(store, small_target, dataset)
    before = {o.key for o in store.list(dataset)}
    image = store.get_bytes(store.list(f"{small_target}/train/5")[0].uri)
    for number in range(3):
        store.put_bytes(f"{incoming}/train/5/new-{number}.png", image)
    store.put_bytes(f"{incoming}/README.txt", b"drop images here")
    monkeypatch.setenv("AIRFLOW_TL_RETRAIN_DATASET", dataset)
    monkeypatch.setenv("AIRFLOW_TL_RETRAIN_INCOMING", incoming)
    monkeypatch.setenv("AIRFLOW_TL_RETRAIN_POKE_INTERVAL", "0.5")

    first = run_dag("tl_land_images")  # images already wait: no deferral
    assert first.state == "success", first.failures
    assert first.xcoms["wait_for_images"] == {"incoming_uri": incoming, "images": 3, "not_images": 1}
    assert first.xcoms["land_new_images"] == {"landed": 3, "not_images": 1, "dataset_uri": dataset}
    added = {o.key for o in store.list(dataset)} - before
    assert added == {f"datasets/flowers/train/5/new-{n}.png" for n in range(3)}
    assert [o.key for o in store.list(incoming)] == ["incoming/[odd] flowers/README.txt"]  # not an image: left
    asset = dataset_asset(dataset).uri
    assert [run for run, _ in _events(asset)] == [first.run_id]

    # Only the README waits now: the wait defers to the amazon provider's S3KeyTrigger, which fires on the
    # README; the task finds no image and defers again, until an image arrives while it waits.
    late = threading.Timer(4, store.put_bytes, (f"{incoming}/train/6/late.png", image))
    late.start()
    started = time.monotonic()
    second = run_dag("tl_land_images")
    late.join()
    assert second.state == "success", second.failures
    assert time.monotonic() - started >= 4  # it waited for the late image
    assert second.xcoms["land_new_images"]["landed"] == 1
    assert store.exists(f"{dataset}/train/6/late.png")
    assert [run for run, _ in _events(asset)] == [first.run_id, second.run_id]

    monkeypatch.setenv("AIRFLOW_TL_RETRAIN_WAIT_TIMEOUT", "1")
    third = run_dag("tl_land_images")  # the README wakes the wait after its timeout: no image, skipped
    assert third.state == "success", third.failures
    assert third.task_states == {"wait_for_images": "skipped", "land_new_images": "skipped"}
    assert [run for run, _ in _events(asset)] == [first.run_id, second.run_id]  # nothing landed, no retraining


def test_the_retraining_dag_is_scheduled_on_the_dataset_asset(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("AIRFLOW_TL_RETRAIN_DATASET", "s3://ml-data/flowers/")
    dag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags")).dags["tl_retrain_on_data"]
    assert dag.timetable.asset_condition == dataset_asset("s3://ml-data/flowers")
    assert dag.params["dataset_uri"] == "s3://ml-data/flowers/"
    assert dataset_asset("s3://ml-data/flowers/").uri == "x-airflow-tl-data://ml-data/flowers"


def test_incoming_images_inside_the_dataset_are_refused(store, bucket):
    with pytest.raises(InvalidArgumentError, match="lies inside dataset_uri"):
        land_images(store, incoming_uri=f"s3://{bucket}/ds/incoming", dataset_uri=f"s3://{bucket}/ds")
