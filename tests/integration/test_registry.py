"""The registry against the real S3 server: complete-or-absent versions, a champion pointer that is always
valid, an append-only history, and promotions that race safely."""

from __future__ import annotations

import json
import threading

import pytest

from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.registry.promotion import Comparison, Gate, promote_if_better
from airflow_tl.registry.store import CHAMPION_FILE, METRICS_FILE, Registry, RegistryError
from tests.helpers import keys_under, publish_model

SMALL_ARCH = "mobilenet_v3_small"  # a tenth of ResNet-18's weights: the registry copies many of them here
IMAGES = 100  # test images in every comparison here: above the default min_test_images


def against(score: float, champion_scores) -> callable:
    """A compare callback: the candidate's ``score`` against each champion's score (a dict or a function)."""
    lookup = champion_scores if callable(champion_scores) else champion_scores.__getitem__
    return lambda champion: Comparison(IMAGES, score, lookup(champion.version))


def promote(registry, version, score, gate=None, champion_scores=lambda v: None, **kw):
    return promote_if_better(
        registry, version=version, score=score, images=IMAGES, gate=gate or Gate(),
        compare=against(score, champion_scores), context={}, **kw,
    )  # fmt: skip


@pytest.fixture
def registry(store, bucket) -> Registry:
    return Registry(store, f"s3://{bucket}/registry", "digits")


def add_version(store, bucket, registry: Registry, version: str, seed: int = 0, **kw) -> str:
    model = f"s3://{bucket}/trained/{version}-{seed}"
    publish_model(store, model, SMALL_ARCH, seed=seed)
    registry.write_version(version, model_uri=model, metrics={"summary": {}}, report_html=b"<html/>", plots={}, **kw)
    return model


def test_a_version_holds_the_model_report_plots_and_metrics_last(store, bucket, registry):
    model = f"s3://{bucket}/trained/m"
    card = publish_model(store, model, SMALL_ARCH)
    written = registry.write_version(
        "v1", model_uri=model, metrics={"summary": {"accuracy": 0.5}}, report_html=b"<html/>", plots={"c.png": b"png"}
    )
    assert written and registry.is_complete("v1") and registry.versions() == ["v1"]
    names = [k.rsplit("/versions/v1/", 1)[1] for k in keys_under(store, registry.version_uri("v1"))]
    assert sorted(names) == ["metrics.json", "model.json", "model.safetensors", "plots/c.png", "report.html"]
    metrics = registry.read_metrics("v1")
    assert metrics["model_sha256"] == card.weights_sha256 and metrics["summary"] == {"accuracy": 0.5}


def test_a_retry_keeps_a_complete_version_with_the_same_weights(store, bucket, registry):
    add_version(store, bucket, registry, "v1")
    model = f"s3://{bucket}/trained/v1-0"
    assert registry.write_version("v1", model_uri=model, metrics={}, report_html=b"", plots={}) is False
    assert registry.versions() == ["v1"]


def test_a_complete_champion_is_never_rewritten_with_other_weights(store, bucket, registry):
    add_version(store, bucket, registry, "v1")
    other = f"s3://{bucket}/trained/other"
    publish_model(store, other, SMALL_ARCH, seed=1)
    with pytest.raises(RegistryError, match="is the champion and already holds other weights"):
        registry.write_version("v1", model_uri=other, metrics={}, report_html=b"", plots={}, is_champion=True)
    assert registry.is_complete("v1")


def test_an_interrupted_write_leaves_an_incomplete_version_that_cannot_be_champion(store, bucket, registry):
    add_version(store, bucket, registry, "v1")
    store.delete(f"{registry.version_uri('v1')}/{METRICS_FILE}")  # as if the writer died before its last PUT
    assert not registry.is_complete("v1") and registry.versions() == []
    with pytest.raises(RegistryError, match="not complete"):
        registry.replace_champion({"version": "v1"}, etag=None)
    assert not store.exists(f"{registry.uri}/{CHAMPION_FILE}")


