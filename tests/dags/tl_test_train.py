"""Test DAGs for the four strategies: fetch → (extract) → train, with failures recorded for assertions."""

from __future__ import annotations

from airflow.sdk import DAG, Param

from airflow_tl.operators import ExtractFeaturesOperator, FetchPretrainedOperator, FreezeAndTrainOperator
from tests.dag_callbacks import record_failure

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
            "num_processes": Param(1, type="integer"),
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
                num_processes="{{ params.num_processes }}",
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
            num_processes="{{ params.num_processes }}",
            work_uri="{{ params.work_uri }}",
            **train_kwargs,
        )
        (extract if spec["features"] else fetch) >> train
