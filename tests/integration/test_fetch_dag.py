"""FetchPretrainedOperator inside real DAG runs (dag.test(), SQLite) against the S3 server over HTTP."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from airflow_tl.models.folder import load_model_folder
from airflow_tl.uris import slug as run_slug
from tests.helpers import hub_file, keys_under, publish_model, random_state_dict

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_dag_fetches_into_the_run_scoped_prefix(store, bucket, run_dag):
    publish_model(store, f"s3://{bucket}/zoo/src")
    conf = {"pretrained_uri": f"s3://{bucket}/zoo/src", "work_uri": f"s3://{bucket}/work", "image_size": 48}
    result = run_dag("tl_fetch_pretrained", conf)
    assert result.state == "success", result.failures
    expected_uri = f"s3://{bucket}/work/runs/tl_fetch_pretrained/{run_slug(result.run_id)}/fetch_pretrained"
    summary = result.xcoms["fetch_pretrained"]
    assert summary["model_uri"] == expected_uri and summary["reused"] is False
    assert summary["blocks"] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    _, card = load_model_folder(store, expected_uri)
    assert card.weights_sha256 == summary["sha256"] and card.input.crop_size == 48


def test_random_init_for_from_scratch(store, bucket, run_dag):
    conf = {
        "architecture": "efficientnet_b0",
        "init": "random",
        "class_names": ["5", "6", "7"],
        "output_uri": f"s3://{bucket}/scratch",
        "seed": 3,
    }
    result = run_dag("tl_test_fetch", conf)
    assert result.state == "success", result.failures
    assert result.xcoms["fetch"]["init"] == "random" and result.xcoms["fetch"]["num_classes"] == 3
    assert result.xcoms["fetch"]["blocks"][0] == "stem" and len(result.xcoms["fetch"]["blocks"]) == 9
    assert keys_under(store, f"s3://{bucket}/scratch") == ["scratch/model.json", "scratch/model.safetensors"]


def test_https_source_in_a_dag(store, bucket, http_server, allow_http, run_dag):
    name, data = hub_file(random_state_dict(num_classes=4))
    http_server.files[f"/hub/{name}"] = data
    conf = {"pretrained_uri": f"{http_server.base_url}/hub/{name}", "output_uri": f"s3://{bucket}/hub"}
    result = run_dag("tl_test_fetch", conf)
    assert result.state == "success", result.failures
    state_dict, card = load_model_folder(store, f"s3://{bucket}/hub")
    assert card.lineage["source_sha256"] == hashlib.sha256(data).hexdigest()
    assert torch.equal(state_dict["fc.weight"], random_state_dict(num_classes=4)["fc.weight"])


class _CreatesFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("missing", "ObjectNotFoundError", "No object at s3://{bucket}/zoo/absent/model.json"),
        ("tampered", "IntegrityError", "sha256 mismatch for s3://{bucket}/zoo/src/model.safetensors"),
        ("pickle", "UnsafeCheckpointError", "Refusing to load {base}/resnet18-"),
        ("architecture", "UnknownArchitectureError", "Unknown architecture 'resnet1000'"),
        ("malformed", "InvalidURIError", "'s3//{bucket}/zoo/src' has an unsupported scheme"),
        ("no_bucket", "ObjectNotFoundError", "Bucket 'tl-absent-bucket' does not exist"),
        ("card_fields", "InvalidModelCardError", "s3://{bucket}/zoo/src/model.json is invalid: missing field 'blocks'"),
        ("card_classes", "InvalidModelCardError", "the card lists 2 classes but head 'fc' has 5 outputs"),
    ],
)
def test_bad_input_fails_the_task_with_a_clear_error(
    store, bucket, http_server, allow_http, run_dag, tmp_path, case, error, message
):
    publish_model(store, f"s3://{bucket}/zoo/src")
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"fc.weight": torch.zeros(1), "x": _CreatesFile(str(marker))}, buffer)
    pickle_name = f"resnet18-{hashlib.sha256(buffer.getvalue()).hexdigest()[:8]}.pth"
    http_server.files[f"/{pickle_name}"] = buffer.getvalue()
    if case == "tampered":
        store.put_bytes(f"s3://{bucket}/zoo/src/model.safetensors", b"garbage")
    card = json.loads(store.get_bytes(f"s3://{bucket}/zoo/src/model.json"))
    edited = {
        "card_fields": {k: v for k, v in card.items() if k != "blocks"},
        "card_classes": card | {"class_names": ["x", "y"], "num_classes": 2},
    }
    if case in edited:
        store.put_bytes(f"s3://{bucket}/zoo/src/model.json", json.dumps(edited[case]).encode())
    conf = {
        "missing": {"pretrained_uri": f"s3://{bucket}/zoo/absent"},
        "tampered": {"pretrained_uri": f"s3://{bucket}/zoo/src"},
        "pickle": {"pretrained_uri": f"{http_server.base_url}/{pickle_name}"},
        "architecture": {"pretrained_uri": f"s3://{bucket}/zoo/src", "architecture": "resnet1000"},
        "malformed": {"pretrained_uri": f"s3//{bucket}/zoo/src"},
        "no_bucket": {"pretrained_uri": "s3://tl-absent-bucket/zoo/src"},
        "card_fields": {"pretrained_uri": f"s3://{bucket}/zoo/src"},
        "card_classes": {"pretrained_uri": f"s3://{bucket}/zoo/src"},
    }[case] | {"work_uri": f"s3://{bucket}/work"}

    result = run_dag("tl_test_fetch", conf)

    assert result.state == "failed" and result.task_states["fetch"] == "failed"
    failure = result.failure("fetch")
    assert failure["type"] == error and "AirflowException" in failure["mro"]
    assert message.format(bucket=bucket, base=http_server.base_url) in failure["message"]
    assert keys_under(store, f"s3://{bucket}/work") == []
    assert not marker.exists()


# --- who can reach what -----------------------------------------------------------------------------------------

PASSWORD = "pw-5e1d0c77"
SIGNATURE = "sig-93ab10f4"


def _cli_dag_test(dag_id: str, conf: dict) -> tuple[str, str]:
    """``airflow dags test`` in its own process: all it logs, and the run id. In-process runs log to a stream
    bound when logging was first configured, which pytest's capture does not reliably see."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "airflow", "dags", "test", dag_id, "-c", json.dumps(conf)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter_by(dag_id=dag_id).order_by(DagRun.id.desc()).first()
        return done.stdout + done.stderr, run.run_id


