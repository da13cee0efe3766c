"""TransferLearningPodOperator: an airflow-tl command (``python -m airflow_tl ...``) in a Kubernetes pod.

What ``build_dag(strategy, compute="kubernetes", pod={...})`` puts in place of the heavy tasks (extraction,
training, evaluation): Airflow orchestrates, the pod computes, with the same plain code and the same S3
contract as the operators (``airflow_tl.cli``). Needs the ``kubernetes`` extra
(``apache-airflow-providers-cncf-kubernetes``); this module is imported only by DAGs that use it.

The config is a templated dict, rendered as the operators' arguments are (Params, XComs), and handed to the
command as JSON when the pod is built. The command writes its summary where the XCom sidecar reads it, so
downstream tasks pull ``model_uri`` and ``features_uri`` as they do from the operators.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

# Where the provider's XCom sidecar reads a pod's result.
XCOM_FILE = "/airflow/xcom/return.json"
COMMAND = ["python", "-m", "airflow_tl"]


class TransferLearningPodOperator(KubernetesPodOperator):
    """Run ``python -m airflow_tl <command> --config <config as JSON>`` in a pod of ``image``.

    :param command: ``extract``, ``train``, ``evaluate`` (or ``fetch``, ``assess``, ``shards``, ``predict``).
    :param config: the command's config keys (docs/scale.md); rendered like any templated field. (templated)
    :param aws_conn_id: the connection the command reads S3 through, which the pod must define (for
        ``aws_default``, ``AIRFLOW_CONN_AWS_DEFAULT`` from a Kubernetes Secret).
    :param kwargs: KubernetesPodOperator's: ``image``, ``namespace``, ``secrets``, ``container_resources``,
        ``node_selector``, ``tolerations``, ``service_account_name``...
    """

    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "config")
    ui_color = "#e0ecfd"

    def __init__(self, *, command: str, config: dict[str, Any], aws_conn_id: str = "aws_default", **kwargs: Any):
        kwargs.setdefault("cmds", COMMAND)
        kwargs.setdefault("name", f"airflow-tl-{command}")
        kwargs.setdefault("do_xcom_push", True)
        super().__init__(**kwargs)
        self.command = command
        self.config = config
        self.aws_conn_id = aws_conn_id

    def command_arguments(self) -> list[str]:
        """The command line after ``python -m airflow_tl``, from the rendered config."""
        arguments = [self.command, "--config", json.dumps(self.config, default=str), "--aws-conn-id", self.aws_conn_id]
        return [*arguments, "--xcom-file", XCOM_FILE] if self.do_xcom_push else arguments

    def build_pod_request_obj(self, context: Any = None, *, dry_run: bool = False) -> Any:
        # Here, not in execute: every pod the provider builds (and a dry run) carries the rendered config.
        self.arguments = self.command_arguments()
        return super().build_pod_request_obj(context, dry_run=dry_run)


def pod_task(command: str, task_id: str, args: dict[str, Any], pod: dict[str, Any]) -> TransferLearningPodOperator:
    """The pod doing what ``<Operator>(task_id=task_id, **args)`` does; ``pod`` gives its KubernetesPodOperator
    arguments. Airflow's own arguments stay with the task; the rest becomes the command's config."""
    airflow = {k: args.pop(k) for k in ("execution_timeout", "outlets") if k in args}
    work_uri = args.pop("work_uri")
    if command == "extract":
        args["features_root"] = f"{work_uri}/features"
    elif command == "train":
        # The operator's run prefix, <work_uri>/runs/<dag_id>/<run id as a key segment>/<task_id>.
        prefix = f"{work_uri}/runs/{{{{ dag.dag_id }}}}/{{{{ run_id | tl_slug }}}}/{task_id}"
        args |= {"output_uri": f"{prefix}/model", "checkpoint_uri": f"{prefix}/checkpoints"}
    elif command == "evaluate":
        run = {"dag_id": "{{ dag.dag_id }}", "run_id": "{{ run_id }}", "task_id": task_id}
        args["context"] = {**run, "try_number": "{{ ti.try_number }}", **(args.pop("context_extra", None) or {})}
        if "version_suffix" in args:
            args["candidate"] = args.pop("version_suffix")
    return TransferLearningPodOperator(task_id=task_id, command=command, config=args, **airflow, **pod)
