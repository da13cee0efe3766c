"""Test DAGs around FetchPretrainedOperator that record why a task failed (Airflow keeps no such record):
one rendering templates as native objects, one rendering them as strings (as a DAG does by default), and
one whose second task takes its model URI from an upstream XCom, for the allowed-prefix check."""

from __future__ import annotations

from airflow.sdk import DAG, Param, task

from airflow_tl.operators import ExtractFeaturesOperator, FetchPretrainedOperator
from tests.dag_callbacks import record_failure

FETCH_PARAMS = {
    "pretrained_uri": Param(None, type=["null", "string"]),
    "architecture": Param(None, type=["null", "string"]),
    "init": Param("pretrained", type="string"),
    "class_names": Param(None, type=["null", "array"]),
    "num_classes": Param(None, type=["null", "integer"]),
    "output_uri": Param(None, type=["null", "string"]),
    "work_uri": Param(None, type=["null", "string"]),
    "weights_mirror": Param(None, type=["null", "string"]),
    "seed": Param(0, type=["integer", "string"]),  # a string too, to see a bad one refused by the operator
}
NO_RETRIES = {"retries": 0, "on_failure_callback": record_failure}


def fetch_task() -> FetchPretrainedOperator:
    return FetchPretrainedOperator(
        task_id="fetch",
        pretrained_uri="{{ params.pretrained_uri }}",
        architecture="{{ params.architecture }}",
        init="{{ params.init }}",
        class_names="{{ params.class_names }}",
        num_classes="{{ params.num_classes }}",
        output_uri="{{ params.output_uri }}",
        work_uri="{{ params.work_uri }}",
        weights_mirror="{{ params.weights_mirror }}",
        seed="{{ params.seed }}",
    )


with DAG(
    dag_id="tl_test_fetch",
    schedule=None,
    render_template_as_native_obj=True,
    default_args=NO_RETRIES,
    params=FETCH_PARAMS,
):
    fetch_task()

# Without render_template_as_native_obj: every template renders to a string ("None", "['a', 'b']", "3").
with DAG(dag_id="tl_test_fetch_rendered", schedule=None, default_args=NO_RETRIES, params=FETCH_PARAMS):
    fetch_task()

with DAG(
    dag_id="tl_test_access",
    schedule=None,
    default_args=NO_RETRIES,
    params={
        "model_uri": Param("", type="string"),
        "dataset_uri": Param("", type="string"),
        "work_uri": Param("", type="string"),
    },
):

    @task
    def upstream(params=None) -> dict[str, str]:
        return {"model_uri": params["model_uri"]}

    upstream() >> ExtractFeaturesOperator(
        task_id="extract_features",
        model_uri="{{ ti.xcom_pull(task_ids='upstream')['model_uri'] }}",
        dataset_uri="{{ params.dataset_uri }}",
        work_uri="{{ params.work_uri }}",
    )
