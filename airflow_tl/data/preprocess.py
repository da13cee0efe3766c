"""The one place images become tensors, so seeding, extraction, training and evaluation agree exactly."""

from __future__ import annotations

import random

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from airflow_tl.models.card import InputSpec


def to_model_mode(image: Image.Image, channels: int) -> Image.Image:
    """Grayscale, palette and RGBA images in the channel layout the network expects."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white rather than whatever colour they happen to hold.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB" if channels == 3 else "L")


def preprocess(image: Image.Image, spec: InputSpec, augment: random.Random | None = None) -> torch.Tensor:
    """Resize the short side, centre-crop, scale to [0, 1] and normalise: a ``(C, H, W)`` float tensor.

    With ``augment`` (a seeded RNG, so every run sees the same variations) the crop is a random
    80–100 % region, slightly rotated and brightened or darkened. Nothing is mirrored: flips turn
    digits, text and many medical images into different things.
    """
    image = to_model_mode(image, spec.channels)
    mode = InterpolationMode(spec.interpolation)
    image = F.resize(image, spec.resize_size, interpolation=mode, antialias=True)
    if augment is None:
        image = F.center_crop(image, spec.crop_size)
    else:
        image = _light_augmentation(image, spec.crop_size, mode, augment)
    tensor = F.pil_to_tensor(image).float().div_(255.0)
    return F.normalize(tensor, spec.mean, spec.std)


def _light_augmentation(image: Image.Image, size: int, mode: InterpolationMode, rng: random.Random) -> Image.Image:
    width, height = image.size
    scale = rng.uniform(0.8, 1.0)
    w, h = max(1, round(width * scale**0.5)), max(1, round(height * scale**0.5))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    image = F.resized_crop(image, top, left, h, w, [size, size], interpolation=mode, antialias=True)
    image = F.rotate(image, rng.uniform(-10.0, 10.0), interpolation=InterpolationMode.BILINEAR)
    return F.adjust_brightness(image, rng.uniform(0.85, 1.15))
