"""Freezing the first k blocks: no gradients, no optimizer state, normalisation statistics kept."""

from __future__ import annotations

import re

import torch
from torch import nn

from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.models.card import Block


def resolve_freeze_layers(value: int | str, blocks: list[Block]) -> int:
    """Turn ``freeze_layers`` (0…n, or ``"all"`` for head-only training) into a block count."""
    n = len(blocks)
    if value == "all":
        return n
    count = int(value) if isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()) else value
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= n:
        names = ", ".join(b.name for b in blocks)
        raise InvalidArgumentError(
            f"Argument freeze_layers accepts only 0…{n} or 'all' for this model, whose {n} blocks are: {names}. "
            f"Provided value: {value!r}."
        )
    return count


def freeze_first(model: nn.Module, blocks: list[Block], k: int) -> list[str]:
    """Stop gradients for every parameter in the first k blocks; returns the frozen prefixes."""
    frozen = [prefix for block in blocks[:k] for prefix in block.prefixes]
    for name, param in model.named_parameters():
        if any(name == p or name.startswith(p + ".") for p in frozen):
            param.requires_grad_(False)
    return frozen


def train_mode(model: nn.Module, frozen: list[str]) -> nn.Module:
    """``model.train()``, except frozen modules stay in eval mode so BatchNorm keeps its running statistics."""
    model.train()
    modules = dict(model.named_modules())
    for prefix in frozen:
        if prefix in modules:  # a prefix may also name a bare parameter (ViT's class_token)
            modules[prefix].eval()
    return model


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should see: frozen ones get no optimizer state at all."""
    return [p for p in model.parameters() if p.requires_grad]


def without_autograd(model: nn.Module, frozen: list[str]) -> list:
    """Run frozen modules with autograd off: they are the input side of the network, so nothing upstream
    needs their graph, and their activations need not be kept for a backward pass. Returns the hook handles."""
    modules = dict(model.named_modules())
    handles = []
    for prefix in frozen:
        module = modules.get(prefix)
        if module is None:
            continue
        saved: list[bool] = []

        def before(_module, _args, saved=saved):
            saved.append(torch.is_grad_enabled())
            torch.set_grad_enabled(False)

        def after(_module, _args, _output, saved=saved):
            torch.set_grad_enabled(saved.pop())

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after, always_call=True)]
    return handles
