"""Typed rendering: operator arguments become the types their signatures declare, or fail naming them."""

from __future__ import annotations

from typing import Any, Literal

import pytest

from airflow_tl.exceptions import InvalidArgumentError, InvalidURIError
from airflow_tl.operators import (
    EvaluateOperator,
    ExtractFeaturesOperator,
    FetchPretrainedOperator,
    FreezeAndTrainOperator,
)
from airflow_tl.operators.arguments import coerce, declared_types, describe, is_supported
from airflow_tl.operators.base import TransferLearningBaseOperator

OPERATORS = [FetchPretrainedOperator, ExtractFeaturesOperator, FreezeAndTrainOperator, EvaluateOperator]


@pytest.mark.parametrize(
    ("hint", "rendered", "value"),
    [
        (int, "10", 10),
        (int, " -3 ", -3),
        (int, 7, 7),
        (float, "1e-3", 1e-3),
        (float, "10", 10.0),
        (float, 2, 2),
        (float, 0.5, 0.5),
        (bool, "True", True),
        (bool, "false", False),
        (bool, True, True),
        (int | None, "None", None),
        (int | None, "", None),
        (int | None, None, None),
        (float | None, "0.25", 0.25),
        (int | Literal["all"], "all", "all"),
        (int | Literal["all"], "3", 3),
        (int | Literal["all"], 3, 3),
        (bool | Literal["auto"], "auto", "auto"),
        (bool | Literal["auto"], "True", True),
        (list[str] | None, "['5', '6', '7']", ["5", "6", "7"]),  # a Python list as Jinja renders it
        (list[str] | None, '["cat", "dog"]', ["cat", "dog"]),
        (list[str] | None, ["a"], ["a"]),
        (list[str] | None, "None", None),
        (dict[str, Any] | None, "{'strategy': 'partial_freeze', 'k': None}", {"strategy": "partial_freeze", "k": None}),
        (dict[str, Any] | None, '{"a": true, "b": null}', {"a": True, "b": None}),
        (dict[str, Any] | None, {"a": 1}, {"a": 1}),
        # strings stay exactly as rendered, even when they spell a Python constant
        (str, "None", "None"),
        (str, "s3://b/None/True/False", "s3://b/None/True/False"),
        (str | None, "s3://b/None", "s3://b/None"),
        (str | None, " padded ", " padded "),
        (str | None, "None", None),
        (str | None, "", None),
        (str, "", ""),
        (str | None, 2024, "2024"),  # native rendering read a name such as a version "2024" as a number
    ],
)
def test_coerce(hint: Any, rendered: Any, value: Any) -> None:
    converted = coerce("x", hint, rendered)
    assert converted == value and type(converted) is type(value)


