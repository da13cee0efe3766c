"""The demo's transfer task from scikit-learn's bundled digits: source task 0–4, target task 5–9."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}
SOURCE_CLASSES = ("0", "1", "2", "3", "4")
TARGET_CLASSES = ("5", "6", "7", "8", "9")


@dataclass(frozen=True)
class DigitImage:
    split: str
    label: str
    index: int  # row in sklearn's digits, so keys are stable across runs
    png: bytes

    @property
    def key(self) -> str:
        return f"{self.split}/{self.label}/{self.index:04d}.png"


def _png(pixels: np.ndarray) -> bytes:
    # sklearn's digits are 8x8 with values 0..16; stored as the grayscale PNGs a user would have.
    image = Image.fromarray(np.round(pixels * (255.0 / 16.0)).astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def digit_images(classes: tuple[str, ...], seed: int = 0) -> list[DigitImage]:
    """Every digit of ``classes`` as a PNG, split train/val/test per class (stratified, seeded)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    images = []
    for label in classes:
        rows = np.flatnonzero(digits.target == int(label))
        rng.shuffle(rows)
        n_train = round(len(rows) * SPLITS["train"])
        n_val = round(len(rows) * SPLITS["val"])
        bounds = {"train": rows[:n_train], "val": rows[n_train : n_train + n_val], "test": rows[n_train + n_val :]}
        for split, members in bounds.items():
            images += [DigitImage(split, label, int(i), _png(digits.images[i])) for i in sorted(members)]
    return images
