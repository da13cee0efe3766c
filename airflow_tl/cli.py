"""``python -m airflow_tl <command> --config <json | @file | s3://…>``: an operator's work outside Airflow.

For compute that leaves the Airflow worker (a container on Kubernetes, a batch job): the same plain functions
the operators call, with the same S3 contract, so Airflow orchestrates and any container engine computes.

    python -m airflow_tl train --config '{"model_uri": "s3://b/source", "dataset_uri": "s3://b/flowers",
        "output_uri": "s3://b/out/model", "checkpoint_uri": "s3://b/out/checkpoints", "epochs": 5}'

Commands and their config keys (the keyword arguments of the function each runs; train also takes every
``TrainConfig`` field):

- ``fetch``: ``pretrained.fetch.FetchSpec``'s fields and ``output_uri``;
- ``shards``: ``data.shard_writer.prepare_shards``'s arguments (``dataset_uri``, ``seed``, ``layout``,
  ``fractions``, ``shard_mb``, ``shard_images``, ``threads``): the sharded form of a dataset;
- ``extract``: ``model_uri``, ``dataset_uri``, ``features_root``, ``layout``, ``split_seed``, ``batch_size``,
  ``threads``, ``skip_corrupt``, ``device``, ``num_processes``;
- ``train``: ``training.task.train``'s arguments and ``TrainConfig``'s fields; ``num_processes`` for several
  processes, and ``nnodes``, ``rdzv_endpoint``, ``rdzv_timeout`` and ``rdzv_id`` (the same on every node) for
  several machines, each running this command;
- ``assess``: ``assess.task.assess``'s arguments;
- ``evaluate``: ``evaluation.task.evaluate_and_register``'s arguments and ``Gate``'s fields (``gate_metric``
  for its metric); ``version``, or a ``context`` with the DAG run's ``dag_id`` and ``run_id`` to take the
  run's next ``v<n>`` as the operator does;
- ``predict``: ``predict.task.PredictSpec``'s fields (``dataset_uri``, ``registry_uri``, ``model_name``,
  ``output_uri``, ``version``, ...) and a ``run`` recorded in the parts' metadata.

S3 is reached through the Airflow connection ``--aws-conn-id`` (``aws_default``), which a container sets in
``AIRFLOW_CONN_AWS_DEFAULT``: no Airflow database is needed. The last line on stdout is the task's summary
as JSON, what the operator returns as its XCom (``--xcom-file`` writes it to a file too, for a Kubernetes
pod's XCom sidecar); an error's type and message are the last line on stderr.
Exit status: 0 done; 2 an error no retry can fix (bad
config, bad data); 75 (EX_TEMPFAIL) an error worth retrying (S3 kept failing).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow_tl.exceptions import AirflowTLError, InvalidArgumentError, PermanentError

EXIT_PERMANENT = 2
EXIT_RETRY = 75  # EX_TEMPFAIL: what a job controller's retry policy understands as "try again"


def _fetch(store, config: dict[str, Any], aws_conn_id: str | None) -> dict[str, Any]:
    from airflow_tl.pretrained.fetch import FetchSpec, fetch_pretrained

    spec_keys = {f.name for f in dataclasses.fields(FetchSpec)}
    _check(config, spec_keys | {"output_uri"}, "fetch", required={"output_uri"})
    spec = FetchSpec(**{k: v for k, v in config.items() if k in spec_keys})
    return fetch_pretrained(spec, store=store, output_uri=config["output_uri"]).summary()


def _shards(store, config: dict[str, Any], aws_conn_id: str | None) -> dict[str, Any]:
    from airflow_tl.data.shard_writer import prepare_shards

    passed = _arguments(prepare_shards, exclude={"store"})
    _check(config, passed, "shards", required={"dataset_uri"})
    result = prepare_shards(store, **config)
    return {"shards_uri": result.uri, **{k: v for k, v in result.summary().items() if k != "uri"}}


def _extract(store, config: dict[str, Any], aws_conn_id: str | None) -> dict[str, Any]:
    from airflow_tl.data.dataset import list_dataset
    from airflow_tl.devices import placement_for
    from airflow_tl.features.extract import extract_features
    from airflow_tl.hooks.s3 import worker_store_factory

    own = {"dataset_uri", "layout", "split_seed", "device"}
    passed = _arguments(extract_features, exclude={"store", "dataset", "model_folder", "place", "worker_store"})
    _check(config, passed | own, "extract", required={"model_uri", "dataset_uri", "features_root"})
    processes = config.get("num_processes", 1)
    place = placement_for(config.get("device", "auto"), processes)
    dataset = list_dataset(
        store, config["dataset_uri"], seed=config.get("split_seed", 0), layout=config.get("layout", "auto")
    )
    kwargs = {k: v for k, v in config.items() if k in passed}
    worker_store = worker_store_factory(aws_conn_id) if processes > 1 else None
    result = extract_features(store, dataset=dataset, place=place, worker_store=worker_store, **kwargs)
    return {"features_uri": result.uri, **{k: v for k, v in result.summary().items() if k != "uri"}}


def _train(store, config: dict[str, Any], aws_conn_id: str | None) -> dict[str, Any]:
    from airflow_tl.hooks.s3 import worker_store_factory
    from airflow_tl.training.config import TrainConfig
    from airflow_tl.training.launch import Nodes
    from airflow_tl.training.task import train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    passed = _arguments(train, exclude={"store", "config", "nodes", "worker_store"})
    node_keys = {"nnodes": "count", "rdzv_endpoint": "endpoint", "rdzv_timeout": "timeout_s", "rdzv_id": "run_id"}
    _check(config, fields | passed | set(node_keys), "train", required={"model_uri", "output_uri"})
    settings = TrainConfig(**{k: v for k, v in config.items() if k in fields})
    nodes = Nodes(**{node_keys[k]: v for k, v in config.items() if k in node_keys})
    kwargs = {"checkpoint_uri": None} | {k: v for k, v in config.items() if k in passed}
    parallel = config.get("num_processes", 1) * nodes.count > 1
    worker_store = worker_store_factory(aws_conn_id) if parallel else None
    return train(store, config=settings, nodes=nodes, worker_store=worker_store, **kwargs).summary()


def _assess(store, config: dict[str, Any], aws_conn_id: str | None) -> dict[str, Any]:
    from airflow_tl.assess.task import assess

    passed = _arguments(assess, exclude={"store", "thresholds"})
    _check(config, passed, "assess", required={"model_uri", "dataset_uri", "features_root"})
    return assess(store, **config).summary()


def _evaluate(store, config: dict[str, Any], aws_conn_id: str | None) -> dict[str, Any]:
    from airflow_tl.evaluation.task import evaluate_and_register
    from airflow_tl.registry.promotion import Gate

    gate_fields = {"gate_metric": "metric", **{f.name: f.name for f in dataclasses.fields(Gate) if f.name != "metric"}}
    passed = _arguments(evaluate_and_register, exclude={"store", "gate"})
    # No version: the run's next v<n>, which needs the context's dag_id and run_id (a pod's, in a DAG run).
    required = {"model_uri", "dataset_uri", "registry_uri", "model_name"}
    _check(config, passed | set(gate_fields), "evaluate", required=required)
    gate = Gate(**{gate_fields[k]: v for k, v in config.items() if k in gate_fields})
    kwargs = {"version": None} | {k: v for k, v in config.items() if k in passed}
    return evaluate_and_register(store, gate=gate, **kwargs).summary()


def _predict(store, config: dict[str, Any], aws_conn_id: str | None) -> dict[str, Any]:
    from airflow_tl.predict.task import PredictSpec, predict_images

    fields = {f.name for f in dataclasses.fields(PredictSpec)}
    _check(config, fields | {"run"}, "predict", required={"dataset_uri", "registry_uri", "model_name", "output_uri"})
    spec = PredictSpec(**{k: v for k, v in config.items() if k in fields})
    return predict_images(store, spec, run=config.get("run")).summary()


COMMANDS: dict[str, Callable[[Any, dict[str, Any], str | None], dict[str, Any]]] = {
    "fetch": _fetch,
    "shards": _shards,
    "extract": _extract,
    "train": _train,
    "assess": _assess,
    "evaluate": _evaluate,
    "predict": _predict,
}


def _arguments(function: Callable, *, exclude: set[str]) -> set[str]:
    return {p for p in inspect.signature(function).parameters if p not in exclude}


def _check(config: dict[str, Any], accepted: set[str], command: str, *, required: set[str]) -> None:
    unknown, missing = sorted(set(config) - accepted), sorted(required - set(config))
    problems = ([f"unknown key(s) {', '.join(unknown)}"] if unknown else []) + (
        [f"no {', '.join(missing)}"] if missing else []
    )
    if problems:
        raise InvalidArgumentError(
            f"The {command} config has {' and '.join(problems)}. Accepted keys: {', '.join(sorted(accepted))}."
        )


def load_config(text: str, store_factory: Callable[[], Any]) -> dict[str, Any]:
    """The config: inline JSON, ``@path`` to a local JSON file, or an ``s3://`` URI of one."""
    source = "--config"
    try:
        if text.startswith("s3://"):
            source = text
            text = store_factory().get_bytes(text).decode()
        elif text.startswith("@"):
            source = text[1:]
            with open(source, encoding="utf-8") as handle:
                text = handle.read()
        config = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidArgumentError(f"Could not read the config from {source}: {err}") from None
    if not isinstance(config, dict):
        raise InvalidArgumentError(f"The config from {source} must be a JSON object, got {type(config).__name__}.")
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_tl", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--config", required=True, help="JSON object, @file.json, or s3://…/config.json")
    parser.add_argument("--aws-conn-id", default="aws_default", help="Airflow connection to S3")
    parser.add_argument("--xcom-file", help="also write the summary JSON here (a Kubernetes pod's XCom file)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from airflow_tl.runtime import prepare_torch_runtime

    prepare_torch_runtime()
    from airflow_tl.hooks.s3 import s3_store

    get_store = functools.cache(lambda: s3_store(args.aws_conn_id))  # built once, and only when needed
    try:
        config = load_config(args.config, get_store)
        summary = COMMANDS[args.command](get_store(), config, args.aws_conn_id)
    except PermanentError as err:
        # On stderr in any case: Airflow's logging, set up when it is imported, may send log records to stdout.
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return EXIT_PERMANENT
    except AirflowTLError as err:
        print(f"error (worth a retry): {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return EXIT_RETRY
    text = json.dumps(summary, default=str)
    if args.xcom_file:
        path = Path(args.xcom_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(text, flush=True)
    return 0
