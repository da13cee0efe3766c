"""The assessment on real data in S3: cases whose answer is known, LEEP's absence, and the feature cache."""

from __future__ import annotations

import json

import pytest

from airflow_tl.assess.task import assess
from airflow_tl.data.dataset import list_dataset
from airflow_tl.features.extract import extract_features
from airflow_tl.models.folder import load_model_folder, save_model_folder
from tests.helpers import copy_dataset


@pytest.fixture(scope="module")
def textures(demo, local_s3):
    """Plenty of noise-textured images, nothing like the digits the source learned: 120 training images a class."""
    from airflow_tl.demo.seed import upload_dataset
    from airflow_tl.demo.textures import texture_images
    from airflow_tl.hooks.s3 import s3_store

    uri = f"s3://{demo.bucket}/datasets/textures-120"
    store = s3_store("aws_default")
    if not store.list(uri):
        upload_dataset(store, texture_images({"train": 120, "val": 20, "test": 20}, seed=3), uri)
    return uri


def test_a_tiny_near_duplicate_of_the_source_task_gets_feature_extraction(store, bucket, demo):
    dataset = f"s3://{bucket}/digits-0-4-tiny"
    copy_dataset(store, demo.source_dataset, dataset, per_class_train=10)
    advice = assess(
        store, model_uri=demo.source_model, dataset_uri=dataset, features_root=f"s3://{bucket}/features",
        output_uri=f"s3://{bucket}/run",
    )  # fmt: skip
    assert (advice.quadrant, advice.strategy) == ("small_high", "feature_extraction"), advice.reason
    assert advice.size.images_per_class == 10 and advice.similarity.decided_by == "leep_relative"
    written = json.loads(store.get_bytes(f"s3://{bucket}/run/advice.json"))
    assert written == json.loads(json.dumps(advice.to_dict()))


def test_plenty_of_noise_textures_unlike_the_source_get_from_scratch_or_partial_freeze(store, bucket, demo, textures):
    advice = assess(store, model_uri=demo.source_model, dataset_uri=textures, features_root=f"s3://{bucket}/f")
    assert advice.strategy in ("from_scratch", "partial_freeze"), advice.reason
    assert advice.similarity.level == "low" and advice.size.images_per_class == 120


def test_a_source_without_a_usable_head_skips_leep_and_says_so(store, bucket, demo, small_target):
    weights, card = load_model_folder(store, demo.source_model)
    card.lineage, card.history = {"init": "random"}, []  # as a fetch with init='random' leaves it
    model = f"s3://{bucket}/random-resnet"
    save_model_folder(store, model, weights, card)
    advice = assess(store, model_uri=model, dataset_uri=small_target, features_root=f"s3://{bucket}/f")
    assert advice.similarity.scores["leep"] is None and advice.similarity.decided_by == "logme_gain"
    assert advice.similarity.notes == [f"LEEP skipped: {model} has random weights (init='random'), so its head "
                                       "predicts nothing yet"]  # fmt: skip


def test_features_come_from_the_cache_when_they_are_there(store, bucket, demo, small_target):
    root = f"s3://{bucket}/features"
    first = assess(store, model_uri=demo.source_model, dataset_uri=small_target, features_root=root, max_images=60)
    assert first.sample["features"] == "computed" and first.sample["images"] == 60
    assert first.sample["forward_passes"] > 0
    again = assess(store, model_uri=demo.source_model, dataset_uri=small_target, features_root=root, max_images=60)
    assert again.sample["features"] == "sample cache" and again.sample["forward_passes"] == 0
    assert again.similarity.scores == first.similarity.scores

    # Once the strategy's own extract task has cached the whole dataset, the assessment reads that instead.
    extract_features(store, model_uri=demo.source_model, dataset=list_dataset(store, small_target), features_root=root)
    full = assess(store, model_uri=demo.source_model, dataset_uri=small_target, features_root=root, max_images=60)
    assert full.sample["features"] == "full dataset cache" and full.sample["forward_passes"] == 0
    assert full.sample["images"] == 60


def test_the_source_weights_are_read_once_for_the_forward_pass_and_leep(store, bucket, demo, small_target, monkeypatch):
    reads = []
    real = type(store).downloaded

    def counting(self, uri, *args, **kwargs):
        reads.append(str(uri))
        return real(self, uri, *args, **kwargs)

    monkeypatch.setattr(type(store), "downloaded", counting)
    advice = assess(store, model_uri=demo.source_model, dataset_uri=small_target, features_root=f"s3://{bucket}/once")
    assert advice.sample["features"] == "computed" and advice.similarity.scores["leep"] is not None
    assert [uri for uri in reads if uri.startswith(demo.source_model)] == [f"{demo.source_model}/model.safetensors"]
