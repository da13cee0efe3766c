"""Freezing the first k blocks: no gradients, no optimizer state, normalisation statistics kept."""

from __future__ import annotations

import difflib
import re

import torch
from torch import nn

from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.models.card import Block


def resolve_freeze_layers(value: int | str, blocks: list[Block], *, architecture: str | None = None) -> int:
    """Turn ``freeze_layers`` into a block count: 0…n, a block name (frozen up to and including it), or ``"all"``.

    ``architecture`` names the model in the error, which lists the valid range and every block's name.
    """
    n = len(blocks)
    names = [b.name for b in blocks]
    if value == "all":
        return n
    count = int(value) if isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()) else value
    if isinstance(count, int) and not isinstance(count, bool) and 0 <= count <= n:
        return count
    if isinstance(value, str) and value in names:
        return names.index(value) + 1
    raise InvalidArgumentError(
        f"Argument freeze_layers accepts only 0…{n}, a block name or 'all' for {architecture or 'this model'}, "
        f"whose {n} blocks are: {', '.join(names)}. Provided value: {value!r}.{_closest(value, names)}"
    )


def _closest(value: object, names: list[str]) -> str:
    """A hint for a near miss such as 'Layer3' or 'layer_3' (" Did you mean 'layer3'?"), or an empty string."""
    if not isinstance(value, str):
        return ""
    choices = {name.lower(): name for name in [*names, "all"]}
    close = difflib.get_close_matches(value.strip().lower(), choices, n=1)
    return f" Did you mean {choices[close[0]]!r}?" if close else ""


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
