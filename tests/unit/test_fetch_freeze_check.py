"""fetch_pretrained checks freeze_layers against the architecture the source names, before anything is downloaded.

No S3 here: for torchvision and hub sources the check needs neither the store nor the network, so both are
stand-ins that fail the test if anything reaches them. (tests/integration/test_fetch.py proves the same against a
loopback server and an s3:// folder, counting requests.)
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_tl.exceptions import InvalidArgumentError, UnknownArchitectureError
from airflow_tl.models.architectures import build_model, describe_blocks
from airflow_tl.pretrained import sources
from airflow_tl.pretrained.fetch import FetchSpec, fetch_pretrained
from airflow_tl.pretrained.sources import source_architecture

TV = "torchvision://resnet18/IMAGENET1K_V1"
HUB = "https://h.example/models/resnet18-f37072fd.pth"
RESNET = "whose 5 blocks are: stem, layer1, layer2, layer3, layer4."


class Untouchable:
    """A store, or a download, that nothing may reach."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the check reached {name} before failing")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the check downloaded something before failing")


@pytest.fixture(autouse=True)
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "download", Untouchable())


def fetch_error(**kwargs: Any) -> str:
    with pytest.raises(InvalidArgumentError) as err:
        fetch_pretrained(FetchSpec(**kwargs), store=Untouchable(), output_uri="s3://bucket/out")  # type: ignore[arg-type]
    return str(err.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pretrained_uri": TV},
        {"pretrained_uri": HUB},  # the architecture from the file name
        {"pretrained_uri": "https://h.example/my-weights-f37072fd.pth", "architecture": "resnet18"},
        {"pretrained_uri": "torchvision://resnet18", "init": "random"},
        {"architecture": "resnet18", "init": "random", "num_classes": 2},
    ],
)
@pytest.mark.parametrize("value", [6, "layer5", "Layer3", "-1"])
def test_a_count_or_name_the_architecture_lacks_fails_before_anything_is_read(kwargs: dict, value: Any) -> None:
    message = fetch_error(**kwargs, freeze_layers=value)
    assert message.startswith("Argument freeze_layers accepts only 0…5, a block name or 'all' for resnet18, ")
    assert f"{RESNET} Provided value: {value!r}." in message


def test_the_error_names_the_architectures_own_blocks() -> None:
    message = fetch_error(pretrained_uri="torchvision://squeezenet1_1/IMAGENET1K_V1", freeze_layers="layer3")
    assert "0…4, a block name or 'all' for squeezenet1_1, whose 4 blocks are: stem, fire_group1, fire_group2, " in (
        message
    )


@pytest.mark.parametrize(
    ("uri", "architecture", "expected"),
    [
        (TV, None, "resnet18"),
        ("torchvision://vit_b_16", None, "vit_b_16"),
        (HUB, None, "resnet18"),
        (HUB, "resnet34", "resnet34"),  # as resolve_source: the argument names it
        ("https://h.example/weights-f37072fd.pth", None, None),  # not checked: resolve_source refuses the URL
    ],
)
def test_source_architecture_reads_no_weights(uri: str, architecture: str | None, expected: str | None) -> None:
    assert source_architecture(uri, store=Untouchable(), architecture=architecture) == expected  # type: ignore[arg-type]


def test_source_architecture_refuses_an_unknown_name() -> None:
    with pytest.raises(UnknownArchitectureError):
        source_architecture("torchvision://resnet19/IMAGENET1K_V1", store=Untouchable())  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["resnet18", "squeezenet1_1", "regnet_y_400mf", "mobilenet_v3_small", "swin_t"])
def test_blocks_from_the_meta_device_are_the_built_models(name: str) -> None:
    # The check describes a model built on the meta device; the card describes the real one it wrote.
    real = describe_blocks(name, build_model(name, 7))
    assert [(b.name, b.prefixes) for b in describe_blocks(name)] == [(b.name, b.prefixes) for b in real]
