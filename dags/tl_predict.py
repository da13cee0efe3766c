"""Put the champion to work: score the images under a prefix whenever a new model or new images land.

Scheduled on the registry model's Asset (the evaluate task of every strategy DAG updates it) and on the dataset
Asset of the prefix (`tl_land_images` or your own ingestion DAG emits it): a new champion rescans the prefix,
new images are scored, and a run that finds nothing new only lists. Point it at your data with
`AIRFLOW_TL_PREDICT_DATASET`, `AIRFLOW_TL_PREDICT_REGISTRY`, `AIRFLOW_TL_PREDICT_MODEL` and
`AIRFLOW_TL_PREDICT_OUTPUT` (Asset-triggered runs take the Params' defaults, which these set). See docs/predict.md.
"""

import os

from airflow_tl.pipelines.assets import dataset_asset, model_asset
from airflow_tl.pipelines.predict import PREDICT_DEFAULTS, build_predict_dag

DATASET = os.environ.get("AIRFLOW_TL_PREDICT_DATASET", PREDICT_DEFAULTS["dataset_uri"])
REGISTRY = os.environ.get("AIRFLOW_TL_PREDICT_REGISTRY", PREDICT_DEFAULTS["registry_uri"])
MODEL = os.environ.get("AIRFLOW_TL_PREDICT_MODEL", PREDICT_DEFAULTS["model_name"])
OUTPUT = os.environ.get("AIRFLOW_TL_PREDICT_OUTPUT", PREDICT_DEFAULTS["output_uri"])

dag = build_predict_dag(
    schedule=model_asset(REGISTRY, MODEL) | dataset_asset(DATASET),
    param_defaults={"dataset_uri": DATASET, "registry_uri": REGISTRY, "model_name": MODEL, "output_uri": OUTPUT},
)
