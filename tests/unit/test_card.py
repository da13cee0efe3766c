"""The model card (model.json): round trip and strict validation that names the card's URI."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from airflow_tl.exceptions import InvalidModelCardError
from airflow_tl.models.card import FORMAT_VERSION, Block, InputSpec, ModelCard, validate_card_dict

URI = "s3://models/zoo/resnet18/model.json"
SHA = "0123456789abcdef" * 4


def make_card(**overrides: Any) -> ModelCard:
    fields: dict[str, Any] = {
        "architecture": "resnet18",
        "class_names": ["cat", "dog", "fox"],
        "input": InputSpec(crop_size=32, resize_size=36, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3]),
        "blocks": [Block("stem", ["conv1", "bn1"]), Block("layer1", ["layer1"])],
        "head": ["fc"],
        "lineage": {"source": "torchvision://resnet18/IMAGENET1K_V1", "seed": 3, "nested": {"a": [1, 2]}},
        "training": {"epochs": 2, "learning_rate": 0.01},
        "history": [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}],
        "metrics": {"accuracy": 0.75},
        "weights_sha256": SHA,
    }
    fields.update(overrides)
    return ModelCard(**fields)


def card_dict(**overrides: Any) -> dict[str, Any]:
    data = make_card().to_dict()
    data.update(overrides)
    return data


def input_dict(**overrides: Any) -> dict[str, Any]:
    data = copy.deepcopy(card_dict()["input"])
    data.update(overrides)
    return data


def invalid(data: Any, uri: str = URI) -> str:
    with pytest.raises(InvalidModelCardError) as err:
        ModelCard.from_dict(data, uri=uri)
    message = str(err.value)
    assert message.startswith(f"Model card {uri} is invalid: ")
    return message


# --- round trip -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "card",
    [
        make_card(),
        make_card(training=None, history=[], metrics={}, lineage={}),
        make_card(class_names=["only"], input=InputSpec(channels=1, mean=[0.5], std=[0.5], interpolation="nearest")),
        make_card(input=InputSpec()),
    ],
    ids=["full", "minimal", "one-channel", "default-input"],
)
def test_json_round_trip(card: ModelCard) -> None:
    raw = card.to_json()
    assert isinstance(raw, bytes)
    again = ModelCard.from_json(raw, uri=URI)
    assert again == card
    assert again.to_json() == raw  # sorted keys: byte-stable


def test_to_dict_carries_num_classes_and_format_version() -> None:
    data = json.loads(make_card().to_json())
    assert data["num_classes"] == 3
    assert data["format_version"] == FORMAT_VERSION
    assert data["input"] == {
        "crop_size": 32,
        "resize_size": 36,
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.25, 0.3],
        "channels": 3,
        "interpolation": "bilinear",
    }
    assert data["blocks"] == [
        {"name": "stem", "prefixes": ["conv1", "bn1"]},
        {"name": "layer1", "prefixes": ["layer1"]},
    ]


def test_from_dict_builds_typed_objects() -> None:
    card = ModelCard.from_dict(card_dict())
    assert isinstance(card.input, InputSpec)
    assert all(isinstance(b, Block) for b in card.blocks)
    assert card.num_classes == 3


def test_optional_fields_may_be_absent_or_null() -> None:
    data = card_dict(lineage=None, history=None, metrics=None, training=None)
    card = ModelCard.from_dict(data, uri=URI)
    assert (card.lineage, card.history, card.metrics, card.training) == ({}, [], {}, None)
    for name in ("lineage", "history", "metrics", "training"):
        del data[name]
    assert ModelCard.from_dict(data, uri=URI).lineage == {}


# --- missing fields ---------------------------------------------------------------------------------------------

REQUIRED = ["format_version", "architecture", "num_classes", "class_names", "input", "blocks", "head", "weights_sha256"]


@pytest.mark.parametrize("name", REQUIRED)
def test_one_missing_field(name: str) -> None:
    data = card_dict()
    del data[name]
    assert f"missing field {name!r}" in invalid(data)


def test_every_missing_field_is_listed_in_one_message() -> None:
    message = invalid({"architecture": "resnet18", "metrics": {}})
    missing = [name for name in REQUIRED if name != "architecture"]
    for name in missing:
        assert f"missing field {name!r}" in message
    assert "missing field 'architecture'" not in message
    assert message.count("missing field") == len(missing)


def test_empty_object_lists_all_required_fields() -> None:
    assert validate_card_dict({}) == [f"missing field {name!r}" for name in REQUIRED]


@pytest.mark.parametrize("data", [[], "card", 3, None])
def test_not_an_object(data: Any) -> None:
    assert f"expected a JSON object, got {type(data).__name__}" in invalid(data)


# --- contradictions and bad values ------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 4, 10])
def test_num_classes_must_match_class_names(count: int) -> None:
    message = invalid(card_dict(num_classes=count))
    assert f"'num_classes' is {count} but 'class_names' has 3 entries" in message


@pytest.mark.parametrize("count", [0, -1, "3", 3.0, True, None])
def test_num_classes_must_be_a_positive_integer(count: Any) -> None:
    assert f"'num_classes' must be a positive integer, got {count!r}" in invalid(card_dict(num_classes=count))


def test_duplicate_class_names() -> None:
    message = invalid(card_dict(class_names=["cat", "dog", "cat"]))
    assert "'class_names' has duplicates" in message


@pytest.mark.parametrize("names", [[], ["cat", ""], ["cat", 3, "fox"], "cat,dog,fox", None])
def test_class_names_must_be_non_empty_strings(names: Any) -> None:
    message = invalid(card_dict(class_names=names, num_classes=3))
    assert "'class_names' must be a non-empty list of non-empty strings" in message


@pytest.mark.parametrize(
    "sha",
    [
        "",
        SHA[:-1],  # 63 digits
        SHA + "0",  # 65 digits
        SHA.upper(),
        "g" * 64,
        None,
        int("1" * 20),
    ],
    ids=["empty", "short", "long", "upper", "non-hex", "none", "int"],
)
def test_bad_weights_sha256(sha: Any) -> None:
    assert f"'weights_sha256' must be 64 lowercase hex digits, got {sha!r}" in invalid(card_dict(weights_sha256=sha))


@pytest.mark.parametrize(("version", "ok"), [(FORMAT_VERSION, True), (FORMAT_VERSION + 1, False), ("1", False)])
def test_format_version(version: Any, ok: bool) -> None:
    data = card_dict(format_version=version)
    if ok:
        assert ModelCard.from_dict(data).format_version == version
    else:
        assert f"'format_version' {version!r} is not supported (expected {FORMAT_VERSION})" in invalid(data)


@pytest.mark.parametrize("architecture", ["", None, 18])
def test_bad_architecture(architecture: Any) -> None:
    message = invalid(card_dict(architecture=architecture))
    assert f"'architecture' must be a non-empty string, got {architecture!r}" in message


@pytest.mark.parametrize(
    ("blocks", "phrase"),
    [
        ([], "'blocks' must be a non-empty list"),
        ("stem", "'blocks' must be a non-empty list"),
        ([{"name": "stem"}], "'blocks[0]' must be {'name': str, 'prefixes': [str, ...]}"),
        ([{"name": "stem", "prefixes": ["conv1"]}, {"name": "x", "prefixes": []}], "'blocks[1]' must be"),
        ([{"name": 1, "prefixes": ["a"]}], "'blocks[0]' must be"),
        (["stem"], "'blocks[0]' must be"),
    ],
)
def test_bad_blocks(blocks: Any, phrase: str) -> None:
    assert phrase in invalid(card_dict(blocks=blocks))


@pytest.mark.parametrize("head", [[], "fc", [""], None])
def test_bad_head(head: Any) -> None:
    assert "'head' must be a non-empty list of module names" in invalid(card_dict(head=head))


@pytest.mark.parametrize(
    ("name", "value", "phrase"),
    [("lineage", [], "'lineage' must be an object"), ("history", {}, "'history' must be a list"),
     ("metrics", [1], "'metrics' must be an object"), ("training", "sgd", "'training' must be an object or null")],
)  # fmt: skip
def test_bad_optional_field_types(name: str, value: Any, phrase: str) -> None:
    assert phrase in invalid(card_dict(**{name: value}))


# --- input spec -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        ({"mean": [0.5, 0.5]}, "'input.mean' has 2 values but 'input.channels' is 3"),
        ({"std": [0.2] * 4}, "'input.std' has 4 values but 'input.channels' is 3"),
        ({"channels": 1}, "'input.mean' has 3 values but 'input.channels' is 1"),
        ({"std": [0.2, 0.0, 0.2]}, "'input.std' must be positive, got [0.2, 0.0, 0.2]"),
        ({"std": [0.2, -0.1, 0.2]}, "'input.std' must be positive, got [0.2, -0.1, 0.2]"),
        ({"std": [0.2, float("inf"), 0.2]}, "'input.std' must be positive"),
        ({"std": [0.2, float("nan"), 0.2]}, "'input.std' must be positive"),
        ({"mean": []}, "'input.mean' must be a list of numbers, got []"),
        ({"mean": ["0.5", 0.5, 0.5]}, "'input.mean' must be a list of numbers"),
        ({"std": 0.2}, "'input.std' must be a list of numbers, got 0.2"),
        (
            {"interpolation": "lanczos"},
            "'input.interpolation' must be one of nearest, bilinear, bicubic, got 'lanczos'",
        ),
        ({"interpolation": "BILINEAR"}, "'input.interpolation' must be one of nearest, bilinear, bicubic"),
        ({"crop_size": 0}, "'input.crop_size' must be a positive integer, got 0"),
        ({"resize_size": 224.0}, "'input.resize_size' must be a positive integer, got 224.0"),
        ({"channels": True}, "'input.channels' must be a positive integer, got True"),
        ({"extra": 1}, "'input' has unknown fields ['extra']"),
    ],
)
def test_bad_input_spec(overrides: dict[str, Any], phrase: str) -> None:
    assert phrase in invalid(card_dict(input=input_dict(**overrides)))


def test_input_missing_fields_are_reported_not_raised_as_type_errors() -> None:
    message = invalid(card_dict(input={"crop_size": 32}))
    for name in ("resize_size", "channels"):
        assert f"'input.{name}' must be a positive integer, got None" in message
    assert "'input.mean' must be a list of numbers, got None" in message
    assert "'input.interpolation' must be one of" in message


def test_input_must_be_an_object() -> None:
    assert "'input' must be an object" in invalid(card_dict(input=[224]))


def test_several_problems_are_reported_together() -> None:
    data = card_dict(class_names=["a", "a"], weights_sha256="x", input=input_dict(interpolation="cubic"))
    message = invalid(data)
    assert "'class_names' has duplicates" in message
    assert "'weights_sha256' must be 64 lowercase hex digits" in message
    assert "'input.interpolation' must be one of" in message
    assert message.endswith(".")


# --- from_json --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"not json", b"\x80\x81\x82", b'{"a": 1,}', b"\xff\xfe\x00"],
    ids=["empty", "truncated", "text", "bad-utf8", "trailing-comma", "bom-garbage"],
)
def test_from_json_rejects_invalid_json(raw: bytes) -> None:
    with pytest.raises(InvalidModelCardError) as err:
        ModelCard.from_json(raw, uri=URI)
    assert str(err.value).startswith(f"Model card {URI} is not valid JSON: ")


def test_from_json_validates_content() -> None:
    with pytest.raises(InvalidModelCardError) as err:
        ModelCard.from_json(b'{"architecture": "resnet18"}', uri=URI)
    assert str(err.value).startswith(f"Model card {URI} is invalid: missing field 'format_version'")


@pytest.mark.parametrize("uri", ["s3://bucket/a/model.json", "s3://other/versions/7/model.json"])
def test_messages_name_the_uri_given(uri: str) -> None:
    with pytest.raises(InvalidModelCardError, match="not valid JSON") as err:
        ModelCard.from_json(b"{", uri=uri)
    assert uri in str(err.value)
    assert uri in invalid(card_dict(num_classes=9), uri=uri)


def test_default_uri_placeholder() -> None:
    with pytest.raises(InvalidModelCardError) as err:
        ModelCard.from_dict({})
    assert str(err.value).startswith("Model card <model card> is invalid: ")


def test_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        ModelCard.from_json(b"[]", uri=URI)
