"""Multi-node training in a factory DAG: the train task mapped over node ranks, one task instance per machine.

``build_dag(strategy, multinode=True)`` adds the Params ``nnodes``, ``rdzv_endpoint`` and ``rdzv_timeout``, a
``node_ranks`` task that turns ``nnodes`` into ``[0, ..., nnodes - 1]``, and maps ``train`` over them. The
executor runs the mapped instances at once, on as many workers; their training processes meet in one c10d
rendezvous at the endpoint (``training.launch``). Downstream tasks read the model from map index 0: every node
returns the same summary, and rank 0, wherever it ran, wrote the one model folder.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, task

from airflow_tl.operators import FreezeAndTrainOperator

NODE_SETTINGS = ("nnodes", "rdzv_endpoint", "rdzv_timeout")
ENDPOINT_PATTERN = r"^[A-Za-z0-9.\-]+:[0-9]{1,5}$"


def node_params(defaults: dict[str, Any] | None = None) -> dict[str, Param]:
    """The Params of a multi-node DAG; ``rdzv_endpoint`` has no default: every run must say where to meet."""
    d = {"nnodes": 2, "rdzv_timeout": 300, **(defaults or {})}
    endpoint = {"default": d["rdzv_endpoint"]} if d.get("rdzv_endpoint") else {}
    return {
        "nnodes": Param(
            d["nnodes"],
            type="integer",
            minimum=1,
            description="machines (task instances of train, mapped) training together; each runs num_processes",
        ),
        "rdzv_endpoint": Param(
            **endpoint,
            type="string",
            pattern=ENDPOINT_PATTERN,
            description="host:port where the nodes meet: a worker every node reaches, which hosts the rendezvous "
            "when its node runs there",
        ),
        "rdzv_timeout": Param(
            d["rdzv_timeout"],
            type="number",
            exclusiveMinimum=0,
            description="seconds to wait for every node; past it every node fails, and nothing is published",
        ),
    }


@task(task_id="node_ranks")
def node_ranks(nnodes: Any) -> list[int]:
    """``[0, ..., nnodes - 1]``: what the train task is mapped over."""
    count = int(nnodes)
    if count < 1:
        from airflow_tl.exceptions import InvalidArgumentError

        raise InvalidArgumentError(f"Param nnodes must be a positive integer. Provided value: {nnodes!r}.")
    return list(range(count))


def mapped_train(s: dict[str, Any], **kwargs: Any) -> Any:
    """``FreezeAndTrainOperator`` with ``kwargs``, one instance per node rank."""
    ranks = node_ranks(s["nnodes"])
    train = FreezeAndTrainOperator.partial(
        task_id="train", nnodes=s["nnodes"], rdzv_endpoint=s["rdzv_endpoint"], rdzv_timeout=s["rdzv_timeout"], **kwargs
    ).expand(node_rank=ranks)
    return ranks, train
