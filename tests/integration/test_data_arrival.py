"""Retraining when data arrives, through real DAG runs against the real S3 server: landing new images emits
the dataset's Asset, landing nothing emits nothing, and the retraining DAG is scheduled on that Asset."""

from __future__ import annotations

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
    dataset, incoming = f"s3://{bucket}/datasets/flowers", f"s3://{bucket}/incoming/flowers"
    copy_dataset(store, small_target, dataset)
    before = {o.key for o in store.list(dataset)}
    new = [o for o in store.list(f"{small_target}/train/5")][:3]
    for number, obj in enumerate(new):
        store.put_bytes(f"{incoming}/train/5/new-{number}.png", store.get_bytes(obj.uri))
    store.put_bytes(f"{incoming}/README.txt", b"drop images here")
    monkeypatch.setenv("AIRFLOW_TL_RETRAIN_DATASET", dataset)
    monkeypatch.setenv("AIRFLOW_TL_RETRAIN_INCOMING", incoming)

    first = run_dag("tl_land_images")
    assert first.state == "success", first.failures
    assert first.xcoms["land_new_images"] == {"landed": 3, "not_images": 1, "dataset_uri": dataset}
    added = {o.key for o in store.list(dataset)} - before
    assert added == {f"datasets/flowers/train/5/new-{n}.png" for n in range(3)}
    assert [o.key for o in store.list(incoming)] == ["incoming/flowers/README.txt"]  # not an image: left alone
    asset = dataset_asset(dataset).uri
    assert [run for run, _ in _events(asset)] == [first.run_id]

    again = run_dag("tl_land_images")
    assert again.task_states["land_new_images"] == "skipped"
    assert [run for run, _ in _events(asset)] == [first.run_id]  # nothing landed, nothing to retrain on


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
