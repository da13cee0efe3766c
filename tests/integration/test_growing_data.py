"""Scheduled retraining on data that grows, through real DAG runs: the split never moves, every version records
its data manifest, the gate compares only on test images neither model has seen, and a change of classes is
decided by on_class_change, never silently."""

from __future__ import annotations

import gzip
import json

from airflow_tl.data.dataset import list_dataset
from airflow_tl.data.manifest import DataManifest
from airflow_tl.evaluation.task import evaluate_and_register
from airflow_tl.models.card import ModelCard
from airflow_tl.registry.promotion import Gate
from airflow_tl.registry.store import Registry
from tests.helpers import flatten_dataset

DAG = "tl_test_pipeline_feature_extraction"


def manifest_of(store, version_uri: str) -> DataManifest:
    uri = f"{version_uri}/data_manifest.json.gz"
    return DataManifest.from_bytes(store.get_bytes(uri), uri=uri)


def run(run_dag, demo, dataset: str, registry: str, work: str, **extra) -> dict:
    conf = {"dataset_uri": dataset, "pretrained_uri": demo.source_model, "registry_uri": registry,
            "model_name": "digits", "work_uri": work, "epochs": 3} | extra  # fmt: skip
    result = run_dag(DAG, conf)
    assert result.state == "success", result.failures
    return result.xcoms["evaluate"]


def grow(store, demo, dataset: str, per_class: int) -> None:
    """More training images of the same digits arrive (ones the first listing did not have)."""
    for digit in "56789":
        for obj in store.list(f"{demo.target_dataset}/train/{digit}")[-per_class:]:
            store.copy(obj.uri, f"{dataset}/{digit}/new-{obj.key.rsplit('/', 1)[1]}")


def test_scheduled_retraining_on_a_growing_flat_dataset(store, bucket, demo, small_target, run_dag):
    dataset, registry_uri, work = f"s3://{bucket}/flat", f"s3://{bucket}/registry", f"s3://{bucket}/work"
    flatten_dataset(store, small_target, dataset)
    registry = Registry(store, registry_uri, "digits")

    # Week 1: the first version, with a manifest of exactly the listing it trained on.
    first = run(run_dag, demo, dataset, registry_uri, work)
    assert first["promoted"]
    listing = list_dataset(store, dataset)
    manifest = manifest_of(store, first["model_uri"])
    assert manifest == listing.manifest() and manifest.dataset_uri == dataset
    raw = json.loads(gzip.decompress(store.get_bytes(f"{first['model_uri']}/data_manifest.json.gz")))
    assert set(raw["splits"]) == {"train", "val", "test"} and raw["class_names"] == list("56789")
    assert all(len(pair) == 2 for pairs in raw["splits"].values() for pair in pairs)

    # Week 2: the data grew. No old image changed split, so the champion trained on none of the test images.
    grow(store, demo, dataset, per_class=12)
    second = run(run_dag, demo, dataset, registry_uri, work)
    grown = manifest_of(store, second["model_uri"])
    for split in ("train", "val", "test"):
        assert manifest.keys(split) <= grown.keys(split)
    assert len(grown.keys("train", "val", "test")) == len(manifest.keys("train", "val", "test")) + 60
    comparison = registry.read_metrics(second["version"])["champion_at_evaluation"]["comparison"]
    assert comparison["excluded"] == 0 and comparison["images"] == len(grown.keys("test"))
    assert second["images_compared"] == len(grown.keys("test"))

    # A run with another split seed: its test split includes images the champion trained on; those are left out.
    third = run(run_dag, demo, dataset, registry_uri, work, seed=1)
    champion = manifest_of(store, registry.version_uri(third["champion_before"]))
    candidate = manifest_of(store, third["model_uri"])
    unseen = candidate.keys("test") - champion.keys("train", "val")
    assert 0 < len(unseen) < len(candidate.keys("test"))
    comparison = registry.read_metrics(third["version"])["champion_at_evaluation"]["comparison"]
    assert comparison["images"] == len(unseen) == third["images_compared"]
    assert comparison["excluded"] == len(candidate.keys("test")) - len(unseen)
    # Too few of them to trust a promotion (min_test_images defaults to 50), and the history says so.
    assert len(unseen) < 50 and not third["promoted"]
    event = next(e for e in registry.history() if e["version"] == third["version"])
    assert event["images_compared"] == len(unseen)
    assert event["reason"].startswith(f"only {len(unseen)} test images that neither model trained or validated on")

    # A new class arrives: the champion cannot be compared; by default it stays, and the history says why.
    for obj in store.list(f"{demo.source_dataset}/train/4")[:40]:
        store.copy(obj.uri, f"{dataset}/4/{obj.key.rsplit('/', 1)[1]}")
    champion_before = registry.champion().champion.version
    kept = run(run_dag, demo, dataset, registry_uri, work)
    assert (
        not kept["promoted"] and "the classes changed" in kept["reason"] and "on_class_change='keep'" in kept["reason"]
    )
    assert registry.champion().champion.version == champion_before
    event = next(e for e in registry.history() if e["version"] == kept["version"])
    assert (
        not event["promoted"] and event["comparison"]["classes_differ"] and event["gate"]["on_class_change"] == "keep"
    )

    promoted = run(run_dag, demo, dataset, registry_uri, work, on_class_change="promote")
    assert promoted["promoted"] and "on_class_change='promote'" in promoted["reason"]
    assert registry.champion().champion.version == promoted["version"]


def test_a_champion_from_before_manifests_is_compared_and_the_decision_says_so(
    store, bucket, demo, small_target, run_dag
):
    registry_uri, work = f"s3://{bucket}/registry", f"s3://{bucket}/work"
    trained = run(run_dag, demo, small_target, f"s3://{bucket}/scratch-registry", work)
    # The same model as an older release would have registered it: no manifest, and a card that names none.
    legacy = f"s3://{bucket}/legacy-model"
    card = json.loads(store.get_bytes(f"{trained['model_uri']}/model.json"))
    del card["lineage"]["data_manifest_sha256"]
    store.copy(f"{trained['model_uri']}/model.safetensors", f"{legacy}/model.safetensors")
    store.put_bytes(f"{legacy}/model.json", ModelCard.from_dict(card).to_json())
    evaluate_and_register(
        store, model_uri=legacy, dataset_uri=small_target, registry_uri=registry_uri, model_name="digits",
        version="legacy", gate=Gate(),
    )  # fmt: skip
    registry = Registry(store, registry_uri, "digits")
    assert registry.champion().champion.version == "legacy"
    assert not store.exists(f"{registry.version_uri('legacy')}/data_manifest.json.gz")

    candidate = run(run_dag, demo, small_target, registry_uri, work, epochs=4)

    assert candidate["champion_before"] == "legacy"
    assert (
        "has no data manifest" in candidate["reason"] and "training images could not be excluded" in candidate["reason"]
    )
    comparison = registry.read_metrics(candidate["version"])["champion_at_evaluation"]["comparison"]
    assert comparison["excluded"] == 0 and comparison["images"] == candidate["metrics"]["n"]
    event = next(e for e in registry.history() if e["version"] == candidate["version"])
    assert "could not be excluded" in event["comparison"]["note"]
