"""A test DAG around FetchPretrainedOperator that records why a task failed (Airflow keeps no such record)."""

from __future__ import annotations

from airflow.sdk import DAG, Param

from airflow_tl.operators import FetchPretrainedOperator
from tests.dag_callbacks import record_failure

with DAG(
    dag_id="tl_test_fetch",
    schedule=None,
    render_template_as_native_obj=True,
    default_args={"retries": 0, "on_failure_callback": record_failure},
    params={
        "pretrained_uri": Param(None, type=["null", "string"]),
        "architecture": Param(None, type=["null", "string"]),
        "init": Param("pretrained", type="string"),
        "class_names": Param(None, type=["null", "array"]),
        "num_classes": Param(None, type=["null", "integer"]),
        "output_uri": Param(None, type=["null", "string"]),
        "work_uri": Param(None, type=["null", "string"]),
        "weights_mirror": Param(None, type=["null", "string"]),
        "seed": Param(0, type="integer"),
    },
):
    FetchPretrainedOperator(
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
