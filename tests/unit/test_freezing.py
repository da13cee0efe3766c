"""Freezing the first k blocks: no gradients, no optimizer state, BatchNorm statistics kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.models.architectures import build_model, describe_blocks, head_prefixes
from airflow_tl.models.card import Block
from airflow_tl.models.freezing import freeze_first, resolve_freeze_layers, train_mode, trainable_parameters

RESNET_BLOCKS = ["stem", "layer1", "layer2", "layer3", "layer4"]


@pytest.fixture(scope="module")
def blocks() -> list[Block]:
    return describe_blocks("resnet18")


def under(name: str, prefixes: list[str] | tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def resnet18(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet18", 3)


# --- resolve_freeze_layers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [("all", 5), *((k, k) for k in range(6))])
def test_resolve_freeze_layers(blocks: list[Block], value: int | str, expected: int) -> None:
    assert resolve_freeze_layers(value, blocks) == expected


@pytest.mark.parametrize(("value", "expected"), [("0", 0), ("3", 3), ("5", 5), (" 2 ", 2), ("02", 2)])
def test_resolve_freeze_layers_digit_strings(blocks: list[Block], value: str, expected: int) -> None:
    result = resolve_freeze_layers(value, blocks)
    assert result == expected and type(result) is int


@pytest.mark.parametrize(("value", "expected"), [("stem", 1), ("layer1", 2), ("layer3", 4), ("layer4", 5)])
def test_resolve_freeze_layers_by_name_freezes_up_to_and_including_it(
    blocks: list[Block], value: str, expected: int
) -> None:
    assert resolve_freeze_layers(value, blocks) == expected


@pytest.mark.parametrize(
    "value",
    [6, -1, 100, "6", "-1", "x", "", "2.5", 2.0, True, False, None, [2], "layer5", "fc",
     "²"],  # str.isdigit() accepts it, int() does not
    ids=repr,
)  # fmt: skip
def test_resolve_freeze_layers_rejects(blocks: list[Block], value: object) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        resolve_freeze_layers(value, blocks)  # type: ignore[arg-type]
    shown = value  # reported exactly as given
    assert str(err.value).startswith(
        "Argument freeze_layers accepts only 0…5, a block name or 'all' for this model, whose 5 blocks are: "
        f"stem, layer1, layer2, layer3, layer4. Provided value: {shown!r}."
    )


@pytest.mark.parametrize(
    ("value", "hint"),
    [("Layer3", "layer3"), ("layer_3", "layer3"), ("ALL", "all"), ("all ", "all"), ("Stem", "stem"), ("x", None)],
)
def test_a_near_miss_names_the_block_meant(blocks: list[Block], value: str, hint: str | None) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        resolve_freeze_layers(value, blocks, architecture="resnet18")
    message = str(err.value)
    assert " for resnet18, whose 5 blocks are: " in message
    assert message.endswith(f"Provided value: {value!r}." + (f" Did you mean {hint!r}?" if hint else ""))


def test_resolve_freeze_layers_counts_the_given_blocks() -> None:
    blocks = [Block("a", ["a"]), Block("b", ["b"])]
    assert resolve_freeze_layers("all", blocks) == 2
    assert resolve_freeze_layers("b", blocks) == 2
    with pytest.raises(InvalidArgumentError, match="0…2, a block name or 'all' .* 2 blocks are: a, b"):
        resolve_freeze_layers(3, blocks)


@pytest.mark.parametrize("name", ["vit_b_16", "convnext_tiny", "inception_v3", "squeezenet1_1"])
def test_every_block_name_of_a_family_resolves_to_its_position(name: str) -> None:
    blocks = describe_blocks(name)
    assert [resolve_freeze_layers(b.name, blocks, architecture=name) for b in blocks] == list(range(1, len(blocks) + 1))


# --- freeze_first -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", range(6))
def test_freeze_first_freezes_exactly_the_first_k_blocks(blocks: list[Block], k: int) -> None:
    model = build_model("resnet18", 3, device="meta")
    frozen = freeze_first(model, blocks, k)
    assert frozen == [p for b in blocks[:k] for p in b.prefixes]
    frozen_blocks = {p for b in blocks[:k] for p in b.prefixes}
    for name, param in model.named_parameters():
        assert param.requires_grad is not under(name, frozen_blocks), name
    assert model.fc.weight.requires_grad and model.fc.bias.requires_grad


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "vgg11", "convnext_tiny",
                                  "vit_b_16", "densenet121", "swin_t"])  # fmt: skip
def test_freezing_all_blocks_leaves_exactly_the_head_trainable(name: str) -> None:
    """What feature_extraction relies on, including where the head sits inside a block's module (VGG's
    classifier) or the model holds tensors directly (ViT's class_token)."""
    model = build_model(name, 3, device="meta")
    blocks = describe_blocks(name, model)
    freeze_first(model, blocks, resolve_freeze_layers("all", blocks))
    head = head_prefixes(name)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(n for n, _ in model.named_parameters() if under(n, head))


# --- train_mode -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_train_mode_keeps_frozen_batchnorm_in_eval(blocks: list[Block], k: int) -> None:
    model = build_model("resnet18", 3, device="meta")
    frozen = freeze_first(model, blocks, k)
    model.eval()
    assert train_mode(model, frozen) is model
    assert model.training
    frozen_blocks = {p for b in blocks[:k] for p in b.prefixes}
    norms = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 20
    for name, module in norms:
        assert module.training is not under(name, frozen_blocks), name


def test_train_mode_on_mobilenet_keeps_frozen_dropout_and_norms_in_eval() -> None:
    model = build_model("mobilenet_v3_small", 3, device="meta")
    blocks = describe_blocks("mobilenet_v3_small", model)
    frozen = freeze_first(model, blocks, 3)
    assert frozen == ["features.0", "features.1", "features.2", "features.3"]  # stem, stage1, stage2
    train_mode(model, frozen)
    modes = {name: module.training for name, module in model.named_modules() if name}
    assert not any(mode for name, mode in modes.items() if under(name, frozen))
    assert all(mode for name, mode in modes.items() if not under(name, frozen))
    assert sum(1 for name in modes if under(name, frozen)) > 10


# --- a real training step ---------------------------------------------------------------------------------------


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("k", [2, 4])
def test_training_leaves_frozen_weights_and_statistics_bitwise_unchanged(blocks: list[Block], k: int) -> None:
    model = resnet18()
    frozen = freeze_first(model, blocks, k)
    before = snapshot(model)
    optimizer = torch.optim.SGD(trainable_parameters(model), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        train_mode(model, frozen)
        images = torch.randn(4, 3, 32, 32, generator=generator)
        labels = torch.randint(0, 3, (4,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    after = model.state_dict()
    frozen_blocks = {p for b in blocks[:k] for p in b.prefixes}
    for name, value in after.items():
        if name.endswith("num_batches_tracked"):
            continue
        if under(name, frozen_blocks):
            assert torch.equal(value, before[name]), f"frozen {name} changed"
        else:
            assert not torch.equal(value, before[name]), f"trainable {name} did not change"
    for name, param in model.named_parameters():
        assert (param.grad is None) is under(name, frozen_blocks), name
    trainable = {id(p) for n, p in model.named_parameters() if not under(n, frozen_blocks)}
    assert {id(p) for p in optimizer.state} == trainable  # frozen parameters have no optimizer state
    for name in ("bn1.num_batches_tracked", "layer1.0.bn1.num_batches_tracked"):
        assert torch.equal(after[name], before[name])
    assert after["layer4.0.bn1.num_batches_tracked"].item() == 3


def test_without_train_mode_frozen_statistics_would_drift(blocks: list[Block]) -> None:
    """The control for the test above: plain model.train() does move frozen BatchNorm statistics."""
    model = resnet18()
    freeze_first(model, blocks, 2)
    before = model.bn1.running_mean.clone()
    model.train()
    model(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(model.bn1.running_mean, before)


# --- trainable_parameters ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_trainable_parameters_excludes_frozen(blocks: list[Block], k: int) -> None:
    model = build_model("resnet18", 3, device="meta")
    freeze_first(model, blocks, k)
    trainable = trainable_parameters(model)
    frozen_blocks = {p for b in blocks[:k] for p in b.prefixes}
    expected = [p for n, p in model.named_parameters() if not under(n, frozen_blocks)]
    assert [id(p) for p in trainable] == [id(p) for p in expected]
    assert all(p.requires_grad for p in trainable)
    if k == 5:
        assert [id(p) for p in trainable] == [id(model.fc.weight), id(model.fc.bias)]
    if k == 0:
        assert len(trainable) == len(list(model.parameters()))
