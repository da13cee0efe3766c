"""Architectures: blocks, heads, and strict weight loading."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torch import nn

from airflow_tl.exceptions import IncompatibleWeightsError, UnknownArchitectureError
from airflow_tl.models.architectures import (
    block_of,
    build_model,
    check_architecture,
    describe_blocks,
    head_prefixes,
    list_architectures,
    load_weights,
)
from airflow_tl.models.card import Block

SOURCE = "s3://zoo/models/resnet18"


def meta_model(name: str, num_classes: int = 3) -> nn.Module:
    try:
        return build_model(name, num_classes, device="meta")
    except NotImplementedError:  # regnet reads tensor values while it builds
        return build_model(name, num_classes)


def under(name: str, prefixes: list[str] | tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def names_of(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]


@pytest.fixture(scope="module")
def resnet18_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return build_model("resnet18", 5).state_dict()


# --- names ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "vit_b_16", "efficientnet_b0", "googlenet", "regnet_y_400mf"])
def test_check_architecture_accepts_torchvision_names(name: str) -> None:
    check_architecture(name)
    assert name in list_architectures()


@pytest.mark.parametrize("name", ["resnet19", "ResNet18", "resnet", "", "fasterrcnn_resnet50_fpn", "raft_large"])
def test_check_architecture_rejects_unknown_names(name: str) -> None:
    with pytest.raises(UnknownArchitectureError) as err:
        check_architecture(name)
    assert f"Unknown architecture {name!r}" in str(err.value)
    assert "list_models" in str(err.value)


def test_unknown_architecture_suggests_close_names() -> None:
    with pytest.raises(UnknownArchitectureError, match=r"Did you mean one of .*resnet18"):
        check_architecture("resnet19")


@pytest.mark.parametrize("call", [build_model, describe_blocks, head_prefixes])
def test_entry_points_check_the_name(call) -> None:
    args = ("not_a_net", 3) if call is build_model else ("not_a_net",)
    with pytest.raises(UnknownArchitectureError, match="'not_a_net'"):
        call(*args)


def test_list_architectures_is_classification_only() -> None:
    names = list_architectures()
    assert {"resnet18", "vit_b_16", "convnext_tiny"} <= set(names)
    assert not {"fasterrcnn_resnet50_fpn", "deeplabv3_resnet50", "raft_large", "r3d_18"} & set(names)


# --- heads ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "head"),
    [
        ("resnet18", ("fc",)),
        ("vgg11", ("classifier.6",)),
        ("vit_b_16", ("heads.head",)),
        ("mobilenet_v3_small", ("classifier.3",)),
        ("efficientnet_b0", ("classifier.1",)),
        ("densenet121", ("classifier",)),
        ("convnext_tiny", ("classifier.2",)),
        ("swin_t", ("head",)),
        ("googlenet", ("fc",)),
        ("squeezenet1_0", ("classifier.1",)),
        ("regnet_y_400mf", ("fc",)),
    ],
)
def test_head_prefixes(name: str, head: tuple[str, ...]) -> None:
    assert head_prefixes(name) == head


def test_build_model_sets_the_class_count() -> None:
    model = build_model("resnet18", 7, device="meta")
    assert model.fc.out_features == 7
    assert next(model.parameters()).device.type == "meta"


def test_build_model_drops_aux_classifiers() -> None:
    model = build_model("googlenet", 3, device="meta")
    assert model.aux1 is None and model.aux2 is None
    assert build_model("inception_v3", 3, device="meta").AuxLogits is None


# --- blocks -----------------------------------------------------------------------------------------------------


def test_resnet18_blocks() -> None:
    assert describe_blocks("resnet18") == [
        Block("stem", ["conv1", "bn1"]),
        Block("layer1", ["layer1"]),
        Block("layer2", ["layer2"]),
        Block("layer3", ["layer3"]),
        Block("layer4", ["layer4"]),
    ]


STAGES4 = ["stem", "stage1", "stage2", "stage3", "stage4"]


@pytest.mark.parametrize(
    ("name", "block_names"),
    [
        ("vgg11", ["conv1", "conv2", "conv3", "conv4", "conv5", "pre_logits"]),
        ("vgg11_bn", ["conv1", "conv2", "conv3", "conv4", "conv5", "pre_logits"]),
        ("alexnet", ["conv1", "conv2", "conv3", "pre_logits"]),
        ("squeezenet1_1", ["stem", "fire_group1", "fire_group2", "fire_group3"]),
        ("densenet121", ["stem", "denseblock1", "denseblock2", "denseblock3", "denseblock4"]),
        ("mobilenet_v2", ["stem", *(f"stage{i}" for i in range(1, 8)), "last_conv"]),
        ("mobilenet_v3_small", ["stem", *(f"stage{i}" for i in range(1, 6)), "last_conv", "pre_logits"]),
        ("mobilenet_v3_large", ["stem", *(f"stage{i}" for i in range(1, 7)), "last_conv", "pre_logits"]),
        ("efficientnet_b0", ["stem", *(f"stage{i}" for i in range(1, 8)), "last_conv"]),
        ("efficientnet_v2_s", ["stem", *(f"stage{i}" for i in range(1, 7)), "last_conv"]),
        ("mnasnet0_5", ["stem", *(f"stage{i}" for i in range(1, 7)), "last_conv"]),
        ("regnet_y_400mf", ["stem", "block1", "block2", "block3", "block4"]),
        ("convnext_tiny", [*STAGES4, "pre_logits"]),
        ("swin_t", [*STAGES4, "norm"]),
        ("vit_b_16", ["patch_embed", *(f"encoder_layer_{i}" for i in range(12)), "encoder_norm"]),
        ("inception_v3", ["stem", "conv3_4", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                          "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]),
        ("googlenet", ["conv1", "conv2", "conv3", "inception3a", "inception3b", "inception4a", "inception4b",
                       "inception4c", "inception4d", "inception4e", "inception5a", "inception5b"]),
        ("shufflenet_v2_x0_5", ["conv1", "stage2", "stage3", "stage4", "conv5"]),
        ("maxvit_t", [*STAGES4, "pre_logits"]),
    ],
)  # fmt: skip
def test_each_family_freezes_by_its_own_stages(name: str, block_names: list[str]) -> None:
    assert [b.name for b in describe_blocks(name)] == block_names


@pytest.mark.parametrize(
    ("name", "block", "prefixes"),
    [
        ("vgg11", "conv3", ["features.6", "features.8"]),  # between the second and third max-pooling
        ("vgg11", "pre_logits", ["classifier.0", "classifier.3"]),  # fc6, fc7: the head is classifier.6
        ("alexnet", "pre_logits", ["classifier.1", "classifier.4"]),
        ("densenet121", "denseblock2", ["features.denseblock2", "features.transition2"]),
        ("densenet121", "denseblock4", ["features.denseblock4", "features.norm5"]),
        ("mobilenet_v2", "stage2", ["features.2", "features.3"]),  # one output width: 24 channels
        ("convnext_tiny", "stage2", ["features.2", "features.3"]),  # the downsampling opens the stage
        ("convnext_tiny", "pre_logits", ["classifier.0"]),
        ("swin_t", "stage4", ["features.6", "features.7"]),
        ("vit_b_16", "patch_embed", ["conv_proj", "class_token", "encoder.pos_embedding"]),
        ("vit_b_16", "encoder_layer_3", ["encoder.layers.encoder_layer_3"]),
        ("mnasnet0_5", "stem", ["layers.0", "layers.1", "layers.3", "layers.4", "layers.6", "layers.7"]),
        ("regnet_y_400mf", "block2", ["trunk_output.block2"]),
    ],
)
def test_blocks_hold_the_modules_of_their_stage(name: str, block: str, prefixes: list[str]) -> None:
    assert next(b for b in describe_blocks(name) if b.name == block).prefixes == prefixes


def test_describe_blocks_uses_the_given_model() -> None:
    model = build_model("resnet18", 3, device="meta")
    assert describe_blocks("resnet18", model) == describe_blocks("resnet18")


COVERAGE = [
    "resnet18",
    "wide_resnet50_2",
    "efficientnet_v2_s",
    "vgg11_bn",
    "squeezenet1_1",
    "vit_b_32",
    "swin_v2_t",
    "regnet_x_400mf",
    "maxvit_t",
    "resnext50_32x4d",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mobilenet_v2",
    "efficientnet_b0",
    "vgg11",
    "alexnet",
    "densenet121",
    "vit_b_16",
    "swin_t",
    "shufflenet_v2_x0_5",
    "convnext_tiny",
    "googlenet",
    "inception_v3",
    "regnet_y_400mf",
    "squeezenet1_0",
    "mnasnet0_5",
]


@pytest.mark.parametrize("name", COVERAGE)
def test_every_parameter_and_buffer_has_exactly_one_owner(name: str) -> None:
    """The head and the blocks partition the state: freezing k blocks must never touch the head, nor miss a tensor."""
    model = meta_model(name)
    blocks = describe_blocks(name, model)
    head = head_prefixes(name)
    problems = []
    for tensor in names_of(model):
        in_head = under(tensor, head)
        owners = [b.name for b in blocks if under(tensor, b.prefixes)]
        index = block_of(tensor, blocks, head)
        if in_head and (owners or index is not None):
            problems.append(f"{tensor}: head, but also in block(s) {owners}")
        if not in_head and (len(owners) != 1 or index is None or blocks[index].name != owners[0]):
            problems.append(f"{tensor}: not in the head, in blocks {owners}, block_of={index}")
    assert not problems, problems[:5]


@pytest.mark.parametrize("name", COVERAGE)
def test_no_block_is_empty(name: str) -> None:
    model = meta_model(name)
    blocks = describe_blocks(name, model)
    tensors = names_of(model)
    assert blocks
    assert len({b.name for b in blocks}) == len(blocks)
    for block in blocks:
        assert any(under(t, block.prefixes) for t in tensors), block.name


@pytest.mark.parametrize(
    ("param", "index"),
    [("conv1.weight", 0), ("bn1.running_mean", 0), ("layer1.0.conv1.weight", 1), ("layer4.1.bn2.bias", 4),
     ("fc.weight", None), ("fc.bias", None), ("layer10.weight", None), ("conv10.weight", None)],
)  # fmt: skip
def test_block_of(param: str, index: int | None) -> None:
    assert block_of(param, describe_blocks("resnet18"), head_prefixes("resnet18")) == index


# --- load_weights -----------------------------------------------------------------------------------------------


def test_load_weights_loads_a_matching_state_dict(resnet18_weights: dict[str, torch.Tensor]) -> None:
    torch.manual_seed(2)
    model = build_model("resnet18", 5)
    assert not torch.equal(model.conv1.weight, resnet18_weights["conv1.weight"])
    load_weights(model, "resnet18", resnet18_weights, source=SOURCE)
    loaded = model.state_dict()
    assert loaded.keys() == resnet18_weights.keys()
    for key, value in resnet18_weights.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        ("missing", "1 missing (e.g. layer2.0.conv1.weight)"),
        ("missing_head", "1 missing (e.g. fc.bias)"),
        ("wrong_shape", "1 of the wrong shape (e.g. layer1.0.conv1.weight: (64, 64, 1, 1) vs (64, 64, 3, 3))"),
        ("head_shape", "2 of the wrong shape (e.g. fc.bias: (5,) vs (4,))"),
        ("unexpected", "1 unexpected (e.g. layer1.0.conv3.weight)"),
    ],
)
def test_load_weights_names_mismatches(resnet18_weights: dict[str, torch.Tensor], change: str, phrase: str) -> None:
    weights = dict(resnet18_weights)
    num_classes = 5
    if change == "missing":
        del weights["layer2.0.conv1.weight"]
    elif change == "missing_head":
        del weights["fc.bias"]
    elif change == "wrong_shape":
        weights["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    elif change == "head_shape":
        num_classes = 4
    elif change == "unexpected":
        weights["layer1.0.conv3.weight"] = torch.zeros(1)
    model = build_model("resnet18", num_classes, device="meta")
    with pytest.raises(IncompatibleWeightsError) as err:
        load_weights(model, "resnet18", weights, source=SOURCE)
    message = str(err.value)
    assert message.startswith(f"Weights from {SOURCE} do not fit architecture 'resnet18': ")
    assert phrase in message


def test_load_weights_reports_every_kind_of_mismatch_at_once(resnet18_weights: dict[str, torch.Tensor]) -> None:
    weights = dict(resnet18_weights)
    del weights["bn1.weight"]
    weights["layer1.0.extra"] = torch.zeros(1)
    weights["conv1.weight"] = torch.zeros(1)
    with pytest.raises(IncompatibleWeightsError) as err:
        load_weights(build_model("resnet18", 5, device="meta"), "resnet18", weights, source="https://h/x-12345678.pth")
    assert "https://h/x-12345678.pth" in str(err.value)
    for phrase in ("1 missing (e.g. bn1.weight)", "1 unexpected (e.g. layer1.0.extra)", "1 of the wrong shape"):
        assert phrase in str(err.value)


def test_load_weights_of_another_architecture_fails(resnet18_weights: dict[str, torch.Tensor]) -> None:
    model = build_model("mobilenet_v3_small", 5, device="meta")
    with pytest.raises(IncompatibleWeightsError, match="do not fit architecture 'mobilenet_v3_small'.*missing"):
        load_weights(model, "mobilenet_v3_small", resnet18_weights, source=SOURCE)


def test_skip_head_loads_the_body_and_keeps_the_new_head(
    resnet18_weights: dict[str, torch.Tensor], caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(3)
    model = build_model("resnet18", 2)  # the source has 5 classes
    new_head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("fc.")}
    with caplog.at_level(logging.INFO, logger="airflow_tl.models.architectures"):
        load_weights(model, "resnet18", resnet18_weights, source=SOURCE, skip_head=True)
    state = model.state_dict()
    for key, value in resnet18_weights.items():
        if key.startswith("fc."):
            assert torch.equal(state[key], new_head[key]), key
        else:
            assert torch.equal(state[key], value), key
    assert state["fc.weight"].shape == (2, 512)
    assert "Dropped 2 keys" in caplog.text and "fc.weight" in caplog.text


def test_skip_head_on_mobilenet_keeps_pre_logits() -> None:
    torch.manual_seed(4)
    source = build_model("mobilenet_v3_small", 10).state_dict()
    torch.manual_seed(5)
    model = build_model("mobilenet_v3_small", 3)
    head_before = model.classifier[3].weight.detach().clone()
    load_weights(model, "mobilenet_v3_small", source, source=SOURCE, skip_head=True)
    assert torch.equal(model.classifier[0].weight, source["classifier.0.weight"])  # pre-logits is not the head
    assert torch.equal(model.features[0][0].weight, source["features.0.0.weight"])
    assert torch.equal(model.classifier[3].weight, head_before)


def test_skip_head_still_requires_the_body(resnet18_weights: dict[str, torch.Tensor]) -> None:
    weights = {k: v for k, v in resnet18_weights.items() if not k.startswith("layer4.")}
    with pytest.raises(IncompatibleWeightsError, match=r"missing \(e\.g\. layer4\."):
        load_weights(build_model("resnet18", 2, device="meta"), "resnet18", weights, source=SOURCE, skip_head=True)


def test_keys_of_modules_the_model_lacks_are_dropped(
    resnet18_weights: dict[str, torch.Tensor], caplog: pytest.LogCaptureFixture
) -> None:
    weights = dict(resnet18_weights)
    weights["aux1.conv.weight"] = torch.ones(3, 3)
    weights["aux1.fc2.bias"] = torch.ones(5)
    torch.manual_seed(6)
    model = build_model("resnet18", 5)
    with caplog.at_level(logging.INFO, logger="airflow_tl.models.architectures"):
        load_weights(model, "resnet18", weights, source=SOURCE)
    assert torch.equal(model.layer3[0].conv1.weight, resnet18_weights["layer3.0.conv1.weight"])
    assert "aux1" not in " ".join(model.state_dict())
    assert "Dropped 2 keys" in caplog.text and "aux1.conv.weight" in caplog.text


@pytest.mark.parametrize(("name", "aux"), [("googlenet", ("aux1.", "aux2.")), ("inception_v3", ("AuxLogits.",))])
def test_aux_classifier_keys_are_dropped(name: str, aux: tuple[str, ...], caplog: pytest.LogCaptureFixture) -> None:
    with torch.device("meta"):
        with_aux = torchvision.models.get_model(name, weights=None, aux_logits=True, init_weights=False, num_classes=3)
    source = with_aux.state_dict()
    aux_keys = [k for k in source if k.startswith(aux)]
    assert aux_keys
    model = build_model(name, 3, device="meta")
    with caplog.at_level(logging.INFO, logger="airflow_tl.models.architectures"):
        load_weights(model, name, source, source=f"torchvision://{name}/IMAGENET1K_V1")
    assert f"Dropped {len(aux_keys)} keys from torchvision://{name}/IMAGENET1K_V1" in caplog.text
    assert model.state_dict().keys() == {k: v for k, v in source.items() if k not in aux_keys}.keys()


@pytest.mark.parametrize("name", [*COVERAGE, "vit_b_32"])
def test_load_weights_accepts_the_architectures_own_state_dict(name: str, caplog: pytest.LogCaptureFixture) -> None:
    """Shapes only (meta tensors): a model's own state dict always fits and nothing of it is dropped.

    Covers ViT's top-level ``class_token`` and MNASNet, which checks the state dict's ``_metadata`` version.
    """
    model = meta_model(name)
    with caplog.at_level(logging.INFO, logger="airflow_tl.models.architectures"):
        load_weights(model, name, meta_model(name).state_dict(), source=f"torchvision://{name}")
    assert "Dropped" not in caplog.text
