"""Airflow Assets for what the pipelines read and write: a dataset prefix, and a registry's model.

A DAG that lands new images emits the dataset's Asset; a strategy DAG scheduled on it retrains when they
arrive. The evaluate task updates the model's Asset with the new version, so DAGs scheduled on it see what
changed. Both use Airflow's ``x-`` scheme for custom assets: an ``s3://`` asset would run the amazon
provider's URI normaliser, which imports boto3 on every parse of the DAG file.
"""

from __future__ import annotations

from airflow.sdk import Asset

ASSET_SCHEME = "x-airflow-tl"
DATASET_SCHEME = "x-airflow-tl-data"


def _location(uri: str) -> str:
    return uri.strip().rstrip("/").removeprefix("s3://")


def model_asset(registry_uri: str, model_name: str) -> Asset:
    """The registry's model: its events carry the version, whether it was promoted, and its metrics."""
    return Asset(uri=f"{ASSET_SCHEME}://{_location(registry_uri)}/{model_name}", name=f"airflow-tl/{model_name}",
                 group="ml-model")  # fmt: skip


def dataset_asset(dataset_uri: str) -> Asset:
    """The image dataset under ``dataset_uri`` (``s3://bucket/prefix``, with or without a trailing slash)."""
    location = _location(dataset_uri)
    return Asset(uri=f"{DATASET_SCHEME}://{location}", name=f"airflow-tl-data/{location}", group="ml-dataset")
