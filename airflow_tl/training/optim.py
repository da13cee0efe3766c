"""Optimizers over trainable parameters only, layer-wise learning-rate decay, cosine with warm-up."""

from __future__ import annotations

import math

import torch
from torch import nn

from airflow_tl.models.architectures import block_of
from airflow_tl.models.card import Block
from airflow_tl.training.config import TrainConfig


def param_groups(model: nn.Module, blocks: list[Block], head: list[str], config: TrainConfig) -> list[dict]:
    """Groups by depth (for layer-wise decay) and by whether weight decay applies.

    Frozen parameters are left out entirely, so the optimizer keeps no state for them. With
    ``layer_decay`` d the head trains at the full rate and block i at ``lr * d ** (n - i)``:
    early, generic blocks move least.
    """
    n = len(blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        index = block_of(name, blocks, head)
        depth = n if index is None else index  # the head is the deepest
        scale = config.layer_decay ** (n - depth) if config.layer_decay else 1.0
        decay = param.ndim > 1  # no weight decay on biases and normalisation parameters
        key = (depth, decay)
        group = groups.setdefault(
            key,
            {"params": [], "lr": config.learning_rate * scale, "weight_decay": config.weight_decay if decay else 0.0},
        )
        group["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.momentum, nesterov=config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int):
    """Linear warm-up to each group's rate, then cosine decay to zero, stepped once per batch."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
