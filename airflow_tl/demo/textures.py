"""Seeded procedural textures: a target task unlike the digits the demo's source network learned.

Five classes of 32x32 grayscale images, each drawn from a family of patterns whose parameters vary from image
to image (orientation, period, phase, position, brightness, contrast, noise), so a class is a kind of
structure rather than a fixed picture:

- ``stripes``: a sinusoidal grating at any orientation;
- ``checks``: a rotated checkerboard (two crossed, softened square waves);
- ``rings``: concentric rings about an off-centre point;
- ``blobs``: smooth low-frequency noise, squashed into soft patches;
- ``dots``: a few scattered round spots.

Every image gets pixel noise, and nothing looks like a pen stroke on a dark background, which is what the
digits source network's features were shaped by. Periods are 9 px or more: ResNet-18's stem reduces 32 px to
8x8 before its first block, and finer patterns alias into one another. Grayscale on purpose: with a random
colour pair per image the classes were so hard that ResNet-18 trained from scratch on 110 images per class
for 8 epochs reached 0.44 test accuracy (0.81 in grayscale), and a matrix where every strategy fails says
nothing about the strategies.

Same shape as ``digits.py``: images carry split, label and PNG bytes, and ``key`` is
``<split>/<label>/<index>.png`` (the dataset's 'splits' layout), so ``seed.upload_dataset`` uploads them as
they are.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image

from airflow_tl.exceptions import InvalidArgumentError

SIZE = 32
# Pixel noise (std, in [0, 1] intensity units) is drawn per image from this range: enough that a few
# examples do not pin a class down, not so much that the structure drowns.
NOISE_RANGE = (0.03, 0.12)
CONTRAST_RANGE = (0.5, 1.0)


@dataclass(frozen=True)
class TextureImage:
    split: str
    label: str
    index: int  # position within (split, label), so keys are stable for a given seed and count
    png: bytes

    @property
    def key(self) -> str:
        return f"{self.split}/{self.label}/{self.index:04d}.png"


def _grid(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in [-1, 1], rotated by a random angle."""
    axis = np.linspace(-1.0, 1.0, SIZE)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    angle = rng.uniform(0, np.pi)
    return x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)


def _stripes(rng: np.random.Generator) -> np.ndarray:
    u, _ = _grid(rng)
    cycles = rng.uniform(1.5, 3.5)  # per half-width (16 px): periods of 9 to 21 px
    return 0.5 + 0.5 * np.sin(np.pi * cycles * u + rng.uniform(0, 2 * np.pi))


def _checks(rng: np.random.Generator) -> np.ndarray:
    u, v = _grid(rng)
    cycles = rng.uniform(1.2, 3.0)
    phase_u, phase_v = rng.uniform(0, 2 * np.pi, 2)
    # A softened square wave: sharp edges alias badly at 32 px.
    product = np.sin(np.pi * cycles * u + phase_u) * np.sin(np.pi * cycles * v + phase_v)
    return 0.5 + 0.5 * np.tanh(4.0 * product)


def _rings(rng: np.random.Generator) -> np.ndarray:
    axis = np.linspace(-1.0, 1.0, SIZE)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    cy, cx = rng.uniform(-0.8, 0.8, 2)
    radius = np.hypot(x - cx, y - cy)
    return 0.5 + 0.5 * np.cos(np.pi * rng.uniform(1.5, 3.5) * radius + rng.uniform(0, 2 * np.pi))


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    coarse = rng.random((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((SIZE, SIZE), Image.BICUBIC), dtype=np.float64)


def _blobs(rng: np.random.Generator) -> np.ndarray:
    field = _smooth_noise(rng, int(rng.integers(3, 7)))
    field = (field - field.mean()) / (field.std() + 1e-6)
    return 1.0 / (1.0 + np.exp(-3.0 * field))


def _dots(rng: np.random.Generator) -> np.ndarray:
    axis = np.arange(SIZE)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    count = int(rng.integers(4, 11))
    width = rng.uniform(1.5, 3.0)
    image = np.zeros((SIZE, SIZE))
    for cy, cx in rng.uniform(0, SIZE, (count, 2)):
        image = np.maximum(image, np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * width**2)))
    return image


PATTERNS: Mapping[str, Callable[[np.random.Generator], np.ndarray]] = {
    "blobs": _blobs,
    "checks": _checks,
    "dots": _dots,
    "rings": _rings,
    "stripes": _stripes,
}
TEXTURE_CLASSES = tuple(PATTERNS)  # sorted, as class folder names are


def _shade(pattern: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map a [0, 1] pattern to a random brightness and contrast, then add pixel noise."""
    contrast = rng.uniform(*CONTRAST_RANGE)
    shaded = rng.uniform(0.0, 1.0 - contrast) + contrast * pattern
    return np.clip(shaded + rng.normal(0.0, rng.uniform(*NOISE_RANGE), shaded.shape), 0.0, 1.0)


def _unknown_message(label: str) -> str:
    names = [f"'{name}'" for name in TEXTURE_CLASSES]
    return f"A texture class is one of {', '.join(names[:-1])} and {names[-1]}. Provided value: {label!r}."


def texture_pixels(label: str, rng: np.random.Generator) -> np.ndarray:
    """One ``SIZE`` x ``SIZE`` grayscale image of class ``label`` as uint8.

    :param label: one of ``TEXTURE_CLASSES``
    :param rng: the generator every random choice is drawn from
    """
    if label not in PATTERNS:
        raise InvalidArgumentError(_unknown_message(label))
    return np.round(_shade(PATTERNS[label](rng), rng) * 255).astype(np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def texture_images(
    counts: Mapping[str, int], classes: tuple[str, ...] = TEXTURE_CLASSES, seed: int = 0
) -> list[TextureImage]:
    """``counts[split]`` images of every class for each split, as PNGs; the same seed gives the same bytes.

    Each (split, class) draws from its own generator, so asking for more images of one split only adds
    images and never changes those already there.

    :param counts: images per class for each split, e.g. ``{"train": 10, "val": 5, "test": 50}``
    :param classes: which of ``TEXTURE_CLASSES`` to draw
    :param seed: the seed of every generator
    """
    unknown = [label for label in classes if label not in PATTERNS]
    if unknown:
        raise InvalidArgumentError(_unknown_message(unknown[0]))
    images = []
    for split, count in counts.items():
        for label in classes:
            # Keyed by names, not positions: the same (split, class) gets the same images whatever else is asked.
            rng = np.random.default_rng([seed, zlib.crc32(split.encode()), TEXTURE_CLASSES.index(label)])
            images += [TextureImage(split, label, i, _png(texture_pixels(label, rng))) for i in range(count)]
    return images
