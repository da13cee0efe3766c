"""Freezing block by block in every torchvision family, through one real training step on random weights (no
download): frozen blocks get no gradients and stay bitwise unchanged, normalisation statistics included; the rest
of the network and the head learn."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from airflow_tl.models.architectures import build_model, describe_blocks, head_prefixes
from airflow_tl.models.freezing import freeze_first, train_mode, trainable_parameters, without_autograd

# One architecture per family, with the input size it needs (ViT and Swin at their native 224).
FAMILIES = {
    "resnet18": 64, "vgg11_bn": 64, "alexnet": 96, "squeezenet1_1": 64, "densenet121": 64, "mobilenet_v2": 64,
    "mobilenet_v3_small": 64, "efficientnet_b0": 64, "mnasnet0_5": 64, "regnet_y_400mf": 64, "convnext_tiny": 64,
    "swin_t": 224, "vit_b_16": 224, "inception_v3": 96, "googlenet": 64, "shufflenet_v2_x0_5": 64,
}  # fmt: skip


def under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize(("name", "size"), FAMILIES.items())
def test_one_step_moves_only_what_is_not_frozen(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, 3)
    head = head_prefixes(name)
    for prefix in head:  # ViT zero-initialises its head, which would pass no gradient back in the first step
        nn.init.normal_(model.get_submodule(prefix).weight, std=0.05)
    blocks = describe_blocks(name, model)
    k = max(1, len(blocks) // 2)
    frozen = freeze_first(model, blocks, k)
    without_autograd(model, frozen)
    train_mode(model, frozen)
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    optimizer = torch.optim.SGD(trainable_parameters(model), lr=0.5)

    x, y = torch.randn(2, 3, size, size), torch.tensor([0, 2])
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()

    after = model.state_dict()
    params = dict(model.named_parameters())
    frozen_names = [n for n in after if under(n, frozen)]
    assert frozen_names, f"{name}: the first {k} blocks hold nothing"
    for n in frozen_names:  # weights, BatchNorm running statistics and counters, LayerNorm affine: all as they were
        assert torch.equal(after[n], before[n]), f"{name}: frozen {n} changed"
        assert n not in params or params[n].grad is None, f"{name}: frozen {n} got a gradient"
    rest = [n for n in params if not under(n, frozen) and not under(n, head)]
    assert any(not torch.equal(after[n], before[n]) for n in rest), f"{name}: nothing after the frozen blocks learned"
    assert all(not torch.equal(after[n], before[n]) for n in params if under(n, head)), (
        f"{name}: the head did not learn"
    )
    stats = [n for n in after if n.endswith("running_mean") and not under(n, frozen)]
    assert not stats or any(not torch.equal(after[n], before[n]) for n in stats)  # unfrozen BatchNorm does update
