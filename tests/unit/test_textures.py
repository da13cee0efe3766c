"""The demo's dissimilar task: seeded procedural textures, five learnable classes, valid PNGs in the splits layout."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from airflow_tl.demo.textures import SIZE, TEXTURE_CLASSES, texture_images, texture_pixels
from airflow_tl.exceptions import InvalidArgumentError


def pixels(image) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image.png)), dtype=np.float64) / 255.0


def test_images_are_valid_grayscale_pngs_keyed_in_the_splits_layout():
    images = texture_images({"train": 3, "val": 2, "test": 1}, seed=7)
    assert Counter((i.split, i.label) for i in images) == {
        (split, label): n for split, n in {"train": 3, "val": 2, "test": 1}.items() for label in TEXTURE_CLASSES
    }
    assert len({i.key for i in images}) == len(images)
    for image in images:
        decoded = Image.open(io.BytesIO(image.png))
        assert decoded.format == "PNG" and decoded.mode == "L" and decoded.size == (SIZE, SIZE)
        assert image.key == f"{image.split}/{image.label}/{image.index:04d}.png"


def test_same_seed_same_bytes_other_seed_other_images():
    counts = {"train": 4, "test": 2}
    first, again, other = (texture_images(counts, seed=s) for s in (3, 3, 4))
    assert [i.png for i in first] == [i.png for i in again]
    assert not {i.png for i in first} & {i.png for i in other}


def test_asking_for_more_images_keeps_those_already_drawn():
    few = texture_images({"train": 3, "test": 2}, classes=("dots", "rings"))
    more = {i.key: i.png for i in texture_images({"test": 5, "val": 1, "train": 8}, classes=("rings", "dots"))}
    assert all(more[i.key] == i.png for i in few)


def test_images_of_a_class_vary():
    rng = np.random.default_rng(0)
    for label in TEXTURE_CLASSES:
        a, b = (texture_pixels(label, rng).astype(float) for _ in range(2))
        assert np.abs(a - b).mean() > 10, label  # of 255: not one picture with a little noise


def spectrum_features(image: np.ndarray) -> np.ndarray:
    """Translation-invariant: the FFT magnitude, pooled over 4x4 frequency cells, and the pixel histogram."""
    magnitude = np.abs(np.fft.fft2(image - image.mean()))
    pooled = magnitude.reshape(8, SIZE // 8, 8, SIZE // 8).mean(axis=(1, 3)).ravel()
    histogram = np.histogram(image, bins=8, range=(0, 1))[0] / image.size
    return np.concatenate([np.log1p(pooled), histogram])


def test_classes_differ_enough_for_a_simple_classifier_to_learn_them():
    """Logistic regression on spectra well above chance (0.2): the classes are learnable, by structure alone."""
    from sklearn.linear_model import LogisticRegression

    images = texture_images({"train": 40, "test": 20}, seed=1)
    split = {s: [i for i in images if i.split == s] for s in ("train", "test")}
    x = {s: np.stack([spectrum_features(pixels(i)) for i in split[s]]) for s in split}
    y = {s: [i.label for i in split[s]] for s in split}
    accuracy = LogisticRegression(max_iter=2000).fit(x["train"], y["train"]).score(x["test"], y["test"])
    assert accuracy > 0.6


def test_images_are_not_fixed_brightness_per_class():
    """Mean brightness alone must not give the class away: every class spans dark and bright images."""
    images = texture_images({"train": 30}, seed=2)
    for label in TEXTURE_CLASSES:
        means = [pixels(i).mean() for i in images if i.label == label]
        assert max(means) - min(means) > 0.25, label


@pytest.mark.parametrize("call", [lambda: texture_pixels("zigzag", np.random.default_rng(0)),
                                  lambda: texture_images({"train": 1}, classes=("dots", "zigzag"))])  # fmt: skip
def test_unknown_class_is_refused_naming_the_valid_ones(call):
    with pytest.raises(InvalidArgumentError) as error:
        call()
    assert str(error.value) == (
        "A texture class is one of 'blobs', 'checks', 'dots', 'rings' and 'stripes'. Provided value: 'zigzag'."
    )
