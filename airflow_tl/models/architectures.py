"""torchvision classification architectures: build by name, find the head, name the blocks.

A *block* is the unit of freezing: ``freeze_layers=k`` freezes the first k blocks. Blocks are
ordered from the input towards the head, so early (generic) features freeze first. The head
(the layers whose shape depends on the number of classes) is never part of a block.
"""

from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from functools import lru_cache

import torch
import torchvision
from torch import nn

from airflow_tl.exceptions import IncompatibleWeightsError, UnknownArchitectureError
from airflow_tl.models.blocks import family_blocks
from airflow_tl.models.card import Block

log = logging.getLogger(__name__)

# Aux classifiers only help when training from scratch at full resolution; we build without them
# and drop their pretrained keys on load.
_EXTRA_KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": False},
    "inception_v3": {"aux_logits": False, "init_weights": False},
}


@lru_cache(maxsize=1)
def list_architectures() -> tuple[str, ...]:
    """Every classification architecture torchvision can build by name."""
    return tuple(torchvision.models.list_models(module=torchvision.models))


def check_architecture(name: str) -> None:
    if name not in list_architectures():
        close = [a for a in list_architectures() if a.startswith(name[:4])] if name else []
        hint = f" Did you mean one of {', '.join(close[:8])}?" if close else ""
        raise UnknownArchitectureError(
            f"Unknown architecture {name!r}: torchvision has no classification model of that name.{hint} "
            "See torchvision.models.list_models(module=torchvision.models) for all of them."
        )


def build_model(name: str, num_classes: int, *, device: str | torch.device = "cpu") -> nn.Module:
    """A randomly initialised torchvision model with a head for ``num_classes`` classes.

    SqueezeNet is built without the ReLU torchvision puts between its 1x1 convolution head and the average
    pooling (``_linear_logits``); every other model is torchvision's as it is.
    """
    check_architecture(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # googlenet/inception init-scheme notices
        with torch.device(device):
            model = torchvision.models.get_model(
                name, weights=None, num_classes=num_classes, **_EXTRA_KWARGS.get(name, {})
            )
    if name.startswith("squeezenet"):
        _linear_logits(model)
    return model


def _linear_logits(squeezenet: nn.Module) -> None:
    """Replace the ReLU after SqueezeNet's head by an identity, so the logits are an affine map of the average-pooled
    512-d features, as every other family's are.

    With the ReLU, a logit is the mean over positions of the clipped per-position scores: no logit is ever
    negative, a negative score gets no gradient, and a linear head fitted on the pooled features (feature
    extraction, LP-FT) cannot be written into the network. The ReLU holds no state, so torchvision's weights load
    unchanged; its ImageNet head then ranks classes by their mean unclipped score (docs/architectures.md).
    """
    relu = squeezenet.classifier[2]
    if not isinstance(relu, nn.ReLU):
        raise TypeError(f"Expected SqueezeNet's classifier[2] to be a ReLU, found {type(relu).__name__}")
    squeezenet.classifier[2] = nn.Identity()


def skeleton(name: str, num_classes: int) -> nn.Module:
    """The model's structure without memory for its weights (the meta device), for shapes, blocks and counts."""
    try:
        return build_model(name, num_classes, device="meta")
    except NotImplementedError:  # a few (regnet) read tensor values while building; build them for real
        return build_model(name, num_classes)


def _shapes(name: str, num_classes: int) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in skeleton(name, num_classes).state_dict().items()}


@lru_cache(maxsize=64)
def head_prefixes(name: str) -> tuple[str, ...]:
    """Module names of the head: the layers whose shapes change with the number of classes."""
    a, b = _shapes(name, 3), _shapes(name, 4)
    keys = [k for k in a if a[k] != b[k]]
    return tuple(dict.fromkeys(k.rsplit(".", 1)[0] for k in keys))


def _generic_blocks(model: nn.Module, head: set[str]) -> list[Block]:
    """One block per top-level child that holds state other than the head's.

    A child that contains the head (VGG's ``classifier``) keeps only its non-head parts, and tensors
    held by the model itself (ViT's ``class_token``) join the first block, next to the input.
    """
    blocks = [Block(child, _prefixes_outside(module, child, head)) for child, module in model.named_children()]
    blocks = [b for b in blocks if b.prefixes]
    direct = [n for n, _ in [*model.named_parameters(recurse=False), *model.named_buffers(recurse=False)]]
    if blocks and direct:
        blocks[0].prefixes += direct
    return blocks


def _prefixes_outside(module: nn.Module, path: str, head: set[str]) -> list[str]:
    """Prefixes covering the state under ``path`` except the head's; [] when there is none."""
    if not _has_state(module) or path in head:
        return []
    if not any(h.startswith(path + ".") for h in head):
        return [path]
    own = [f"{path}.{n}" for n, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]]
    return own + [p for n, child in module.named_children() for p in _prefixes_outside(child, f"{path}.{n}", head)]


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _under(name: str, prefixes: set[str] | list[str] | tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def describe_blocks(name: str, model: nn.Module | None = None) -> list[Block]:
    """The ordered blocks of an architecture: its family's stages (models/blocks.py), else its top-level children."""
    check_architecture(name)
    model = skeleton(name, 3) if model is None else model
    head = set(head_prefixes(name))
    blocks_of = family_blocks(name) or _generic_blocks
    return blocks_of(model, head)


def block_of(param_name: str, blocks: list[Block], head: list[str] | tuple[str, ...]) -> int | None:
    """Index of the block that owns a parameter or buffer; None for the head (or anything unowned)."""
    if _under(param_name, head):
        return None
    for index, block in enumerate(blocks):
        if _under(param_name, block.prefixes):
            return index
    return None


def load_weights(
    model: nn.Module, name: str, state_dict: dict[str, torch.Tensor], *, source: str, skip_head: bool = False
) -> None:
    """Load weights strictly, naming mismatches; keys of modules the model does not have (aux heads) are dropped.

    With ``skip_head`` the head's keys are dropped too (a new head is being trained), and that is logged.
    """
    expected = model.state_dict()
    top_level = {k.split(".", 1)[0] for k in expected}
    head = head_prefixes(name) if skip_head else ()
    dropped = [k for k in state_dict if k.split(".", 1)[0] not in top_level or _under(k, head)]
    weights = {k: v for k, v in state_dict.items() if k not in dropped}
    wanted = {k for k in expected if not _under(k, head)}
    missing = sorted(wanted - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    wrong = sorted(k for k in wanted & weights.keys() if tuple(weights[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} of the wrong shape (e.g. {k}: {tuple(weights[k].shape)} vs {tuple(expected[k].shape)})"
            )
        raise IncompatibleWeightsError(
            f"Weights from {source} do not fit architecture {name!r}: " + "; ".join(parts) + "."
        )
    if dropped:
        log.info("Dropped %d keys from %s not used by %s (%s)", len(dropped), source, name, ", ".join(dropped[:4]))
    # Modules such as MNASNet check the format version recorded in the state dict's metadata; the
    # weights were validated against this very model, so its own metadata is the right one.
    weights = OrderedDict(weights)
    weights._metadata = getattr(expected, "_metadata", None)  # type: ignore[attr-defined]
    model.load_state_dict(weights, strict=not skip_head)
