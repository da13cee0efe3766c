"""Placing tasks on workers: queue, pool and executor by task id, kept through Airflow's serialisation."""

from __future__ import annotations

import pytest
from airflow.sdk import DAG

from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.pipelines import build_dag, build_task_group, build_tournament_dag, on_gpu_workers
from airflow_tl.pipelines.placement import GPU_TASKS


def _as_scheduled(dag):
    """The DAG as the scheduler and executors see it: serialised and read back."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))


def test_gpu_work_of_every_contender_goes_to_the_gpu_queue_and_the_rest_stays():
    dag = _as_scheduled(build_tournament_dag(dag_id="tl_placed", task_args=on_gpu_workers(queue="gpu", pool="gpus")))
    placed = {t.task_id: (t.queue, t.pool) for t in dag.tasks}
    for strategy in ("feature_extraction", "partial_freeze", "full_finetune", "from_scratch"):
        assert placed[f"{strategy}.train"] == ("gpu", "gpus")
        assert placed[f"{strategy}.evaluate"] == ("gpu", "gpus")
    assert placed["feature_extraction.extract_features"] == ("gpu", "gpus")
    assert placed["assess"] == placed["tournament"] == ("gpu", "gpus")
    assert placed["fetch_pretrained"] == placed["enter_contenders"] == ("default", "default_pool")


def test_a_kubernetes_pod_and_an_executor_reach_the_serialised_task():
    pod = {"pod_override": {"spec": {"node_selector": {"accelerator": "nvidia"}}}}
    args = on_gpu_workers(queue=None, executor="KubernetesExecutor", executor_config=pod)
    dag = _as_scheduled(build_dag("full_finetune", dag_id="tl_pods", task_args=args))
    train, fetch = dag.get_task("train"), dag.get_task("fetch_pretrained")
    assert train.executor == "KubernetesExecutor" and train.executor_config == pod and train.queue == "default"
    assert fetch.executor is None and fetch.executor_config == {}


def test_task_args_in_a_users_task_group_match_ids_without_the_group():
    with DAG(dag_id="users_dag", schedule=None):
        group = build_task_group(
            "partial_freeze",
            group_id="retrain",
            settings={"dataset_uri": "s3://b/d", "registry_uri": "s3://b/r", "model_name": "m", "work_uri": "s3://b/w",
                      "pretrained_uri": "s3://b/p"},
            task_args={"train": {"queue": "gpu", "pool_slots": 2, "priority_weight": 5}},
        )  # fmt: skip
    train = group.children["retrain.train"]
    assert (train.queue, train.pool_slots, train.priority_weight) == ("gpu", 2, 5)


@pytest.mark.parametrize(
    ("task_args", "message"),
    [
        ({"trian": {"queue": "gpu"}}, r"'trian', which no airflow-tl DAG has; this DAG's tasks: evaluate, fetch_pre"),
        ({"tournament": {"pool": "x"}, "trian": {"pool": "x"}}, r"task 'trian'"),
        ({"train": {"retries": 5}}, r"task_args\['train'\] sets retries; only queue, pool, pool_slots"),
        ({"train": {"pool_slots": 0}}, r"'pool_slots'\] must be an integer >= 1, got 0"),
    ],
)
def test_a_task_or_argument_that_cannot_apply_is_refused_naming_it(task_args, message):
    with pytest.raises(InvalidArgumentError, match=message):
        build_dag("full_finetune", dag_id="tl_bad_placement", task_args=task_args)


def test_the_gpu_tasks_are_the_ones_that_run_the_network():
    from airflow_tl.operators import (
        AssessTransferOperator,
        EvaluateOperator,
        ExtractFeaturesOperator,
        FreezeAndTrainOperator,
    )  # fmt: skip
    from airflow_tl.operators.tournament import TournamentOperator

    dag = build_tournament_dag(dag_id="tl_gpu_tasks")
    network = (AssessTransferOperator, EvaluateOperator, ExtractFeaturesOperator, FreezeAndTrainOperator,
               TournamentOperator)  # fmt: skip
    running = {t.task_id.rsplit(".", 1)[-1] for t in dag.tasks if isinstance(t, network)}
    assert running == set(GPU_TASKS)
    assert all("device" in type(t).template_fields for t in dag.tasks if isinstance(t, network))
