"""Retraining when data arrives: one DAG lands new images and emits the dataset's Asset, another retrains on it.

`tl_land_images` moves the images waiting under the incoming prefix into the dataset (same layout:
`<split>/<class>/<file>` or `<class>/<file>`) and, when any landed, emits the dataset's Asset.
`tl_retrain_on_data` is scheduled on that Asset: it assesses the grown dataset, runs the strategy the
advice names, and gates the result against the champion. Your own ingestion DAG can emit the same Asset
instead (`outlets=[dataset_asset(uri)]`). Point both at your data with `AIRFLOW_TL_RETRAIN_DATASET` and
`AIRFLOW_TL_RETRAIN_INCOMING`. See docs/deploy.md, "Retraining when data arrives".
"""

import os

from airflow.sdk import DAG, task

from airflow_tl.pipelines import build_auto_dag
from airflow_tl.pipelines.assets import dataset_asset
from airflow_tl.pipelines.params import DEMO_DEFAULTS

DATASET = os.environ.get("AIRFLOW_TL_RETRAIN_DATASET", DEMO_DEFAULTS["dataset_uri"])
INCOMING = os.environ.get(
    "AIRFLOW_TL_RETRAIN_INCOMING", DEMO_DEFAULTS["dataset_uri"].replace("/datasets/", "/incoming/")
)

with DAG(
    dag_id="tl_land_images",
    description="Land new images in the dataset; emits its Asset, which retrains tl_retrain_on_data",
    schedule=None,
    catchup=False,
    tags=["airflow-tl", "example"],
    doc_md=__doc__,
):

    @task(outlets=[dataset_asset(DATASET)], retries=2)
    def land_new_images() -> dict:
        """Move incoming images into the dataset; skipped (no Asset event, no retraining) when there are none."""
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_tl.data.landing import land_images
        from airflow_tl.hooks.s3 import s3_store

        landed = land_images(s3_store("aws_default"), incoming_uri=INCOMING, dataset_uri=DATASET)
        if not landed.keys:
            raise AirflowSkipException(f"No new images under {INCOMING}: nothing to retrain on.")
        return {"landed": len(landed.keys), "not_images": len(landed.left), "dataset_uri": DATASET}

    land_new_images()

dag = build_auto_dag(
    dag_id="tl_retrain_on_data", schedule=dataset_asset(DATASET), param_defaults={"dataset_uri": DATASET}
)
