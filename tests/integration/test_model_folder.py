"""Model folders in S3: round trip, sha256 check on read, card written last."""

from __future__ import annotations

import json

import pytest
import torch

from airflow_tl.exceptions import IntegrityError, InvalidModelCardError, ObjectNotFoundError
from airflow_tl.models.folder import instantiate, load_model_folder, read_card, save_model_folder
from tests.helpers import publish_model, random_state_dict


def test_round_trip_keeps_weights_and_card(store, bucket):
    uri = f"s3://{bucket}/zoo/m"
    card = publish_model(store, uri)
    state_dict, loaded = load_model_folder(store, uri)
    assert loaded.to_dict() == card.to_dict()
    expected = random_state_dict()
    assert state_dict.keys() == expected.keys()
    assert all(torch.equal(state_dict[k], expected[k]) for k in expected)
    model = instantiate(loaded, state_dict, source=uri)
    assert model.fc.out_features == 5


def test_weights_that_do_not_match_the_card_hash_are_rejected(store, bucket):
    uri = f"s3://{bucket}/zoo/m"
    publish_model(store, uri)
    publish_model(store, f"s3://{bucket}/other", seed=1)
    store.put_bytes(f"{uri}/model.safetensors", store.get_bytes(f"s3://{bucket}/other/model.safetensors"))
    with pytest.raises(IntegrityError, match=f"sha256 mismatch for {uri}/model.safetensors"):
        load_model_folder(store, uri)


def test_a_folder_without_card_is_not_a_model(store, bucket):
    uri = f"s3://{bucket}/zoo/m"
    publish_model(store, uri)
    store.delete(f"{uri}/model.json")
    with pytest.raises(ObjectNotFoundError, match=f"{uri}/model.json"):
        load_model_folder(store, uri)


def test_interrupted_rewrite_leaves_no_card_vouching_for_new_weights(store, bucket, monkeypatch):
    uri = f"s3://{bucket}/zoo/m"
    card = publish_model(store, uri)

    def crash(*args, **kwargs):
        raise ConnectionError("worker lost mid-upload")

    monkeypatch.setattr(store, "upload_file", crash)
    with pytest.raises(ConnectionError):
        save_model_folder(store, uri, random_state_dict(seed=3), card)
    assert not store.exists(f"{uri}/model.json")


def test_card_whose_class_count_contradicts_the_weights(store, bucket):
    uri = f"s3://{bucket}/zoo/m"
    publish_model(store, uri)
    data = json.loads(store.get_bytes(f"{uri}/model.json"))
    data["class_names"], data["num_classes"] = ["a", "b", "c"], 3
    store.put_bytes(f"{uri}/model.json", json.dumps(data).encode())
    with pytest.raises(InvalidModelCardError, match="lists 3 classes but head 'fc' has 5 outputs"):
        load_model_folder(store, uri)


def test_card_with_missing_fields_names_them(store, bucket):
    uri = f"s3://{bucket}/zoo/m"
    publish_model(store, uri)
    data = json.loads(store.get_bytes(f"{uri}/model.json"))
    del data["architecture"], data["blocks"]
    store.put_bytes(f"{uri}/model.json", json.dumps(data).encode())
    with pytest.raises(InvalidModelCardError, match=r"missing field 'architecture'; missing field 'blocks'") as err:
        read_card(store, uri)
    assert f"{uri}/model.json" in str(err.value)