def _stored(dag_id: str, run_id: str, task_id: str) -> tuple[dict, dict]:
    """The task's XCom and the rendered template fields Airflow stored for it."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=run_id, dag_ids=dag_id, task_ids=task_id, key="return_value"))
        xcom = XComModel.deserialize_value(next(iter(rows)))
        rtif = session.query(RenderedTaskInstanceFields).filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id).one()
        return xcom, dict(rtif.rendered_fields)


def test_credentials_reach_the_server_but_not_logs_cards_xcom_or_rendered_fields(
    store, bucket, http_server, allow_http, airflow_db, monkeypatch
):
    name, data = hub_file(random_state_dict(num_classes=3))
    http_server.files[f"/hub/{name}"] = data
    http_server.basic_auth = ("reader", PASSWORD)
    http_server.query = {"X-Amz-Signature": SIGNATURE}
    host = http_server.base_url.removeprefix("http://")
    # The allowed-prefix check is on and admits this run: credentials and query do not count.
    monkeypatch.setenv("AIRFLOW__AIRFLOW_TL__ALLOWED_URI_PREFIXES", f"s3://{bucket}/,{http_server.base_url}/hub")
    url = f"http://reader:{PASSWORD}@{host}/hub/{name}?X-Amz-Date=20261129T000000Z&X-Amz-Signature={SIGNATURE}"

    logs, run_id = _cli_dag_test("tl_test_fetch", {"pretrained_uri": url, "output_uri": f"s3://{bucket}/hub"})

    assert "DagRun Finished" in logs and "state=success" in logs, logs[-3000:]
    shown = f"http://***@{host}/hub/{name}?X-Amz-Date=20261129T000000Z&X-Amz-Signature=***"
    assert f"Fetching {shown} (init=pretrained)" in logs and f"Downloaded {shown}" in logs
    card = store.get_bytes(f"s3://{bucket}/hub/model.json").decode()
    xcom, rendered = _stored("tl_test_fetch", run_id, "fetch")
    assert json.loads(card)["lineage"]["source"] == shown and xcom["source"] == shown
    assert rendered["pretrained_uri"].startswith("http://reader:***@")  # Airflow's masker was told the secrets
    for text in (logs, card, json.dumps(xcom), json.dumps(rendered)):
        assert PASSWORD not in text and SIGNATURE not in text
    assert http_server.requests == [f"/hub/{name}?X-Amz-Date=20261129T000000Z&X-Amz-Signature={SIGNATURE}"]


def test_plain_http_is_refused_in_a_dag_before_any_request(store, bucket, http_server, run_dag):
    name, data = hub_file(random_state_dict())
    http_server.files[f"/{name}"] = data
    result = run_dag(
        "tl_test_fetch", {"pretrained_uri": f"{http_server.base_url}/{name}", "work_uri": f"s3://{bucket}/w"}
    )
    assert result.state == "failed"
    failure = result.failure("fetch")
    assert failure["type"] == "InvalidURIError" and "PermanentError" in failure["mro"]
    assert failure["message"].startswith(f"Pretrained URL '{http_server.base_url}/{name}' uses plain http://")
    assert "AIRFLOW__AIRFLOW_TL__ALLOW_HTTP=True" in failure["message"]
    assert http_server.requests == [] and keys_under(store, f"s3://{bucket}/w") == []


def test_a_source_outside_the_allowed_prefixes_is_refused_before_reading(store, bucket, run_dag, monkeypatch):
    publish_model(store, f"s3://{bucket}/zoo-evil/src")
    monkeypatch.setenv("AIRFLOW__AIRFLOW_TL__ALLOWED_URI_PREFIXES", f"s3://{bucket}/zoo,s3://{bucket}/work")
    conf = {"pretrained_uri": f"s3://{bucket}/zoo-evil/src", "work_uri": f"s3://{bucket}/work"}
    result = run_dag("tl_test_fetch", conf)
    assert result.state == "failed"
    failure = result.failure("fetch")
    assert failure["type"] == "InvalidURIError" and "PermanentError" in failure["mro"]
    assert failure["message"] == (
        f"Argument pretrained_uri accepts only URIs under s3://{bucket}/zoo, s3://{bucket}/work, as [airflow_tl] "
        f"allowed_uri_prefixes says. Provided value: 's3://{bucket}/zoo-evil/src'."
    )
    assert keys_under(store, f"s3://{bucket}/work") == []


def test_a_uri_from_an_upstream_xcom_is_checked_too(store, bucket, run_dag, monkeypatch):
    publish_model(store, f"s3://{bucket}/models-evil/m")
    allowed = f"s3://{bucket}/data,s3://{bucket}/models,s3://{bucket}/work"
    monkeypatch.setenv("AIRFLOW__AIRFLOW_TL__ALLOWED_URI_PREFIXES", allowed)
    conf = {
        "model_uri": f"s3://{bucket}/models-evil/m",  # a real model folder, beside the allowed prefix
        "dataset_uri": f"s3://{bucket}/data",
        "work_uri": f"s3://{bucket}/work",
    }
    result = run_dag("tl_test_access", conf)
    assert result.task_states == {"upstream": "success", "extract_features": "failed"}
    failure = result.failure("extract_features")
    assert failure["type"] == "InvalidURIError"
    assert failure["message"] == (
        f"Argument model_uri accepts only URIs under {allowed.replace(',', ', ')}, as [airflow_tl] "
        f"allowed_uri_prefixes says. Provided value: 's3://{bucket}/models-evil/m'."
    )
    assert keys_under(store, f"s3://{bucket}/work") == []


def test_a_dag_rendering_strings_gets_typed_arguments(store, bucket, run_dag):
    # Without native rendering, class_names arrives as "['5', '6', '7']", num_classes as "None", seed as "3";
    # an output URI spelling None and True stays as it is.
    conf = {
        "architecture": "resnet18",
        "init": "random",
        "class_names": ["5", "6", "7"],
        "seed": 3,
        "output_uri": f"s3://{bucket}/None/True",
    }
    result = run_dag("tl_test_fetch_rendered", conf)
    assert result.state == "success", result.failures
    _, card = load_model_folder(store, f"s3://{bucket}/None/True")
    assert card.class_names == ["5", "6", "7"] and card.lineage["seed"] == 3
    assert result.xcoms["fetch"]["model_uri"] == f"s3://{bucket}/None/True"


def test_a_dag_rendering_strings_refuses_a_bad_value_by_name(bucket, run_dag):
    result = run_dag("tl_test_fetch_rendered", {"architecture": "resnet18", "init": "random", "seed": "three"})
    assert result.state == "failed"
    failure = result.failure("fetch")
    assert failure["type"] == "InvalidArgumentError"
    assert failure["message"] == "Argument seed accepts only an integer. Provided value: 'three'."
