"""fetch_pretrained against the real S3 endpoint and a loopback HTTP server: every source, every refusal."""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import replace

import pytest
import torch

from airflow_tl.exceptions import (
    IncompatibleWeightsError,
    IntegrityError,
    InvalidArgumentError,
    InvalidModelCardError,
    InvalidURIError,
    ObjectNotFoundError,
    UnknownArchitectureError,
    UnsafeCheckpointError,
)
from airflow_tl.models.folder import load_model_folder
from airflow_tl.pretrained.fetch import FetchSpec, fetch_pretrained
from tests.helpers import hub_file, keys_under, publish_model, random_state_dict


def test_s3_model_folder_becomes_a_canonical_folder(store, bucket):
    source = publish_model(store, f"s3://{bucket}/zoo/src")
    result = fetch_pretrained(FetchSpec(f"s3://{bucket}/zoo/src"), store=store, output_uri=f"s3://{bucket}/out")
    state_dict, card = load_model_folder(store, f"s3://{bucket}/out")
    assert not result.reused
    assert card.class_names == source.class_names and card.input == source.input
    assert [b.name for b in card.blocks] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert card.lineage["source"] == f"s3://{bucket}/zoo/src" and card.lineage["source_sha256"] == source.weights_sha256
    expected = random_state_dict()
    assert all(torch.equal(state_dict[k], expected[k]) for k in expected)
    assert result.summary() == {
        "model_uri": f"s3://{bucket}/out",
        "architecture": "resnet18",
        "num_classes": 5,
        "blocks": ["stem", "layer1", "layer2", "layer3", "layer4"],
        "sha256": card.weights_sha256,
        "init": "pretrained",
        "source": f"s3://{bucket}/zoo/src",
        "reused": False,
    }


def test_retry_reuses_the_complete_folder_without_writing(store, bucket):
    publish_model(store, f"s3://{bucket}/zoo/src")
    spec = FetchSpec(f"s3://{bucket}/zoo/src")
    first = fetch_pretrained(spec, store=store, output_uri=f"s3://{bucket}/out")
    before = {o.key: o.last_modified for o in store.list(f"s3://{bucket}/out")}
    again = fetch_pretrained(spec, store=store, output_uri=f"s3://{bucket}/out")
    assert again.reused and again.card.weights_sha256 == first.card.weights_sha256
    assert {o.key: o.last_modified for o in store.list(f"s3://{bucket}/out")} == before


def test_new_class_names_get_a_new_head_and_keep_the_backbone(store, bucket):
    publish_model(store, f"s3://{bucket}/zoo/src")
    spec = FetchSpec(f"s3://{bucket}/zoo/src", class_names=["cat", "dog"])
    fetch_pretrained(spec, store=store, output_uri=f"s3://{bucket}/out")
    state_dict, card = load_model_folder(store, f"s3://{bucket}/out")
    source = random_state_dict()
    assert card.class_names == ["cat", "dog"] and state_dict["fc.weight"].shape == (2, 512)
    assert torch.equal(state_dict["layer4.1.conv2.weight"], source["layer4.1.conv2.weight"])
    assert card.lineage["new_head"] is True


def test_random_init_is_seeded_and_reads_no_weights(store, bucket):
    publish_model(store, f"s3://{bucket}/zoo/src")
    store.delete(f"s3://{bucket}/zoo/src/model.safetensors")  # architecture-only: the weights are never read
    shas = []
    for out in ("a", "b"):
        spec = FetchSpec(f"s3://{bucket}/zoo/src", init="random", seed=7)
        shas.append(fetch_pretrained(spec, store=store, output_uri=f"s3://{bucket}/{out}").card.weights_sha256)
    other = fetch_pretrained(
        FetchSpec(f"s3://{bucket}/zoo/src", init="random", seed=8), store=store, output_uri=f"s3://{bucket}/c"
    )
    assert shas[0] == shas[1] != other.card.weights_sha256


def test_architecture_only_from_torchvision_name(store, bucket):
    spec = FetchSpec("torchvision://mobilenet_v3_small", init="random", num_classes=3)
    result = fetch_pretrained(spec, store=store, output_uri=f"s3://{bucket}/out")
    assert result.card.architecture == "mobilenet_v3_small" and result.card.num_classes == 3
    assert result.card.blocks[0].name == "stem" and result.card.blocks[-1].name == "pre_logits"
    assert result.card.head == ["classifier.3"]


