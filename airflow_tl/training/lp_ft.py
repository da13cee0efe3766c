"""LP-FT (Kumar et al., ICLR 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
Out-of-Distribution"): fit the new head as a linear probe on the frozen features first, then fine-tune everything.

A randomly initialised head sends large, random gradients into the pretrained blocks during the first steps of
fine-tuning and distorts the features before the head has learned anything. Starting the fine-tune from a
converged probe avoids that: the first gradients are small and point somewhere useful.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn

from airflow_tl.data.loader import ImageStream
from airflow_tl.devices import Placement, cpu
from airflow_tl.features.backbone import head_features, head_module
from airflow_tl.training.head import fit_linear_head

log = logging.getLogger(__name__)


def linear_probe_head(
    model: nn.Module,
    architecture: str,
    stream: ImageStream,
    *,
    num_classes: int,
    seed: int,
    class_names: list[str],
    place: Placement | None = None,
) -> dict[str, Any]:
    """Fit the head of ``model`` (an ``architecture``) on the frozen features of the train split, in place.

    The features are what the head sees (``features.backbone``: pooled, for SqueezeNet's convolution head), taken by
    a forward hook during one pass over the train and validation splits in eval mode, without augmentation. Returns
    what the card records about the probe.
    """
    started = time.monotonic()
    module = head_module(model, architecture)
    place = place or cpu()
    captured: list[torch.Tensor] = []

    def capture(_module, args, _output) -> None:
        captured.append(head_features(module, args[0].detach()).float().cpu())

    hook = module.register_forward_hook(capture)
    features: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    model.eval()
    try:
        # no_grad, not inference_mode: the probe's fit runs autograd on these features.
        with torch.no_grad():
            for split in ("train", "val"):
                labels = []
                for batch in stream.batches(split):
                    with place.autocast():
                        model(*place.batch(batch.x))
                    labels.append(batch.y)
                xs, captured[:] = captured[:], []
                features[split] = (torch.cat(xs), torch.cat(labels)) if labels else None
    finally:
        hook.remove()
    fit = fit_linear_head(
        features["train"], features["val"], num_classes=num_classes, seed=seed, class_names=class_names
    )
    with torch.no_grad():
        module.weight.copy_(fit.weight.reshape(module.weight.shape).to(module.weight.dtype))
        module.bias.copy_(fit.bias.to(module.bias.dtype))
    record = {
        "l2": fit.l2,
        "val_accuracy": fit.val_accuracy,
        "val_loss": fit.val_loss,
        "converged": fit.converged,
        "seconds": round(time.monotonic() - started, 2),
    }
    log.info(
        "LP-FT: linear probe on %d frozen feature rows, val accuracy %s (l2 %.3g, %.1fs); now fine-tuning everything",
        len(features["train"][1]), "n/a" if fit.val_accuracy is None else f"{fit.val_accuracy:.4f}", fit.l2,
        record["seconds"],
    )  # fmt: skip
    return record
