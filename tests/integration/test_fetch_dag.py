"""FetchPretrainedOperator inside real DAG runs (dag.test(), SQLite) against the S3 server over HTTP."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
import torch

from airflow_tl.models.folder import load_model_folder
from airflow_tl.uris import slug as run_slug
from tests.helpers import hub_file, keys_under, publish_model, random_state_dict


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


def test_https_source_in_a_dag(store, bucket, http_server, run_dag):
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
    store, bucket, http_server, run_dag, tmp_path, case, error, message
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