def test_https_hub_file_is_hash_checked_and_stored_as_safetensors(store, bucket, http_server, allow_http):
    name, data = hub_file(random_state_dict(num_classes=7))
    http_server.files[f"/models/{name}"] = data
    url = f"{http_server.base_url}/models/{name}"
    result = fetch_pretrained(FetchSpec(url, image_size=64), store=store, output_uri=f"s3://{bucket}/out")
    assert result.card.architecture == "resnet18" and result.card.num_classes == 7
    assert result.card.lineage["source_sha256"] == hashlib.sha256(data).hexdigest()
    assert (result.card.input.crop_size, result.card.input.resize_size) == (64, 73)  # torchvision's 256/224 ratio
    assert keys_under(store, f"s3://{bucket}/out") == ["out/model.json", "out/model.safetensors"]


def test_download_retries_server_errors(store, bucket, http_server, allow_http):
    name, data = hub_file(random_state_dict())
    http_server.files[f"/{name}"] = data
    http_server.fail_next = [503, 500]
    fetch_pretrained(FetchSpec(f"{http_server.base_url}/{name}"), store=store, output_uri=f"s3://{bucket}/out")
    assert http_server.requests == [f"/{name}"] * 3


def test_torchvision_weights_come_through_the_mirror_and_are_hash_checked(store, bucket, http_server, allow_http):
    # The real catalogue names resnet18-f37072fd.pth; a mirror serving other bytes must be refused.
    http_server.files["/mirror/resnet18-f37072fd.pth"] = hub_file(random_state_dict(num_classes=1000))[1]
    spec = FetchSpec("torchvision://resnet18/IMAGENET1K_V1", weights_mirror=f"{http_server.base_url}/mirror")
    with pytest.raises(IntegrityError, match=r"sha256 mismatch for http://127\.0\.0\.1:\d+/mirror/resnet18-f37072fd"):
        fetch_pretrained(spec, store=store, output_uri=f"s3://{bucket}/out")
    assert http_server.requests == ["/mirror/resnet18-f37072fd.pth"]
    assert keys_under(store, f"s3://{bucket}/out") == []


def test_torchvision_weights_with_matching_hash_load(store, bucket, http_server, allow_http, monkeypatch):
    # Only the catalogue entry is substituted (its real file cannot be downloaded here); download,
    # hash check, weights_only loading and the preset-derived card are the real code path.
    import torchvision

    name, data = hub_file(random_state_dict(num_classes=1000))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    monkeypatch.setattr(weights.value, "url", f"https://download.pytorch.org/models/{name}")
    http_server.files[f"/m/{name}"] = data
    spec = FetchSpec("torchvision://resnet18/IMAGENET1K_V1", weights_mirror=f"{http_server.base_url}/m/")
    card = fetch_pretrained(spec, store=store, output_uri=f"s3://{bucket}/out").card
    assert card.num_classes == 1000 and card.class_names[0] == "tench"
    assert (card.input.crop_size, card.input.resize_size, card.input.mean) == (224, 256, [0.485, 0.456, 0.406])
    assert card.lineage["source_lineage"]["torchvision_weights"] == "resnet18.IMAGENET1K_V1"


class _CreatesFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _malicious_checkpoint(marker: str) -> bytes:
    buffer = io.BytesIO()
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": _CreatesFile(marker)}, buffer)
    return buffer.getvalue()


def _hub_name(data: bytes, name: str = "resnet18") -> str:
    return f"{name}-{hashlib.sha256(data).hexdigest()[:8]}.pth"


def test_freeze_layers_the_model_lacks_fails_before_any_download(store, bucket, http_server, allow_http):
    name, data = hub_file(random_state_dict())
    http_server.files[f"/{name}"] = data
    mirror = f"{http_server.base_url}/mirror"
    specs = [
        FetchSpec(f"{http_server.base_url}/{name}", freeze_layers="layer5"),
        FetchSpec("torchvision://resnet18/IMAGENET1K_V1", weights_mirror=mirror, freeze_layers=6),
        FetchSpec("torchvision://resnet18", architecture="resnet18", init="random", freeze_layers="Layer3"),
    ]
    for spec in specs:
        with pytest.raises(InvalidArgumentError) as err:
            fetch_pretrained(spec, store=store, output_uri=f"s3://{bucket}/out")
        assert "for resnet18, whose 5 blocks are: stem, layer1, layer2, layer3, layer4." in str(err.value)
    assert http_server.requests == []
    assert keys_under(store, f"s3://{bucket}/out") == []

    # A block it has: the same source downloads and the folder is written.
    fetch_pretrained(replace(specs[0], freeze_layers="layer3"), store=store, output_uri=f"s3://{bucket}/out")
    assert http_server.requests == [f"/{name}"]


def test_freeze_layers_is_checked_on_an_s3_folders_card_alone(store, bucket):
    publish_model(store, f"s3://{bucket}/zoo/src", arch="squeezenet1_1")
    store.delete(f"s3://{bucket}/zoo/src/model.safetensors")  # were the weights read, this would say so
    with pytest.raises(InvalidArgumentError) as err:
        fetch_pretrained(
            FetchSpec(f"s3://{bucket}/zoo/src", freeze_layers="layer3"), store=store, output_uri=f"s3://{bucket}/out"
        )
    assert "0…4, a block name or 'all' for squeezenet1_1, whose 4 blocks are: stem, fire_group1, " in str(err.value)
    assert keys_under(store, f"s3://{bucket}/out") == []


