"""Feature extraction's view of a network: what the head sees, and a head fitted on it written back exactly.

SqueezeNet's head is a 1x1 convolution followed by global average pooling; the features are the 512 pooled
channels of ``features``, and a saved model must compute exactly the fitted linear head's logits on them. Random
weights, 64 px images, nothing downloaded.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.features.backbone import as_feature_extractor, head_module, head_state
from airflow_tl.models.architectures import build_model, describe_blocks, head_prefixes
from airflow_tl.models.card import InputSpec, ModelCard
from airflow_tl.models.folder import check_head_matches, instantiate
from airflow_tl.training.head import fit_linear_head

CLASSES = ["a", "b", "c"]


def images(n: int = 12, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def card(architecture: str) -> ModelCard:
    return ModelCard(
        architecture=architecture,
        class_names=CLASSES,
        input=InputSpec(crop_size=64, resize_size=64),
        blocks=describe_blocks(architecture),
        head=list(head_prefixes(architecture)),
        lineage={"source": "tests"},
    )


def saved_and_loaded(architecture: str, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """The model a model folder gives back: safetensors bytes, then the card's architecture, loaded strictly."""
    loaded = load_safetensors(save_safetensors({k: v.contiguous() for k, v in state_dict.items()}))
    check_head_matches(loaded, card(architecture), source="test")
    return instantiate(card(architecture), loaded, source="test").eval()


@pytest.mark.parametrize("architecture", ["squeezenet1_0", "squeezenet1_1", "resnet18"])
def test_a_head_fitted_on_the_features_is_the_saved_models_head(architecture: str) -> None:
    torch.manual_seed(0)
    source = build_model(architecture, 1000).eval()  # as pretrained: a 1000-class head, replaced below
    x = images()
    extractor, dim = as_feature_extractor(copy.deepcopy(source), architecture)
    with torch.no_grad():
        features = extractor(x)
    assert features.shape == (len(x), dim)
    if architecture.startswith("squeezenet"):
        assert dim == 512
        with torch.no_grad():  # the 512 channels of `features`, averaged over positions
            torch.testing.assert_close(features, source.features(x).mean(dim=(2, 3)))

    labels = torch.arange(len(CLASSES)).repeat(len(x) // len(CLASSES))
    fit = fit_linear_head((features, labels), None, num_classes=len(CLASSES))
    state = source.state_dict() | head_state(architecture, fit.weight, fit.bias)
    model = saved_and_loaded(architecture, state)
    with torch.no_grad():
        logits = model(x)
    expected = features.double() @ fit.weight.double().T + fit.bias.double()
    torch.testing.assert_close(logits.double(), expected, rtol=1e-4, atol=1e-4)
    assert (logits < 0).any()  # nothing clips them at 0


def test_squeezenet_is_built_without_the_relu_after_its_head() -> None:
    model = build_model("squeezenet1_1", 3)
    assert [type(m) for m in model.classifier] == [nn.Dropout, nn.Conv2d, nn.Identity, nn.AdaptiveAvgPool2d]
    # It held no state: torchvision's own state dict (its pretrained weights' layout) loads strictly.
    reference = torchvision.models.squeezenet1_1(num_classes=3)
    model.load_state_dict(reference.state_dict())
    assert isinstance(head_module(model, "squeezenet1_1"), nn.Conv2d)


def test_a_convolution_head_followed_by_a_relu_is_refused() -> None:
    # torchvision's own SqueezeNet: the ReLU between head and pooling makes the logits non-linear in the features.
    model = torchvision.models.squeezenet1_1(num_classes=3)
    with pytest.raises(InvalidArgumentError) as err:
        as_feature_extractor(model, "squeezenet1_1")
    assert str(err.value).startswith(
        "Feature extraction needs a single linear head, but squeezenet1_1's head ['classifier.1'] is a Conv2d "
        "followed by more than average pooling."
    )


@pytest.mark.parametrize(
    ("architecture", "shape"), [("squeezenet1_1", (4, 512, 1, 1)), ("resnet18", (4, 512)), ("regnet_y_400mf", (4, 440))]
)
def test_head_state_takes_the_shape_of_the_architectures_head(architecture: str, shape: tuple[int, ...]) -> None:
    weight, bias = torch.randn(4, shape[1]), torch.randn(4)
    state = head_state(architecture, weight, bias)
    (prefix,) = head_prefixes(architecture)
    assert tuple(state[f"{prefix}.weight"].shape) == shape and torch.equal(state[f"{prefix}.bias"], bias)
    assert torch.equal(state[f"{prefix}.weight"].reshape(4, -1), weight)


def test_lp_ft_probes_and_writes_squeezenets_convolution_head() -> None:
    from types import SimpleNamespace

    from airflow_tl.training.lp_ft import linear_probe_head

    torch.manual_seed(0)
    model = build_model("squeezenet1_1", len(CLASSES))
    splits = {split: (images(6, seed=i), torch.tensor([0, 1, 2, 0, 1, 2])) for i, split in enumerate(["train", "val"])}

    class Stream:  # ImageStream's batches, from tensors
        def batches(self, split: str):
            yield SimpleNamespace(x=splits[split][0], y=splits[split][1])

    extractor, _ = as_feature_extractor(copy.deepcopy(model), "squeezenet1_1")
    with torch.no_grad():
        features = {split: (extractor(x), y) for split, (x, y) in splits.items()}
    record = linear_probe_head(model, "squeezenet1_1", Stream(), num_classes=3, seed=0, class_names=CLASSES)
    # The probe saw the pooled features, and its head is now the convolution's.
    fit = fit_linear_head(features["train"], features["val"], num_classes=3)
    assert record["l2"] == fit.l2
    head = model.classifier[1]
    torch.testing.assert_close(head.weight.detach(), fit.weight.reshape(3, 512, 1, 1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(head.bias.detach(), fit.bias, rtol=1e-4, atol=1e-5)