@pytest.mark.parametrize(
    "pointer", [b'{"version": "ghost"}', b"not json", b'{"no_version": 1}', b'{"version": ""}'],
    ids=["missing-version", "not-json", "no-version-field", "empty-version"],
)  # fmt: skip
def test_a_broken_pointer_counts_as_no_champion_and_can_be_replaced(store, bucket, registry, pointer, caplog):
    store.put_bytes(f"{registry.uri}/{CHAMPION_FILE}", pointer)
    state = registry.champion()
    assert state.champion is None and state.etag and state.problem and "no champion" in state.problem
    add_version(store, bucket, registry, "v1")
    decision = promote(registry, "v1", 0.5)
    assert decision.promoted and decision.reason == "there is no champion yet"
    assert json.loads(store.get_bytes(f"{registry.uri}/{CHAMPION_FILE}"))["version"] == "v1"
    (event,) = registry.history()
    assert event["problem"] == state.problem


def test_history_entries_are_never_overwritten(store, bucket, registry):
    first = registry.record({"version": "v1", "promoted": True})
    second = registry.record({"version": "v1", "promoted": True})
    assert first != second and len(registry.history()) == 2
    assert store.put_if(first, b"{}", etag=None) is False  # the key exists: a conditional create refuses


def test_the_gate_keeps_a_better_champion_and_records_both_decisions(store, bucket, registry):
    for version in ("good", "worse", "better"):
        add_version(store, bucket, registry, version)
    scores = {"good": 0.80, "worse": 0.70, "better": 0.90}
    gate = Gate("accuracy", min_improvement=0.05)
    assert promote(registry, "good", 0.80, gate, scores).promoted
    kept = promote(registry, "worse", 0.70, gate, scores)
    assert not kept.promoted and kept.champion_before == "good" and "does not beat champion good" in kept.reason
    won = promote(registry, "better", 0.90, gate, scores)
    assert won.promoted and won.champion_before == "good" and won.champion_score == 0.80
    assert won.images_compared == IMAGES and "on the same 100 test images that neither model" in won.reason
    assert registry.champion().champion.version == "better"
    assert [(e["version"], e["promoted"], e["champion_before"]) for e in registry.history()] == [
        ("good", True, None),
        ("worse", False, "good"),
        ("better", True, "good"),
    ]


def test_a_promotion_that_loses_the_race_decides_again_against_the_new_champion(store, bucket, registry):
    for version in ("old", "rival", "late"):
        add_version(store, bucket, registry, version)
    promote(registry, "old", 0.5)
    scored = []

    def score(version):
        scored.append(version)
        if version == "old":  # while "late" scores the old champion, a rival run promotes itself
            promote(registry, "rival", 0.95, champion_scores={"old": 0.5})
        return {"old": 0.5, "rival": 0.95}[version]

    decision = promote(registry, "late", 0.9, champion_scores=score)
    assert scored == ["old", "rival"]  # its first conditional PUT failed; it re-read and scored the rival
    assert not decision.promoted and decision.champion_before == "rival"
    assert registry.champion().champion.version == "rival"


def test_concurrent_promotions_leave_the_pointer_at_a_complete_version(store, bucket, registry):
    versions = [f"v{i}" for i in range(6)]
    for v in versions:
        add_version(store, bucket, registry, v)
    score = {v: i / 10 for i, v in enumerate(versions)}
    errors = []

    def run(version):
        try:
            promote(registry, version, score[version], champion_scores=score, attempts=20)
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    champion = registry.champion()
    assert champion.problem is None and registry.is_complete(champion.champion.version)
    # Each promotion beat the champion it replaced, so the pointer ends at the best version.
    assert champion.champion.version == "v5"
    history = registry.history()
    assert len(history) == len(versions)
    for event in history:
        if event["promoted"] and event["champion_before"] is not None:
            assert event["score"] > score[event["champion_before"]]


def test_model_names_are_checked():
    with pytest.raises(InvalidArgumentError, match="Argument model_name must be"):
        Registry(None, "s3://b/registry", "../escape")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": "f2"}, "Argument gate_metric accepts only 'accuracy', 'macro_f1', 'log_loss' and"),
        ({"min_improvement": -0.1}, "Argument min_improvement must be a number >= 0"),
        ({"min_score": "high"}, "Argument min_score must be a number or None"),
    ],
)
def test_gate_arguments_are_checked(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        Gate(**kwargs)
