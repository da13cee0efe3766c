"""What the dashboard reads, against registries in the real S3 server: models with their champion and trend,
versions newest first with the gate's decisions, the history, two versions compared, and problems shown as
such instead of raised."""

from __future__ import annotations

import hashlib
import json

import pytest

from airflow_tl.dashboard.catalog import (
    VersionNotFoundError,
    compare_versions,
    history_rows,
    list_registry,
    version_rows,
)
from airflow_tl.data.manifest import MANIFEST_FILE, DataManifest
from airflow_tl.models.folder import load_model_folder, save_model_folder
from airflow_tl.registry.naming import allocate_version
from airflow_tl.registry.promotion import Comparison, Gate, promote_if_better
from airflow_tl.registry.store import Registry
from tests.helpers import publish_model

SMALL_ARCH = "mobilenet_v3_small"
IMAGES = 100


def _model_with_manifest(store, uri: str, base: str, train_keys: list[str]) -> str:
    """A copy of ``base`` whose data manifest says it trained on ``train_keys``."""
    weights, card = load_model_folder(store, base)
    manifest = DataManifest(
        "s3://data/ds", "fp-" + "-".join(train_keys), card.class_names,
        {"train": [(k, "etag") for k in sorted(train_keys)], "val": [], "test": [("test/a/1.png", "etag")]},
    ).to_bytes()  # fmt: skip
    card.lineage = {**card.lineage, "data_manifest_sha256": hashlib.sha256(manifest).hexdigest()}
    store.put_bytes(f"{uri}/{MANIFEST_FILE}", manifest)
    save_model_folder(store, uri, weights, card)
    return uri


@pytest.fixture
def registry_uri(store, bucket) -> str:
    """Model ``digits``: three runs of ``tl_a`` scoring 0.5, 0.7 and 0.6; the first two promoted, the third kept.
    Model ``broken``: a champion pointer naming a version that is not there. Folder ``notes``: not a model."""
    uri = f"s3://{bucket}/registry"
    registry = Registry(store, uri, "digits")
    base = f"s3://{bucket}/trained/base"
    publish_model(store, base, SMALL_ARCH)
    scores = {}
    for run, (score, keys) in enumerate([(0.5, ["a"]), (0.7, ["a", "b"]), (0.6, ["b", "c"])], start=1):
        model = _model_with_manifest(store, f"s3://{bucket}/trained/run{run}", base, [f"train/a/{k}.png" for k in keys])
        version = allocate_version(registry, dag_id="tl_a", run_id=f"run{run}")
        context = {"dag_id": "tl_a", "run_id": f"run{run}", "strategy": "partial_freeze"}
        training = {"trainable_params": 10}
        metrics = {"summary": {"accuracy": score, "n": IMAGES}, "context": context, "training": training}
        registry.write_version(version, model_uri=model, metrics=metrics, report_html=b"<html/>", plots={})
        scores[version] = score
        promote_if_better(
            registry, version=version, score=score, images=IMAGES, gate=Gate(),
            compare=lambda champion, s=score: Comparison(IMAGES, s, scores[champion.version]), context=context,
        )  # fmt: skip
    store.put_bytes(f"{uri}/broken/champion.json", json.dumps({"version": "v9"}).encode())
    store.put_bytes(f"{uri}/notes/readme.txt", b"not a model")
    return uri


def test_the_models_of_a_registry_with_champion_trend_and_problems(store, registry_uri):
    listing = list_registry(store, registry_uri)
    assert listing.problem is None
    broken, digits = listing.models  # "notes" holds neither versions nor a champion: not a model
    assert (broken.name, digits.name) == ("broken", "digits")
    assert digits.champion["version"] == "v2" and digits.champion["score"] == 0.7
    assert digits.champion["dag_id"] == "tl_a" and digits.champion["previous"] == "v1"
    assert [(p["version"], p["score"], p["is_champion"]) for p in digits.trend] == [
        ("v1", 0.5, False), ("v2", 0.7, True), ("v3", 0.6, False),
    ]  # fmt: skip
    assert digits.versions == 3 and digits.dag_ids == ["tl_a"] and digits.problem is None
    assert broken.champion is None and "points at version 'v9', which is missing or incomplete" in broken.problem


def test_a_registry_that_cannot_be_read_is_a_problem_naming_it(store):
    listing = list_registry(store, "s3://tl-no-such-bucket-for-the-catalog/registry")
    assert listing.models == [] and listing.problem.startswith("s3://tl-no-such-bucket-for-the-catalog/registry")


def test_versions_newest_first_with_the_gates_decisions(store, registry_uri):
    rows = version_rows(store, registry_uri, "digits")
    assert [(r["version"], r["decision"], r["is_champion"]) for r in rows] == [
        ("v3", "kept", False), ("v2", "promoted", True), ("v1", "promoted", False),
    ]  # fmt: skip
    assert "does not beat champion v2" in rows[0]["reason"]
    assert rows[0]["run_id"] == "run3" and rows[0]["strategy"] == "partial_freeze"
    assert rows[0]["trainable_params"] == 10 and rows[0]["metrics"]["accuracy"] == 0.6
    assert [e["version"] for e in history_rows(store, registry_uri, "digits")] == ["v3", "v2", "v1"]


def test_two_versions_compared_with_the_images_added_and_removed(store, registry_uri):
    compared = compare_versions(store, registry_uri, "digits", "v2", "v3")
    assert compared["versions"]["v2"]["summary"]["accuracy"] == 0.7
    assert compared["versions"]["v3"]["summary"]["accuracy"] == 0.6
    train = compared["data"]["splits"]["train"]
    assert train["added"] == ["train/a/c.png"] and train["removed"] == ["train/a/a.png"] and train["images"] == 2
    assert compared["data"]["splits"]["test"] == {"added": [], "removed": [], "changed": [], "images": 1}
    with pytest.raises(VersionNotFoundError, match="/digits/versions/v7 is not a complete version of digits"):
        compare_versions(store, registry_uri, "digits", "v2", "v7")