@pytest.mark.parametrize(
    ("hint", "rendered", "expected"),
    [
        (int, "ten", "an integer"),
        (int, "1.5", "an integer"),
        (int, 1.5, "an integer"),
        (int, True, "an integer"),
        (int, "None", "an integer"),  # None only for an optional argument
        (int, None, "an integer"),
        (float, "fast", "a number"),
        (float, "nan", "a number"),
        (float, "inf", "a number"),
        (float, False, "a number"),
        (bool, "yes", "True or False"),
        (bool, 1, "True or False"),
        (int | None, "3 epochs", "an integer or None"),
        (int | Literal["all"], "some", "an integer or 'all'"),
        (int | Literal["all"], "ALL", "an integer or 'all'"),
        (bool | Literal["auto"], "maybe", "True, False or 'auto'"),
        (list[str] | None, "a,b", "a list of strings or None"),
        (list[str] | None, "[1, 2]", "a list of strings or None"),
        (list[str] | None, "('a', 'b')", "a list of strings or None"),
        (list[str] | None, "__import__('os').system('true')", "a list of strings or None"),  # never evaluated
        (dict[str, Any] | None, "[1]", "a JSON object or None"),
        (dict[str, Any] | None, "{1: 2}", "a JSON object or None"),
        (str, ["s3://b"], "a string"),
        (str | None, True, "a string or None"),
    ],
)
def test_coerce_refuses(hint: Any, rendered: Any, expected: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        coerce("arg", hint, rendered)
    assert str(err.value) == f"Argument arg accepts only {expected}. Provided value: {rendered!r}."


@pytest.mark.parametrize("operator", OPERATORS)
def test_every_templated_argument_has_a_supported_declared_type(operator: type) -> None:
    types = declared_types(operator, TransferLearningBaseOperator)
    assert set(operator.template_fields) <= set(types)
    unsupported = {name: hint for name, hint in types.items() if not is_supported(hint)}
    assert unsupported == {}


@pytest.mark.parametrize("operator", OPERATORS)
def test_every_uri_argument_is_templated(operator: type) -> None:
    assert "work_uri" in operator.uri_fields
    assert set(operator.uri_fields) <= set(operator.template_fields)
    assert {name for name in operator.template_fields if name.endswith(("_uri", "_root", "_mirror"))} == set(
        operator.uri_fields
    )


def test_declared_types_of_the_training_operator() -> None:
    types = declared_types(FreezeAndTrainOperator, TransferLearningBaseOperator)
    assert describe(types["freeze_layers"]) == "an integer or a string"
    assert describe(types["reset_head"]) == "True, False or 'auto'"
    assert describe(types["layer_decay"]) == "a number or None"
    assert describe(types["work_uri"]) == "a string or None"


def _train(**kwargs: Any) -> FreezeAndTrainOperator:
    return FreezeAndTrainOperator(task_id="train", model_uri="s3://b/m", **kwargs)


def test_an_operator_types_what_a_string_rendering_dag_gives_it() -> None:
    op = _train(
        epochs="3",
        learning_rate="0.01",
        layer_decay="None",
        patience="None",
        augment="True",
        freeze_layers="all",
        reset_head="auto",
        features_uri="s3://b/features/None",
        dataset_uri="None",
    )
    op.prepare_arguments()
    assert (op.epochs, op.learning_rate, op.layer_decay, op.patience, op.augment) == (3, 0.01, None, None, True)
    assert (op.freeze_layers, op.reset_head, op.features_uri, op.dataset_uri) == (
        "all",
        "auto",
        "s3://b/features/None",
        None,
    )
    assert op.model_uri == "s3://b/m" and op.batch_size == 64  # defaults pass through unchanged


@pytest.mark.parametrize(("rendered", "value"), [("3", 3), (3, 3), ("layer3", "layer3"), ("all", "all")])
def test_freeze_layers_is_a_count_or_a_block_name(rendered: Any, value: Any) -> None:
    op = _train(freeze_layers=rendered)
    op.prepare_arguments()
    assert op.freeze_layers == value and type(op.freeze_layers) is type(value)


def test_an_operator_names_a_bad_argument() -> None:
    with pytest.raises(InvalidArgumentError) as err:
        _train(epochs="ten").prepare_arguments()
    assert str(err.value) == "Argument epochs accepts only an integer. Provided value: 'ten'."


def test_the_evaluate_operator_reads_its_context_extra() -> None:
    op = EvaluateOperator(
        task_id="e", model_uri="s3://b/m", dataset_uri="s3://b/d", registry_uri="s3://b/r", model_name="m",
        context_extra="{'strategy': 'feature_extraction'}", min_score="None", promote="False",
    )  # fmt: skip
    op.prepare_arguments()
    assert (op.context_extra, op.min_score, op.promote) == ({"strategy": "feature_extraction"}, None, False)


# --- URI checks of the base operator ----------------------------------------------------------------------------


def test_every_uri_argument_is_checked(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__AIRFLOW_TL__ALLOWED_URI_PREFIXES", "s3://ml-data,s3://ml-work/")
    op = _train(
        dataset_uri="s3://ml-data/flowers",
        work_uri="s3://ml-work/tl",
        output_uri="s3://ml-work/out",
        checkpoint_uri="s3://ml-data-evil/ckpt",
    )
    op.model_uri = "s3://ml-work/runs/fetch"
    with pytest.raises(InvalidURIError) as err:
        op.check_uris()
    assert str(err.value) == (
        "Argument checkpoint_uri accepts only URIs under s3://ml-data, s3://ml-work/, as [airflow_tl] "
        "allowed_uri_prefixes says. Provided value: 's3://ml-data-evil/ckpt'."
    )
    op.checkpoint_uri = None  # not given: derived below work_uri
    op.check_uris()


def test_the_fetch_operator_checks_its_source_and_mirror(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__AIRFLOW_TL__ALLOWED_URI_PREFIXES", "s3://ml-work,torchvision://resnet18")
    op = FetchPretrainedOperator(
        task_id="f",
        pretrained_uri="torchvision://resnet18/IMAGENET1K_V1",
        weights_mirror="https://mirror.example/w?sig=abc",
        work_uri="s3://ml-work/tl",
    )
    with pytest.raises(InvalidURIError, match=r"Argument weights_mirror .* 'https://mirror.example/w\?sig=\*\*\*'"):
        op.check_uris()
    op.weights_mirror = ""
    op.check_uris()
    op.pretrained_uri = "torchvision://resnet50/IMAGENET1K_V1"
    with pytest.raises(InvalidURIError, match="Argument pretrained_uri accepts only"):
        op.check_uris()
