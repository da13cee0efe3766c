"""The one place images become tensors, so seeding, extraction, training and evaluation agree exactly.

Two stages: ``to_pixels`` (decode-side work on one PIL image, giving uint8) and ``normalize`` (float
scaling and the card's mean/std). The loader runs the first in its threads and the second once per
batch: one vectorised op over a batch costs a fraction of what the same op costs image by image, and
it keeps small tensor ops (and their thread pool) out of the loader threads.
"""

from __future__ import annotations

import random

import numpy as np
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
    wanted = "RGB" if channels == 3 else "L"
    return image if image.mode == wanted else image.convert(wanted)


def to_pixels(image: Image.Image, spec: InputSpec, augment: random.Random | None = None) -> torch.Tensor:
    """Resize the short side and centre-crop: a ``(C, H, W)`` uint8 tensor, not yet normalised.

    With ``augment`` (a seeded RNG, so every run sees the same variations) the crop is a random
    80–100 % region, slightly rotated and brightened or darkened. Nothing is mirrored: flips turn
    digits, text and many medical images into different things.
    """
    image = to_model_mode(image, spec.channels)
    mode = InterpolationMode(spec.interpolation)
    if min(image.size) != spec.resize_size:
        image = F.resize(image, spec.resize_size, interpolation=mode, antialias=True)
    if augment is None:
        image = F.center_crop(image, spec.crop_size)
    else:
        image = _light_augmentation(image, spec.crop_size, mode, augment)
    pixels = np.array(image, dtype=np.uint8, copy=True)  # a writable copy torch may own
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(pixels).permute(2, 0, 1)


def normalize(pixels: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 ``(C, H, W)`` or ``(N, C, H, W)`` pixels scaled to [0, 1] and normalised by the card's mean/std."""
    shape = (-1, 1, 1)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(shape)
    std = torch.tensor(spec.std, dtype=torch.float32).view(shape)
    return pixels.float().div_(255.0).sub_(mean).div_(std)


def preprocess(image: Image.Image, spec: InputSpec, augment: random.Random | None = None) -> torch.Tensor:
    """One image as the network sees it: ``normalize(to_pixels(image))``, a ``(C, H, W)`` float tensor."""
    return normalize(to_pixels(image, spec, augment), spec)


def _light_augmentation(image: Image.Image, size: int, mode: InterpolationMode, rng: random.Random) -> Image.Image:
    width, height = image.size
    scale = rng.uniform(0.8, 1.0)
    w, h = max(1, round(width * scale**0.5)), max(1, round(height * scale**0.5))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    image = F.resized_crop(image, top, left, h, w, [size, size], interpolation=mode, antialias=True)
    image = F.rotate(image, rng.uniform(-10.0, 10.0), interpolation=InterpolationMode.BILINEAR)
    return F.adjust_brightness(image, rng.uniform(0.85, 1.15))
