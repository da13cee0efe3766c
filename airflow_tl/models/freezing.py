"""Freezing the first k blocks: no gradients, no optimizer state, normalisation statistics kept."""

from __future__ import annotations

from torch import nn

from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.models.card import Block


def resolve_freeze_layers(value: int | str, blocks: list[Block]) -> int:
    """Turn ``freeze_layers`` (0…n, or ``"all"`` for head-only training) into a block count."""
    n = len(blocks)
    if value == "all":
        return n
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= n:
        names = ", ".join(b.name for b in blocks)
        raise InvalidArgumentError(
            f"Argument freeze_layers accepts only 0…{n} or 'all' for this model, whose {n} blocks are: {names}. "
            f"Provided value: {value!r}."
        )
    return value


def freeze_first(model: nn.Module, blocks: list[Block], k: int) -> list[str]:
    """Stop gradients for every parameter in the first k blocks; returns the frozen module prefixes."""
    frozen = [prefix for block in blocks[:k] for prefix in block.prefixes]
    for prefix in frozen:
        for param in model.get_submodule(prefix).parameters():
            param.requires_grad_(False)
    return frozen


def train_mode(model: nn.Module, frozen: list[str]) -> nn.Module:
    """``model.train()``, except frozen modules stay in eval mode so BatchNorm keeps its running statistics."""
    model.train()
    for prefix in frozen:
        model.get_submodule(prefix).eval()
    return model


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should see: frozen ones get no optimizer state at all."""
    return [p for p in model.parameters() if p.requires_grad]
