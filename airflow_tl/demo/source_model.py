"""Pretraining the demo's source network (a torchvision ResNet-18 on 32x32 digits 0–4)."""

from __future__ import annotations

import io
import logging
import time

import torch
from PIL import Image
from torch import nn

from airflow_tl.data.preprocess import preprocess
from airflow_tl.demo.digits import DigitImage
from airflow_tl.models.architectures import build_model
from airflow_tl.models.card import InputSpec

log = logging.getLogger(__name__)

ARCHITECTURE = "resnet18"
# Digits are white strokes on black; these are their statistics once resized to 32x32.
DIGITS_INPUT = InputSpec(crop_size=32, resize_size=32, mean=[0.27] * 3, std=[0.39] * 3, interpolation="bilinear")


def _tensors(images: list[DigitImage], classes: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack([preprocess(Image.open(io.BytesIO(img.png)), DIGITS_INPUT) for img in images])
    y = torch.tensor([classes.index(img.label) for img in images])
    return x, y


def _shifted(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random translations: features that survive them are about strokes, not pixel positions, and transfer better."""
    padded = nn.functional.pad(x, (pad, pad, pad, pad), value=float(x.min()))
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    return padded[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        return (model(x).argmax(1) == y).float().mean().item()


def pretrain(
    images: list[DigitImage], classes: tuple[str, ...], *, epochs: int = 8, seed: int = 0
) -> tuple[nn.Module, dict]:
    """Train ResNet-18 from scratch on the source task; returns the model and its validation accuracy."""
    torch.manual_seed(seed)
    x_train, y_train = _tensors([i for i in images if i.split == "train"], classes)
    x_val, y_val = _tensors([i for i in images if i.split == "val"], classes)
    model = build_model(ARCHITECTURE, len(classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=2e-3, total_steps=epochs * ((len(x_train) + 63) // 64)
    )
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        started = time.monotonic()
        model.train()
        for batch in torch.randperm(len(x_train), generator=generator).split(64):
            inputs = _shifted(x_train[batch], generator)
            loss = nn.functional.cross_entropy(model(inputs), y_train[batch], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        val_acc = accuracy(model, x_val, y_val)
        history.append({"epoch": epoch, "train_loss": round(loss.item(), 4), "val_accuracy": round(val_acc, 4)})
        log.info(
            "pretrain epoch %d/%d loss %.3f val_acc %.3f (%.1fs)",
            epoch,
            epochs,
            loss.item(),
            val_acc,
            time.monotonic() - started,
        )
    return model, {"history": history, "val_accuracy": history[-1]["val_accuracy"], "epochs": epochs, "seed": seed}