def test_malicious_pickle_is_refused_and_never_runs(store, bucket, http_server, allow_http, tmp_path):
    marker = tmp_path / "pwned"
    data = _malicious_checkpoint(str(marker))
    http_server.files[f"/{_hub_name(data)}"] = data
    with pytest.raises(UnsafeCheckpointError, match=f"Refusing to load {http_server.base_url}/resnet18-"):
        fetch_pretrained(
            FetchSpec(f"{http_server.base_url}/{_hub_name(data)}"), store=store, output_uri=f"s3://{bucket}/o"
        )
    assert not marker.exists() and not os.path.exists("pwned")
    assert keys_under(store, f"s3://{bucket}/o") == []


@pytest.mark.parametrize(
    ("make_source", "error", "message"),
    [
        ("missing_folder", ObjectNotFoundError, "No object at s3://{bucket}/zoo/nothing/model.json"),
        ("missing_bucket", ObjectNotFoundError, "Bucket 'tl-absent-bucket' does not exist"),
        ("tampered_weights", IntegrityError, "sha256 mismatch for s3://{bucket}/zoo/src/model.safetensors"),
        (
            "card_missing_fields",
            InvalidModelCardError,
            "s3://{bucket}/zoo/src/model.json is invalid: missing field 'head'",
        ),
        ("card_class_count", InvalidModelCardError, "the card lists 4 classes but head 'fc' has 5 outputs"),
        ("malformed_uri", InvalidURIError, "'s3:/{bucket}/zoo' has an unsupported scheme"),
        ("unknown_architecture", UnknownArchitectureError, "Unknown architecture 'resnet19'"),
        ("hub_hash_mismatch", IntegrityError, "sha256 mismatch for http://127.0.0.1"),
        ("hub_missing", ObjectNotFoundError, "HTTP 404"),
        ("hub_wrong_architecture", IncompatibleWeightsError, "do not fit architecture 'resnet34'"),
    ],
)
def test_bad_input_fails_clearly_and_writes_nothing(
    store, bucket, http_server, allow_http, make_source, error, message
):
    publish_model(store, f"s3://{bucket}/zoo/src")
    card = json.loads(store.get_bytes(f"s3://{bucket}/zoo/src/model.json"))
    name, data = hub_file(random_state_dict())
    http_server.files[f"/{name}"] = data
    spec = {
        "missing_folder": lambda: FetchSpec(f"s3://{bucket}/zoo/nothing"),
        "missing_bucket": lambda: FetchSpec("s3://tl-absent-bucket/zoo/src"),
        "tampered_weights": lambda: _tamper(store, bucket) or FetchSpec(f"s3://{bucket}/zoo/src"),
        "card_missing_fields": lambda: _rewrite_card(store, bucket, card, drop="head"),
        "card_class_count": lambda: _rewrite_card(store, bucket, card, class_names=["a", "b", "c", "d"]),
        "malformed_uri": lambda: FetchSpec(f"s3:/{bucket}/zoo"),
        "unknown_architecture": lambda: FetchSpec("torchvision://resnet19", init="random", num_classes=2),
        "hub_hash_mismatch": lambda: FetchSpec(f"{http_server.base_url}/{_renamed(http_server, name)}"),
        "hub_missing": lambda: FetchSpec(f"{http_server.base_url}/resnet18-0123456789.pth"),
        "hub_wrong_architecture": lambda: FetchSpec(f"{http_server.base_url}/{name}", architecture="resnet34"),
    }[make_source]
    with pytest.raises(error) as raised:
        fetch_pretrained(spec(), store=store, output_uri=f"s3://{bucket}/out")
    assert message.format(bucket=bucket) in str(raised.value)
    assert keys_under(store, f"s3://{bucket}/out") == []


def _tamper(store, bucket: str) -> None:
    store.put_bytes(f"s3://{bucket}/zoo/src/model.safetensors", b"\x00" * 1000)


def _rewrite_card(store, bucket: str, card: dict, drop: str | None = None, **changes) -> FetchSpec:
    card = {k: v for k, v in card.items() if k != drop} | changes
    if "class_names" in changes:
        card["num_classes"] = len(changes["class_names"])
    store.put_bytes(f"s3://{bucket}/zoo/src/model.json", json.dumps(card).encode())
    return FetchSpec(f"s3://{bucket}/zoo/src")


def _renamed(http_server, name: str) -> str:
    wrong = "resnet18-" + "f" * 10 + ".pth"
    http_server.files[f"/{wrong}"] = http_server.files[f"/{name}"]
    return wrong
