"""The one place images become tensors, so seeding, extraction, training and evaluation agree exactly."""

from __future__ import annotations

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


def preprocess(image: Image.Image, spec: InputSpec) -> torch.Tensor:
    """Resize the short side, centre-crop, scale to [0, 1] and normalise: a ``(C, H, W)`` float tensor."""
    image = to_model_mode(image, spec.channels)
    image = F.resize(image, spec.resize_size, interpolation=InterpolationMode(spec.interpolation), antialias=True)
    image = F.center_crop(image, spec.crop_size)
    tensor = F.pil_to_tensor(image).float().div_(255.0)
    return F.normalize(tensor, spec.mean, spec.std)
