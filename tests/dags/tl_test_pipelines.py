"""The strategy DAGs as the factory builds them, without retries and with failures recorded; the same with the
factory's retries (seconds apart) to show which errors are not retried; an evaluate-only DAG for registry cases;
a pipeline whose dataset changes between training and evaluation; and the feature-extraction pipeline as a
TaskGroup inside a DAG of a user's own; tl_predict with retries."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param, task

from airflow_tl.operators import EvaluateOperator, FetchPretrainedOperator, FreezeAndTrainOperator
from airflow_tl.pipelines import STRATEGIES, build_dag, build_task_group
from airflow_tl.pipelines.predict import build_predict_dag
from tests.dag_callbacks import record_failure

NO_RETRIES = {"retries": 0, "on_failure_callback": record_failure}

for name in STRATEGIES:
    globals()[f"dag_{name}"] = build_dag(
        name, dag_id=f"tl_test_pipeline_{name}", schedule=None, default_args=NO_RETRIES
    )

# Train mapped over node ranks, meeting at the rdzv_endpoint Param.
dag_multinode = build_dag(
    "partial_freeze", dag_id="tl_test_multinode_partial_freeze", schedule=None, default_args=NO_RETRIES, multinode=True
)

# The factory's retries (2), seconds apart instead of minutes: a permanent error must still fail at the first try.
RETRIES = {
    "retries": 2,
    "retry_delay": timedelta(seconds=1),
    "retry_exponential_backoff": False,
    "on_failure_callback": record_failure,
}
dag_retrying = build_dag(
    "partial_freeze", dag_id="tl_test_retrying_partial_freeze", schedule=None, default_args=RETRIES
)

with DAG(
    dag_id="tl_test_changing_data",
    schedule=None,
    render_template_as_native_obj=True,
    default_args=RETRIES,
    params={
        "pretrained_uri": Param("", type="string"),
        "dataset_uri": Param("", type="string"),
        "registry_uri": Param("", type="string"),
        "work_uri": Param("", type="string"),
        "add_from": Param(None, type=["null", "string"]),  # a class folder copied in after training
        "remove": Param(None, type=["null", "string"]),  # a class folder deleted after training
    },
):

    @task
    def change_dataset(params=None) -> None:
        from airflow_tl.hooks.s3 import s3_store

        store = s3_store()
        if params["add_from"]:
            name = params["add_from"].rstrip("/").rsplit("/", 1)[1]
            for obj in store.list(params["add_from"]):
                store.copy(obj.uri, f"{params['dataset_uri']}/{name}/{obj.key.rsplit('/', 1)[1]}")
        if params["remove"]:
            store.delete_folder(f"{params['dataset_uri']}/{params['remove']}")

    fetch = FetchPretrainedOperator(
        task_id="fetch_pretrained", pretrained_uri="{{ params.pretrained_uri }}", work_uri="{{ params.work_uri }}"
    )
    train = FreezeAndTrainOperator(
        task_id="train",
        model_uri="{{ ti.xcom_pull(task_ids='fetch_pretrained')['model_uri'] }}",
        dataset_uri="{{ params.dataset_uri }}",
        freeze_layers=5,
        epochs=1,
        work_uri="{{ params.work_uri }}",
    )
    evaluate = EvaluateOperator(
        task_id="evaluate",
        model_uri="{{ ti.xcom_pull(task_ids='train')['model_uri'] }}",
        dataset_uri="{{ params.dataset_uri }}",
        registry_uri="{{ params.registry_uri }}",
        model_name="digits",
        work_uri="{{ params.work_uri }}",
    )
    fetch >> train >> change_dataset() >> evaluate

with DAG(
    dag_id="tl_test_evaluate",
    schedule=None,
    render_template_as_native_obj=True,
    default_args=NO_RETRIES,
    params={
        "model_uri": Param("", type="string"),
        "dataset_uri": Param("", type="string"),
        "registry_uri": Param("", type="string"),
        "model_name": Param("m", type="string"),
        "gate_metric": Param("accuracy", type="string"),
        "min_improvement": Param(0.0, type="number"),
        "min_score": Param(None, type=["null", "number"]),
    },
):
    EvaluateOperator(
        task_id="evaluate",
        model_uri="{{ params.model_uri }}",
        dataset_uri="{{ params.dataset_uri }}",
        registry_uri="{{ params.registry_uri }}",
        model_name="{{ params.model_name }}",
        gate_metric="{{ params.gate_metric }}",
        min_improvement="{{ params.min_improvement }}",
        min_score="{{ params.min_score }}",
    )

with DAG(dag_id="tl_test_group", schedule=None, default_args=NO_RETRIES, params={"root": Param("", type="string")}):
    build_task_group(
        "feature_extraction",
        group_id="retrain",
        settings={
            "dataset_uri": "{{ params.root }}/data",
            "pretrained_uri": "{{ params.root }}/source",
            "registry_uri": "{{ params.root }}/registry",
            "model_name": "grouped",
            "work_uri": "{{ params.root }}/work",
            "epochs": 2,
        },
    )

# tl_predict with the factory's retries, seconds apart: an interrupted try is finished by the next.
dag_predict = build_predict_dag(dag_id="tl_test_predict", schedule=None, default_args=RETRIES)
