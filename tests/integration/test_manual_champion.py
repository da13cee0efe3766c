"""Promotions and rollbacks by a person, against the real S3 server: the champion moves only as asked, only
by a conditional write, and every action is in the history with the user's name and reason."""

from __future__ import annotations

import json

import pytest

from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.registry.manual import ActionRefusedError, set_champion
from airflow_tl.registry.promotion import Comparison, Gate, promote_if_better
from airflow_tl.registry.store import Registry
from tests.helpers import publish_model


@pytest.fixture
def registry(store, bucket) -> Registry:
    """v1 (0.5, promoted by the gate), v2 (0.7, promoted), v3 (0.6, kept)."""
    registry = Registry(store, f"s3://{bucket}/registry", "digits")
    model = f"s3://{bucket}/trained/m"
    publish_model(store, model, "mobilenet_v3_small")
    scores = {}
    for number, score in enumerate((0.5, 0.7, 0.6), start=1):
        version = f"v{number}"
        registry.write_version(
            version, model_uri=model, metrics={"summary": {"accuracy": score}}, report_html=b"<html/>", plots={}
        )
        scores[version] = score
        promote_if_better(
            registry, version=version, score=score, images=100, gate=Gate(),
            compare=lambda champion, s=score: Comparison(100, s, scores[champion.version]), context={},
        )  # fmt: skip
    assert registry.champion().champion.version == "v2"
    return registry


def _state(store, registry: Registry):
    return store.get_with_etag(f"{registry.uri}/champion.json"), [e["version"] for e in registry.history()]


def test_a_promotion_by_hand_moves_the_champion_and_says_who_and_why(registry):
    event = set_champion(registry, version="v3", action="promote", user="ada", reason="v2 fails on night photos",
                         expected="v2")  # fmt: skip
    pointer = registry.champion().champion.pointer
    assert pointer["version"] == "v3" and pointer["previous"] == "v2" and pointer["user"] == "ada"
    assert pointer["score"] == 0.6 and pointer["metric"] == "accuracy" and pointer["action"] == "promote"
    last = registry.history()[-1]
    assert {k: last[k] for k in ("version", "promoted", "action", "user", "reason", "champion_before")} == {
        "version": "v3", "promoted": True, "action": "promote", "user": "ada",
        "reason": "v2 fails on night photos", "champion_before": "v2",
    }  # fmt: skip
    assert event["history_uri"].endswith("-v3-promoted.json")


def test_a_rollback_goes_back_to_an_earlier_champion_only(store, registry):
    set_champion(registry, version="v1", action="rollback", user="ada", reason="v2 regressed", expected="v2")
    assert registry.champion().champion.version == "v1"
    before = _state(store, registry)
    with pytest.raises(ActionRefusedError, match="v3 was never the champion .* promote it instead"):
        set_champion(registry, version="v3", action="rollback", user="ada", reason="x", expected="v1")
    assert _state(store, registry) == before


@pytest.mark.parametrize(
    ("version", "expected", "message"),
    [
        ("v9", "v2", r"versions/v9 is not a complete version \(it has no metrics.json\)"),
        ("v2", "v2", "v2 is already the champion"),
        ("v3", "v1", "The champion of .* is now v2, not v1 as when you looked"),
    ],
)
def test_refused_actions_write_nothing(store, registry, version, expected, message):
    before = _state(store, registry)
    with pytest.raises(ActionRefusedError, match=message):
        set_champion(registry, version=version, action="promote", user="ada", reason="why", expected=expected)
    assert _state(store, registry) == before


def test_a_reason_is_required(store, registry):
    before = _state(store, registry)
    with pytest.raises(InvalidArgumentError, match="A reason is required"):
        set_champion(registry, version="v3", action="promote", user="ada", reason="  ", expected="v2")
    assert _state(store, registry) == before


def test_a_gate_that_writes_first_is_never_overwritten(store, registry, monkeypatch):
    # The person's read of champion.json happens; then a gate replaces it before the person's write lands.
    read = registry.champion

    def read_then_a_gate_promotes():
        state = read()
        gate = Registry(store, registry.uri.rsplit("/", 1)[0], "digits")
        assert gate.replace_champion({**state.champion.pointer, "version": "v1", "by": "gate"}, etag=state.etag)
        return state

    monkeypatch.setattr(registry, "champion", read_then_a_gate_promotes)
    with pytest.raises(ActionRefusedError, match="was replaced while this promote was being written"):
        set_champion(registry, version="v3", action="promote", user="ada", reason="why", expected="v2")
    pointer = json.loads(store.get_bytes(f"{registry.uri}/champion.json"))
    assert pointer["version"] == "v1" and pointer["by"] == "gate"
    assert [e["version"] for e in registry.history()] == ["v1", "v2", "v3"]
