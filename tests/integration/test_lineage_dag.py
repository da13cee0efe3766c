"""OpenLineage events of a real strategy DAG run: the provider's listener, a file transport, our datasets in them.

The run is ``airflow dags test`` in its own process: the provider decides whether to register its listener when
its plugin is first imported, and this test process may have loaded plugins long before, with no transport set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from airflow_tl.uris import slug

DAG_ID = "tl_feature_extraction"  # the cheapest strategy: a head fitted on cached features


@pytest.fixture(scope="module")
def lineage_run(tmp_path_factory, airflow_db, local_s3, demo, small_target):
    """One run of the feature-extraction DAG with OpenLineage writing to a file: its COMPLETE events by task id,
    the tasks' XComs, the run's settings and its id."""
    from airflow_tl.hooks.s3 import s3_store

    bucket = f"tl-lineage-{uuid.uuid4().hex[:8]}"
    s3_store("aws_default").ensure_bucket(bucket)
    conf = {
        "dataset_uri": small_target, "pretrained_uri": demo.source_model, "registry_uri": f"s3://{bucket}/registry",
        "model_name": "digits", "work_uri": f"s3://{bucket}/work",
    }  # fmt: skip
    return (*_run_with_lineage(DAG_ID, conf, tmp_path_factory.mktemp("openlineage")), conf)


def _run_with_lineage(dag_id: str, conf: dict, workdir: Path) -> tuple[dict[str, dict], dict[str, Any], str]:
    """``airflow dags test`` with a file transport: COMPLETE events by task id, XComs by task id, the run id."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    events_file = workdir / "events.jsonl"
    transport = {"type": "file", "log_file_path": str(events_file), "append": True}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport)
    }
    # Not from the repository root: an airflow_tl.egg-info there lists the airflow-tl plugin a second time, and
    # the task SDK's plugin loader (Airflow 3.3) stops at a repeated name, dropping OpenLineage's task listener.
    command = [sys.executable, "-m", "airflow", "dags", "test", dag_id, "-c", json.dumps(conf)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir, timeout=600)
    output = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, output
    with create_session() as session:
        run = session.query(DagRun).filter_by(dag_id=dag_id).order_by(DagRun.id.desc()).first()
        assert run.state == "success", output
        rows = session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids=dag_id, key="return_value"))
        xcoms = {row.task_id: XComModel.deserialize_value(row) for row in rows}
        run_id = run.run_id
    assert events_file.exists(), f"no OpenLineage event was written: {output}"
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    complete = {
        e["job"]["name"].removeprefix(f"{dag_id}."): e
        for e in events
        if e["eventType"] == "COMPLETE" and e["job"]["name"].startswith(f"{dag_id}.")
    }
    return complete, xcoms, run_id


def _names(event: dict, side: str) -> list[tuple[str, str]]:
    return [(d["namespace"], d["name"]) for d in event[side]]


def _ol(uri: str) -> tuple[str, str]:
    """How an s3:// URI is named in OpenLineage: bucket as namespace, the key without slashes at either end."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return f"s3://{bucket}", key.strip("/")


def test_each_task_reports_what_it_read_and_wrote(lineage_run):
    complete, xcoms, run_id, conf = lineage_run
    assert set(complete) == {"fetch_pretrained", "extract_features", "train", "evaluate"}
    fetched = xcoms["fetch_pretrained"]["model_uri"]
    assert fetched == f"{conf['work_uri']}/runs/{DAG_ID}/{slug(run_id)}/fetch_pretrained"

    assert _names(complete["fetch_pretrained"], "inputs") == [_ol(conf["pretrained_uri"])]
    assert _names(complete["fetch_pretrained"], "outputs") == [_ol(fetched)]

    features = xcoms["extract_features"]["features_uri"]
    assert _names(complete["extract_features"], "inputs") == [_ol(fetched), _ol(conf["dataset_uri"])]
    assert _names(complete["extract_features"], "outputs") == [_ol(features)]

    # A head fitted on features: the dataset reached training through them.
    trained = xcoms["train"]["model_uri"]
    assert _names(complete["train"], "inputs") == [_ol(fetched), _ol(features)]
    assert _names(complete["train"], "outputs") == [_ol(trained)]
    assert trained == f"{conf['work_uri']}/runs/{DAG_ID}/{slug(run_id)}/train/model"


def test_evaluate_reports_the_registry_version_it_registered_and_promoted(lineage_run):
    complete, xcoms, _, conf = lineage_run
    evaluated = xcoms["evaluate"]
    assert evaluated["version"] == "v1" and evaluated["promoted"]  # a fresh registry's first version
    event = complete["evaluate"]
    assert _names(event, "inputs") == [_ol(xcoms["train"]["model_uri"]), _ol(conf["dataset_uri"])]
    registry = _ol(conf["registry_uri"])
    assert _names(event, "outputs") == [
        (registry[0], f"{registry[1]}/digits/versions/v1"),
        (registry[0], f"{registry[1]}/digits/champion.json"),
    ]
    assert _ol(evaluated["model_uri"]) == _names(event, "outputs")[0]
    version, champion = event["outputs"]
    assert version["facets"]["version"]["datasetVersion"] == "v1"
    assert [(t["key"], t["value"]) for t in version["facets"]["tags"]["tags"]] == [("promoted", "true")]
    assert champion["facets"]["version"]["datasetVersion"] == "v1"  # the version the pointer now names


def test_the_dataset_is_the_place_its_asset_names(lineage_run):
    """The dataset prefix in lineage and the Asset a data-arrival DAG emits for it name the same location."""
    from airflow_tl.pipelines.assets import DATASET_SCHEME, dataset_asset

    complete, _, _, conf = lineage_run
    namespace, name = _names(complete["extract_features"], "inputs")[1]
    asset = dataset_asset(conf["dataset_uri"] + "/")
    assert asset.uri == f"{DATASET_SCHEME}://{namespace.removeprefix('s3://')}/{name}"
