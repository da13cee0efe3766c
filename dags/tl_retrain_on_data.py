"""Retraining when data arrives: one DAG lands new images and emits the dataset's Asset, another retrains on it.

`tl_land_images` runs continuously, one run at a time: it waits, deferred in the triggerer and without a
worker slot, until images appear under the incoming prefix, then moves them into the dataset (same layout:
`<split>/<class>/<file>` or `<class>/<file>`) and emits the dataset's Asset. A wait with no image for a day
ends the run as skipped, and the next run waits again.
`tl_retrain_on_data` is scheduled on that Asset: it assesses the grown dataset, runs the strategy the
advice names, and gates the result against the champion. Your own ingestion DAG can emit the same Asset
instead (`outlets=[dataset_asset(uri)]`). Point both at your data with `AIRFLOW_TL_RETRAIN_DATASET` and
`AIRFLOW_TL_RETRAIN_INCOMING`; `AIRFLOW_TL_RETRAIN_POKE_INTERVAL` sets the seconds between two listings
of the incoming prefix (default 60) and `AIRFLOW_TL_RETRAIN_WAIT_TIMEOUT` the seconds a run waits (default
a day). See docs/deploy.md, "Retraining when data arrives".
"""

import os
from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG, task

from airflow_tl.operators.wait import WaitForImagesOperator
from airflow_tl.pipelines import build_auto_dag
from airflow_tl.pipelines.assets import dataset_asset
from airflow_tl.pipelines.params import DEMO_DEFAULTS

DATASET = os.environ.get("AIRFLOW_TL_RETRAIN_DATASET", DEMO_DEFAULTS["dataset_uri"])
INCOMING = os.environ.get(
    "AIRFLOW_TL_RETRAIN_INCOMING", DEMO_DEFAULTS["dataset_uri"].replace("/datasets/", "/incoming/")
)
POKE_INTERVAL = float(os.environ.get("AIRFLOW_TL_RETRAIN_POKE_INTERVAL", "60"))
WAIT_TIMEOUT = timedelta(seconds=float(os.environ.get("AIRFLOW_TL_RETRAIN_WAIT_TIMEOUT", 24 * 3600)))

with DAG(
    dag_id="tl_land_images",
    description="Wait for new images, land them in the dataset; emits its Asset, which retrains tl_retrain_on_data",
    schedule="@continuous",
    # @continuous starts each run's interval where the last one ended. Without a start date the first
    # interval is empty, and the second run would repeat the first's logical date and never be created.
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    max_active_runs=1,  # @continuous requires it: one wait at a time
    # A continuous DAG that fails (S3 unreachable, a bad prefix) would start failing again at once: pause it.
    max_consecutive_failed_dag_runs=3,
    catchup=False,
    tags=["airflow-tl", "example"],
    doc_md=__doc__,
):
    wait = WaitForImagesOperator(task_id="wait_for_images", incoming_uri=INCOMING, poke_interval=POKE_INTERVAL,
                                 wait_timeout=WAIT_TIMEOUT, retries=2)  # fmt: skip

    @task(outlets=[dataset_asset(DATASET)], retries=2)
    def land_new_images() -> dict:
        """Move incoming images into the dataset; skipped (no Asset event, no retraining) when none are left."""
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_tl.data.landing import land_images
        from airflow_tl.hooks.s3 import s3_store

        landed = land_images(s3_store("aws_default"), incoming_uri=INCOMING, dataset_uri=DATASET)
        if not landed.keys:
            raise AirflowSkipException(f"No new images under {INCOMING}: nothing to retrain on.")
        return {"landed": len(landed.keys), "not_images": len(landed.left), "dataset_uri": DATASET}

    wait >> land_new_images()

dag = build_auto_dag(
    dag_id="tl_retrain_on_data", schedule=dataset_asset(DATASET), param_defaults={"dataset_uri": DATASET}
)
