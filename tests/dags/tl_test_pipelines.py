"""The strategy DAGs as the factory builds them, without retries and with failures recorded; an evaluate-only
DAG for registry cases; and the feature-extraction pipeline as a TaskGroup inside a DAG of a user's own."""

from __future__ import annotations

from airflow.sdk import DAG, Param

from airflow_tl.operators import EvaluateOperator
from airflow_tl.pipelines import STRATEGIES, build_dag, build_task_group
from tests.dag_callbacks import record_failure

NO_RETRIES = {"retries": 0, "on_failure_callback": record_failure}

for name in STRATEGIES:
    globals()[f"dag_{name}"] = build_dag(
        name, dag_id=f"tl_test_pipeline_{name}", schedule=None, default_args=NO_RETRIES
    )

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
