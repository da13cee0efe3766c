"""The frozen pretrained network as a feature extractor: the model with its head taken off.

The features are what the head sees, as a vector: the input of a linear head, or, for SqueezeNet's 1x1
convolution head, its input averaged over positions. Average pooling and a 1x1 convolution commute, so that head's
logits are an affine map of those 512 numbers (SqueezeNet is built without torchvision's ReLU after the head for
this: ``models.architectures._linear_logits``), and a linear head fitted on the features goes back into the network
exactly (``head_state``).
"""

from __future__ import annotations

import torch
from torch import nn

from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.models.architectures import head_prefixes, skeleton

# What may follow a 1x1 convolution head for its logits to stay affine in the pooled features.
_AFTER_CONV_HEAD = (nn.Identity, nn.Dropout, nn.AdaptiveAvgPool2d, nn.Flatten)


def head_module(model: nn.Module, architecture: str) -> nn.Linear | nn.Conv2d:
    """The single head whose input is the feature vector: a linear layer, or a 1x1 convolution that only global
    average pooling follows (SqueezeNet's)."""
    heads = head_prefixes(architecture)
    module = model.get_submodule(heads[0])
    if len(heads) == 1 and (isinstance(module, nn.Linear) or _is_pooled_conv_head(model, heads[0])):
        return module
    kind = type(module).__name__
    raise InvalidArgumentError(
        f"Feature extraction needs a single linear head, but {architecture}'s head {list(heads)} is a {kind}"
        + (" followed by more than average pooling" if isinstance(module, nn.Conv2d) else "")
        + ". Use partial_freeze with freeze_layers set to the number of blocks instead."
    )


def _is_pooled_conv_head(model: nn.Module, prefix: str) -> bool:
    module = model.get_submodule(prefix)
    parent_name, _, index = prefix.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else None
    if not (isinstance(module, nn.Conv2d) and isinstance(parent, nn.Sequential) and index.isdigit()):
        return False
    pointwise = module.kernel_size == (1, 1) and module.stride == (1, 1) and module.groups == 1
    after = list(parent)[int(index) + 1 :]
    pooled = any(isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)) for m in after)
    return pointwise and pooled and all(isinstance(m, _AFTER_CONV_HEAD) for m in after)


def feature_dim(head: nn.Linear | nn.Conv2d) -> int:
    return head.in_features if isinstance(head, nn.Linear) else head.in_channels


def head_features(head: nn.Linear | nn.Conv2d, head_input: torch.Tensor) -> torch.Tensor:
    """The feature vectors [N, D] of what the head was given: its input, averaged over positions for a convolution."""
    return head_input if isinstance(head, nn.Linear) else head_input.mean(dim=(2, 3))


def as_feature_extractor(model: nn.Module, architecture: str) -> tuple[nn.Module, int]:
    """Replace the head by an identity, so the model returns what the head would have seen (pooled, for
    SqueezeNet: the pooling after its head remains); returns (model, dim)."""
    dim = feature_dim(head_module(model, architecture))
    model.set_submodule(head_prefixes(architecture)[0], nn.Identity())
    return model.eval().requires_grad_(False), dim


def head_state(architecture: str, weight: torch.Tensor, bias: torch.Tensor) -> dict[str, torch.Tensor]:
    """A linear head ``weight`` [C, D], ``bias`` [C] fitted on the features, as the state-dict entries of the
    architecture's own head (a 1x1 convolution's weight is [C, D, 1, 1])."""
    (prefix,) = head_prefixes(architecture)
    shape = skeleton(architecture, weight.shape[0]).get_submodule(prefix).weight.shape
    return {f"{prefix}.weight": weight.reshape(shape), f"{prefix}.bias": bias}
