"""Test DAGs for the four strategies: fetch → (extract) → train, with failures recorded for assertions."""

from __future__ import annotations

import json
import os

from airflow.sdk import DAG, Param

from airflow_tl.operators import ExtractFeaturesOperator, FetchPretrainedOperator, FreezeAndTrainOperator


def record_failure(context) -> None:
    error = context.get("exception")
    with open(os.environ["AIRFLOW_TL_TEST_FAILURES"], "a") as fh:
        record = {"task_id": context["ti"].task_id, "type": type(error).__name__, "message": str(error)}
        record["mro"] = [c.__name__ for c in type(error).__mro__]
        fh.write(json.dumps(record) + "\n")


STRATEGIES = {
    "feature_extraction": {"freeze_layers": "all", "init": "pretrained", "features": True},
    "partial_freeze": {"freeze_layers": "{{ params.freeze_layers }}", "init": "pretrained", "features": False},
    "full_finetune": {"freeze_layers": 0, "init": "pretrained", "features": False},
    "from_scratch": {"freeze_layers": 0, "init": "random", "features": False},
}

for strategy, spec in STRATEGIES.items():
    with DAG(
        dag_id=f"tl_test_train_{strategy}",
        schedule=None,
        render_template_as_native_obj=True,
        default_args={"retries": 0, "on_failure_callback": record_failure},
        params={
            "pretrained_uri": Param("", type="string"),
            "dataset_uri": Param("", type="string"),
            "work_uri": Param("", type="string"),
            "epochs": Param(2, type="integer"),
            "batch_size": Param(32, type="integer"),
            "learning_rate": Param(1e-3, type="number"),
            "freeze_layers": Param(3, type=["integer", "string"]),
            "skip_corrupt": Param(False, type="boolean"),
            "seed": Param(0, type="integer"),
        },
    ):
        fetch = FetchPretrainedOperator(
            task_id="fetch",
            pretrained_uri="{{ params.pretrained_uri }}",
            init=spec["init"],
            work_uri="{{ params.work_uri }}",
        )
        train_kwargs = {}
        if spec["features"]:
            extract = ExtractFeaturesOperator(
                task_id="extract_features",
                model_uri="{{ ti.xcom_pull('fetch')['model_uri'] }}",
                dataset_uri="{{ params.dataset_uri }}",
                skip_corrupt="{{ params.skip_corrupt }}",
                work_uri="{{ params.work_uri }}",
            )
            fetch >> extract
            train_kwargs["features_uri"] = "{{ ti.xcom_pull('extract_features')['features_uri'] }}"
        else:
            train_kwargs["dataset_uri"] = "{{ params.dataset_uri }}"
        train = FreezeAndTrainOperator(
            task_id="train",
            model_uri="{{ ti.xcom_pull('fetch')['model_uri'] }}",
            freeze_layers=spec["freeze_layers"],
            init=spec["init"],
            epochs="{{ params.epochs }}",
            batch_size="{{ params.batch_size }}",
            learning_rate="{{ params.learning_rate }}",
            skip_corrupt="{{ params.skip_corrupt }}",
            seed="{{ params.seed }}",
            work_uri="{{ params.work_uri }}",
            **train_kwargs,
        )
        (extract if spec["features"] else fetch) >> train
