"""The one place images become tensors, so seeding, extraction, training and evaluation agree exactly.

Two stages: ``to_pixels`` (decode-side work on one PIL image, giving uint8) and ``normalize`` (float
scaling and the card's mean/std). The loader runs the first in its threads and the second once per
batch: one vectorised op over a batch costs a fraction of what the same op costs image by image, and
it keeps small tensor ops (and their thread pool) out of the loader threads.

Without augmentation every path resizes the short side to ``resize_size`` and centre-crops
``crop_size``. Training augmentation is RandomResizedCrop's sampling (area and log-uniform aspect
ratio) done with a seeded ``random.Random`` instead of torch's global RNG, which the loader's threads
would share and race on, and applied with ``torchvision.transforms.v2.functional`` on the PIL image.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from airflow_tl.data.decode import to_model_mode
from airflow_tl.models.card import InputSpec

__all__ = ["decode_side", "normalize", "preprocess", "sample_crop", "to_model_mode", "to_pixels"]

# Bump whenever the pixels an image becomes change (decoding, resizing, cropping): cached features made from
# other pixels must not be reused. 2: EXIF orientation, scaled 16-bit, draft-mode JPEG decoding.
PIXELS_VERSION = 2
# Training crops: an area of 50-100 % of the photo's short-side square (the evaluation crop, 224 of
# 256, shows 77 %, near the middle of this range) and a width/height between 4/5 and 5/4, log-uniform, so
# a circle stays within 25 % of round whatever the photo's own aspect ratio.
CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (4 / 5, 5 / 4)
ROTATION_DEGREES = 10.0
BRIGHTNESS = (0.85, 1.15)


def decode_side(spec: InputSpec, augment: bool) -> int:
    """The shortest side a decoder may reduce an image to without losing pixels the output uses.

    Evaluation resizes the short side down to ``resize_size``, so it needs that many. A training crop
    can be as small as ``sqrt(CROP_SCALE[0] * CROP_RATIO[0])`` of the short side on its shorter edge
    and is resized to ``crop_size``: a decode with fewer pixels than ``crop_size`` there would upscale
    what a full decode would have downscaled.

    :param spec: the model card's input spec.
    :param augment: whether the image gets the training crop.
    """
    if augment:
        return math.ceil(spec.crop_size / math.sqrt(CROP_SCALE[0] * CROP_RATIO[0]))
    return max(spec.resize_size, spec.crop_size)


def to_pixels(image: Image.Image, spec: InputSpec, augment: random.Random | None = None) -> torch.Tensor:
    """Resize the short side and centre-crop: a ``(C, H, W)`` uint8 tensor, not yet normalised.

    With ``augment`` (a seeded RNG, so every run sees the same variations) the crop is a random
    region of the photo with a near-square aspect (``sample_crop``), resized to the crop size, slightly
    rotated and brightened or darkened. Nothing is mirrored: flips turn digits, text and many medical
    images into different things.

    :param image: any PIL image; modes are converted as ``to_model_mode`` says.
    :param spec: the model card's input spec.
    :param augment: a ``random.Random`` seeded per (seed, epoch, image), or None for no augmentation.
    """
    image = to_model_mode(image, spec.channels)
    mode = InterpolationMode(spec.interpolation)
    if augment is None:
        if min(image.size) != spec.resize_size:
            image = F.resize(image, [spec.resize_size], interpolation=mode, antialias=True)
        image = F.center_crop(image, [spec.crop_size])
    else:
        image = _augmented(image, spec.crop_size, mode, augment)
    pixels = np.array(image, dtype=np.uint8, copy=True)  # a writable copy torch may own
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(pixels).permute(2, 0, 1)


def normalize(pixels: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 ``(C, H, W)`` or ``(N, C, H, W)`` pixels scaled to [0, 1] and normalised by the card's mean/std.

    :param pixels: uint8 pixels from ``to_pixels``, one image or a stacked batch.
    :param spec: the model card's input spec.
    """
    shape = (-1, 1, 1)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(shape)
    std = torch.tensor(spec.std, dtype=torch.float32).view(shape)
    return pixels.float().div_(255.0).sub_(mean).div_(std)


def preprocess(image: Image.Image, spec: InputSpec, augment: random.Random | None = None) -> torch.Tensor:
    """One image as the network sees it: ``normalize(to_pixels(image))``, a ``(C, H, W)`` float tensor.

    :param image: any PIL image.
    :param spec: the model card's input spec.
    :param augment: as for ``to_pixels``.
    """
    return normalize(to_pixels(image, spec, augment), spec)


def sample_crop(rng: random.Random, width: int, height: int) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of a training crop: RandomResizedCrop's sampling, seeded.

    As ``torchvision.transforms.v2.RandomResizedCrop.get_params``, except: the area is a fraction of
    the short side's square rather than of the whole photo, so a panorama is not cropped tighter than a
    square photo; the offset is drawn as a fraction of the free space, so a seed picks the same region of
    the photo whatever scale it was decoded at (JPEG draft mode); the fallback after ten misses is the
    centred short-side square.

    :param rng: the per-image RNG.
    :param width: the image's width in pixels.
    :param height: the image's height in pixels.
    """
    area = min(width, height) ** 2
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return round(rng.random() * (height - h)), round(rng.random() * (width - w)), h, w
    side = min(width, height)
    return (height - side) // 2, (width - side) // 2, side, side


def _augmented(image: Image.Image, size: int, mode: InterpolationMode, rng: random.Random) -> Image.Image:
    top, left, height, width = sample_crop(rng, *image.size)
    image = F.resized_crop(image, top, left, height, width, [size, size], interpolation=mode, antialias=True)
    image = F.rotate(image, rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES), interpolation=InterpolationMode.BILINEAR)
    return F.adjust_brightness(image, rng.uniform(*BRIGHTNESS))
