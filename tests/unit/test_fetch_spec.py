"""FetchSpec validates itself, naming the argument, and fingerprints what it asks for."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import pytest

from airflow_tl.exceptions import InvalidArgumentError, UnknownArchitectureError
from airflow_tl.pretrained.fetch import FetchSpec

TV = "torchvision://resnet18/IMAGENET1K_V1"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pretrained_uri": TV},
        {"pretrained_uri": "s3://zoo/models/digits"},
        {"pretrained_uri": "https://h.example/resnet18-f37072fd.pth", "architecture": "resnet18"},
        {"architecture": "resnet18", "init": "random", "num_classes": 5},
        {"pretrained_uri": TV, "class_names": ["a", "b"], "num_classes": 2, "image_size": 64, "seed": -3},
        {"pretrained_uri": TV, "class_names": ["a"], "weights_mirror": "s3://mirror/weights"},
    ],
)
def test_valid_specs(kwargs: dict[str, Any]) -> None:
    spec = FetchSpec(**kwargs)
    for name, value in kwargs.items():
        assert getattr(spec, name) == value


def test_defaults() -> None:
    spec = FetchSpec(pretrained_uri=TV)
    assert (spec.architecture, spec.init, spec.class_names, spec.num_classes) == (None, "pretrained", None, None)
    assert (spec.image_size, spec.seed, spec.weights_mirror) == (None, 0, None)


def invalid(**kwargs: Any) -> str:
    with pytest.raises(InvalidArgumentError) as err:
        FetchSpec(**kwargs)
    return str(err.value)


@pytest.mark.parametrize("init", ["scratch", "Pretrained", "", None, "random "])
def test_init_must_be_pretrained_or_random(init: Any) -> None:
    message = invalid(pretrained_uri=TV, init=init)
    assert message == f"Argument init accepts only 'pretrained' and 'random'. Provided value: {init!r}."


@pytest.mark.parametrize("init", ["pretrained", "random"])
def test_needs_a_uri_or_an_architecture(init: str) -> None:
    message = invalid(init=init)
    assert "pretrained_uri" in message and "architecture" in message


def test_pretrained_init_needs_a_uri() -> None:
    message = invalid(architecture="resnet18", init="pretrained")
    assert message.startswith("Argument init='pretrained' needs a pretrained_uri")
    assert "'resnet18'" in message and "init='random'" in message


@pytest.mark.parametrize("names", [[], ["a", "a"], ["a", ""], ["a", 1], "ab", ("a", "b"), [None]])
def test_bad_class_names(names: Any) -> None:
    message = invalid(pretrained_uri=TV, class_names=names)
    assert message == (f"Argument class_names must be a list of distinct non-empty strings. Provided value: {names!r}.")


@pytest.mark.parametrize("name", ["num_classes", "image_size"])
@pytest.mark.parametrize("value", [0, -1, 2.0, "3", True])
def test_bad_positive_integers(name: str, value: Any) -> None:
    message = invalid(pretrained_uri=TV, **{name: value})
    assert message == f"Argument {name} must be a positive integer. Provided value: {value!r}."


@pytest.mark.parametrize("count", [1, 3, 10])
def test_num_classes_contradicting_class_names(count: int) -> None:
    message = invalid(pretrained_uri=TV, class_names=["a", "b"], num_classes=count)
    assert message == f"Argument num_classes={count} contradicts class_names, which has 2 entries."


@pytest.mark.parametrize("seed", ["0", 1.0, None, True])
def test_bad_seed(seed: Any) -> None:
    assert invalid(pretrained_uri=TV, seed=seed) == f"Argument seed must be an integer. Provided value: {seed!r}."


@pytest.mark.parametrize(
    "kwargs",
    [{"architecture": "resnet19", "init": "random"}, {"pretrained_uri": TV, "architecture": "ResNet18"}],
)
def test_unknown_architecture(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UnknownArchitectureError) as err:
        FetchSpec(**kwargs)
    assert f"Unknown architecture {kwargs['architecture']!r}" in str(err.value)


def test_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        FetchSpec(pretrained_uri=TV, seed="x")  # type: ignore[arg-type]


# --- fingerprint ------------------------------------------------------------------------------------------------

BASE = FetchSpec(
    pretrained_uri=TV,
    architecture="resnet18",
    init="pretrained",
    class_names=["a", "b", "c"],
    num_classes=3,
    image_size=32,
    seed=1,
    weights_mirror="s3://mirror/weights",
)

CHANGES = {
    "pretrained_uri": "torchvision://resnet18/IMAGENET1K_V2",
    "architecture": None,
    "init": "random",
    "class_names": ["a", "b", "d"],
    "num_classes": None,
    "image_size": 64,
    "seed": 2,
    "weights_mirror": None,
}


def test_changes_cover_every_field() -> None:
    # freeze_layers is checked, not fetched: the same folder serves every value of it.
    assert set(CHANGES) == {f.name for f in fields(FetchSpec)} - {"freeze_layers"}


@pytest.mark.parametrize("value", [None, 0, 3, "layer3", "all"])
def test_fingerprint_ignores_freeze_layers(value: Any) -> None:
    assert replace(BASE, freeze_layers=value).fingerprint() == BASE.fingerprint()


def test_fingerprint_is_stable() -> None:
    fingerprint = BASE.fingerprint()
    assert len(fingerprint) == 64 and set(fingerprint) <= set("0123456789abcdef")
    assert fingerprint == BASE.fingerprint()
    assert fingerprint == replace(BASE).fingerprint()
    assert (
        fingerprint == FetchSpec(**{f.name: getattr(BASE, f.name) for f in reversed(fields(FetchSpec))}).fingerprint()
    )


@pytest.mark.parametrize(("name", "value"), list(CHANGES.items()))
def test_fingerprint_changes_with_every_field(name: str, value: Any) -> None:
    changed = replace(BASE, **{name: value})
    assert getattr(changed, name) != getattr(BASE, name)
    assert changed.fingerprint() != BASE.fingerprint()


def test_fingerprint_sees_class_order() -> None:
    assert replace(BASE, class_names=["c", "b", "a"]).fingerprint() != BASE.fingerprint()


def test_fingerprint_holds_no_credentials() -> None:
    # A retry whose URL was presigned anew, or whose password was rotated, asks for the same source;
    # and a hash over a password would let whoever reads the card test guesses of it.
    signed = "https://u:{pw}@h.example/resnet18-f37072fd.pth?X-Amz-Signature={sig}"
    first = FetchSpec(signed.format(pw="old-password", sig="aaaa"), weights_mirror="https://m:x1@h/")
    again = FetchSpec(signed.format(pw="new-password", sig="bbbb"), weights_mirror="https://m:x2@h/")
    assert first.fingerprint() == again.fingerprint()
    other = FetchSpec("https://u:x@h.example/resnet34-f37072fd.pth", architecture="resnet34")
    assert other.fingerprint() != first.fingerprint()
