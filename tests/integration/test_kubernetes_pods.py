"""``build_dag(..., compute="kubernetes")``: the heavy tasks as pods running ``python -m airflow_tl``.

There is no cluster here. The pods are rendered as the provider builds them for the API server (image,
command, config, secrets, resources, XCom sidecar), and the rendered commands are run here against the real
S3 server: they do the work the operators do, bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.providers.cncf.kubernetes.secret import Secret
from kubernetes.client import models as k8s

from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.models.folder import read_card
from airflow_tl.operators import FetchPretrainedOperator
from airflow_tl.operators.pod import XCOM_FILE, TransferLearningPodOperator
from airflow_tl.pipelines import build_dag
from airflow_tl.registry.store import Registry
from airflow_tl.uris import slug

RUN_ID = "manual__2026-11-29T10:00:00.123456+00:00"
POD = {
    "image": "registry.example.com/airflow-tl:0.1.0",
    "namespace": "ml",
    "secrets": [Secret("env", "AIRFLOW_CONN_AWS_DEFAULT", "airflow-tl-s3", "connection")],
    "container_resources": k8s.V1ResourceRequirements(limits={"nvidia.com/gpu": "1", "memory": "16Gi"}),
    "node_selector": {"accelerator": "nvidia"},
}


def rendered(dag, task_id: str, conf: dict, xcoms: dict) -> tuple[TransferLearningPodOperator, k8s.V1Pod]:
    """The task with its fields rendered as in a run of ``dag`` with ``conf``, and the pod it would create."""
    task = dag.get_task(task_id)
    params = {name: param.value for name, param in dag.params.items()} | conf

    def xcom_pull(task_ids, map_indexes=None, key="return_value", **_):
        return xcoms[task_ids]

    ti = SimpleNamespace(
        dag_id=dag.dag_id, task_id=task_id, run_id=RUN_ID, try_number=1, map_index=-1, xcom_pull=xcom_pull
    )
    context = {"params": params, "ti": ti, "task_instance": ti, "dag": dag, "run_id": RUN_ID, "task": task}
    task.render_template_fields(context)
    # A dry run: the pod as the provider builds it, without asking a cluster whether it runs inside one.
    return task, task.build_pod_request_obj(context, dry_run=True)


def _container(pod: k8s.V1Pod) -> k8s.V1Container:
    return next(c for c in pod.spec.containers if c.name == "base")


def _config(pod: k8s.V1Pod) -> dict:
    args = _container(pod).args
    return json.loads(args[args.index("--config") + 1])


def test_the_heavy_tasks_become_pods_and_the_light_ones_stay():
    dag = build_dag("feature_extraction", dag_id="tl_pods_fx", compute="kubernetes", pod=POD, schedule=None)
    kinds = {t.task_id: type(t) for t in dag.tasks}
    assert kinds == {
        "fetch_pretrained": FetchPretrainedOperator, "extract_features": TransferLearningPodOperator,
        "train": TransferLearningPodOperator, "evaluate": TransferLearningPodOperator,
    }  # fmt: skip
    on_workers = build_dag("feature_extraction", schedule=None)
    assert dag.get_task("evaluate").outlets == on_workers.get_task("evaluate").outlets  # the model's Asset


def test_a_training_pod_renders_with_the_image_command_config_secret_gpu_and_xcom_sidecar():
    dag = build_dag("partial_freeze", dag_id="tl_pods_pf", compute="kubernetes", pod=POD, schedule=None)
    conf = {"dataset_uri": "s3://ml/flowers", "work_uri": "s3://ml/work", "epochs": 7, "freeze_layers": 2}
    _, pod = rendered(dag, "train", conf, {"fetch_pretrained": {"model_uri": "s3://ml/work/source"}})
    base = _container(pod)
    assert pod.metadata.namespace == "ml" and pod.spec.node_selector == {"accelerator": "nvidia"}
    assert base.image == POD["image"] and base.command == ["python", "-m", "airflow_tl"]
    assert base.args[0] == "train" and base.args[-4:] == ["--aws-conn-id", "aws_default", "--xcom-file", XCOM_FILE]
    # Rendered natively like every field of the DAG: "1" may come back as 1, a quantity Kubernetes reads the same.
    assert {k: str(v) for k, v in base.resources.limits.items()} == {"nvidia.com/gpu": "1", "memory": "16Gi"}
    secret = next(e for e in base.env if e.name == "AIRFLOW_CONN_AWS_DEFAULT")
    ref = secret.value_from.secret_key_ref
    assert (ref.name, ref.key) == ("airflow-tl-s3", "connection")
    assert any(c.name == "airflow-xcom-sidecar" for c in pod.spec.containers)  # reads the command's summary
    config = _config(pod)
    prefix = f"s3://ml/work/runs/tl_pods_pf/{slug(RUN_ID)}/train"
    assert config["output_uri"] == f"{prefix}/model" and config["checkpoint_uri"] == f"{prefix}/checkpoints"
    assert config["model_uri"] == "s3://ml/work/source" and config["dataset_uri"] == "s3://ml/flowers"
    assert config["epochs"] == 7 and config["freeze_layers"] == 2 and config["init"] == "pretrained"
    assert "work_uri" not in config and "execution_timeout" not in config


def test_an_evaluation_pod_names_its_run_so_the_command_takes_the_runs_version():
    dag = build_dag("full_finetune", dag_id="tl_pods_ff", compute="kubernetes", pod=POD, schedule=None)
    _, pod = rendered(dag, "evaluate", {}, {"train": {"model_uri": "s3://ml/trained"}})
    context = _config(pod)["context"]
    assert context == {
        "dag_id": "tl_pods_ff", "run_id": RUN_ID, "task_id": "evaluate", "try_number": 1, "strategy": "full_finetune"
    }  # fmt: skip


def test_kubernetes_compute_needs_an_image_and_does_not_combine_with_multinode():
    with pytest.raises(InvalidArgumentError, match=r"needs pod=\{'image': \.\.\.\}"):
        build_dag("full_finetune", compute="kubernetes")
    with pytest.raises(InvalidArgumentError, match="does not combine"):
        build_dag("full_finetune", compute="kubernetes", pod=POD, multinode=True)
    with pytest.raises(InvalidArgumentError, match="accepts only 'airflow' and 'kubernetes'"):
        build_dag("full_finetune", compute="k8s")


def _run(pod: k8s.V1Pod, tmp_path: Path) -> dict:
    """The pod's command, run here; returns what it wrote for the XCom sidecar."""
    args = _container(pod).args
    xcom = tmp_path / "xcom" / "return.json"
    args = [*args[: args.index("--xcom-file")], "--xcom-file", str(xcom)]
    done = subprocess.run(
        [sys.executable, "-m", "airflow_tl", *args], capture_output=True, text=True, env=os.environ, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(xcom.read_text())


def test_the_rendered_commands_train_what_the_operator_trains_and_register_the_runs_version(
    store, bucket, small_target, trained_by_operator, tmp_path
):
    fetched, trained = trained_by_operator["fetched"], trained_by_operator["trained"]
    dag = build_dag("full_finetune", dag_id="tl_pods_run", compute="kubernetes", pod=POD, schedule=None)
    registry = f"s3://{bucket}/registry"
    # The test DAG's training settings, as Params of the strategy DAG.
    conf = {
        "dataset_uri": small_target, "work_uri": f"s3://{bucket}/pods", "registry_uri": registry,
        "model_name": "digits", "epochs": 1, "batch_size": 32, "learning_rate": 1e-3, "on_class_change": "promote",
    }  # fmt: skip
    _, pod = rendered(dag, "train", conf, {"fetch_pretrained": {"model_uri": fetched}})
    summary = _run(pod, tmp_path / "train")
    assert read_card(store, summary["model_uri"]).weights_sha256 == read_card(store, trained).weights_sha256

    _, pod = rendered(dag, "evaluate", conf, {"train": summary})
    result = _run(pod, tmp_path / "evaluate")
    assert result["version"] == "v1" and result["promoted"], result
    (version,) = Registry(store, registry, "digits").versions()
    assert version == "v1"
