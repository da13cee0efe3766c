"""The frozen pretrained network as a feature extractor: the model with its head taken off."""

from __future__ import annotations

from torch import nn

from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.models.architectures import head_prefixes


def head_module(model: nn.Module, architecture: str) -> nn.Linear:
    """The single linear head whose input is the feature vector."""
    heads = head_prefixes(architecture)
    module = model.get_submodule(heads[0])
    if len(heads) != 1 or not isinstance(module, nn.Linear):
        kind = type(module).__name__
        raise InvalidArgumentError(
            f"Feature extraction needs a single linear head, but {architecture}'s head {list(heads)} is a {kind}. "
            "Use partial_freeze with freeze_layers set to the number of blocks instead."
        )
    return module


def as_feature_extractor(model: nn.Module, architecture: str) -> tuple[nn.Module, int]:
    """Replace the head by an identity, so the model returns what the head would have seen; returns (model, dim)."""
    dim = head_module(model, architecture).in_features
    model.set_submodule(head_prefixes(architecture)[0], nn.Identity())
    return model.eval().requires_grad_(False), dim
