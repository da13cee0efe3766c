"""The linear probe: how well a linear classifier on the frozen features does on held-out images of the sample."""

from __future__ import annotations

import torch

from airflow_tl.training.head import fit_linear_head

HELD_OUT = 0.3  # of each class's sampled images; at least one is held out and one is fitted


def held_out_split(labels: torch.Tensor, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (fit, held out): per class a seeded shuffle, ``HELD_OUT`` of it held out, none left empty."""
    generator = torch.Generator().manual_seed(seed)
    fit, held = [], []
    for label in labels.unique(sorted=True).tolist():
        rows = torch.nonzero(labels == label).flatten()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        n_held = min(max(1, round(len(rows) * HELD_OUT)), len(rows) - 1)
        held.append(rows[:n_held])
        fit.append(rows[n_held:])
    return torch.cat(fit), torch.cat(held)


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, seed: int) -> float:
    """Accuracy on the held-out rows of a logistic-regression head fitted on the others."""
    fit, held = held_out_split(labels, seed=seed)
    head = fit_linear_head((features[fit], labels[fit]), None, num_classes=num_classes, seed=seed)
    logits = features[held].double() @ head.weight.double().T + head.bias.double()
    return (logits.argmax(1) == labels[held]).double().mean().item()


def skill(accuracy: float, num_classes: int) -> float:
    """Accuracy rescaled so that chance (1 / classes) is 0 and perfect is 1; below chance is negative."""
    chance = 1.0 / num_classes
    return (accuracy - chance) / (1.0 - chance)
