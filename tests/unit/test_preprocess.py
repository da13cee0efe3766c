"""Images become tensors the same way everywhere: mode, resize, centre crop, normalisation; seeded training crops."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from airflow_tl.data.preprocess import (
    CROP_RATIO,
    CROP_SCALE,
    decode_side,
    normalize,
    preprocess,
    sample_crop,
    to_model_mode,
    to_pixels,
)
from airflow_tl.models.card import InputSpec

SPEC = InputSpec(crop_size=8, resize_size=10, mean=[0.5, 0.4, 0.3], std=[0.25, 0.2, 0.1])


def normalised(rgb: tuple[int, int, int], spec: InputSpec = SPEC) -> torch.Tensor:
    """The (3,) vector a pixel of this colour must become."""
    return torch.tensor([(c / 255 - m) / s for c, m, s in zip(rgb, spec.mean, spec.std, strict=True)])


def assert_uniform(tensor: torch.Tensor, rgb: tuple[int, int, int], spec: InputSpec = SPEC) -> None:
    expected = normalised(rgb, spec)[:, None, None].expand_as(tensor)
    torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-5)


def palette_image(size: tuple[int, int], index: int, *, transparent: int | None = None) -> Image.Image:
    image = Image.new("P", size, index)
    image.putpalette([0, 0, 0, 200, 100, 50, 10, 20, 30] + [0] * (256 * 3 - 9))
    if transparent is not None:
        image.info["transparency"] = transparent
    return image


@pytest.mark.parametrize(
    ("image", "rgb"),
    [
        (Image.new("L", (20, 30), 77), (77, 77, 77)),
        (Image.new("RGB", (30, 20), (200, 100, 50)), (200, 100, 50)),
        (Image.new("RGBA", (16, 16), (200, 100, 50, 255)), (200, 100, 50)),
        (Image.new("RGBA", (16, 16), (12, 34, 56, 0)), (255, 255, 255)),  # transparent: white, not its colour
        (Image.new("LA", (16, 16), (90, 0)), (255, 255, 255)),
        (Image.new("LA", (16, 16), (90, 255)), (90, 90, 90)),
        (palette_image((24, 12), 1), (200, 100, 50)),
        (palette_image((24, 12), 2, transparent=2), (255, 255, 255)),
        (palette_image((24, 12), 1, transparent=2), (200, 100, 50)),
    ],
    ids=["L", "RGB", "RGBA-opaque", "RGBA-transparent", "LA-transparent", "LA-opaque", "P", "P-transparent",
         "P-other-transparent"],
)  # fmt: skip
def test_every_mode_becomes_a_normalised_rgb_tensor(image: Image.Image, rgb: tuple[int, int, int]) -> None:
    tensor = preprocess(image, SPEC)
    assert tensor.shape == (3, 8, 8)
    assert tensor.dtype == torch.float32
    assert_uniform(tensor, rgb)


def test_half_transparent_pixels_are_blended_with_white() -> None:
    tensor = preprocess(Image.new("RGBA", (16, 16), (0, 0, 0, 128)), SPEC)
    assert_uniform(tensor, (127, 127, 127))


def test_one_channel_spec() -> None:
    spec = InputSpec(crop_size=4, resize_size=4, mean=[0.5], std=[0.5], channels=1)
    tensor = preprocess(Image.new("RGB", (6, 6), (255, 255, 255)), spec)
    assert tensor.shape == (1, 4, 4)
    assert torch.equal(tensor, torch.ones(1, 4, 4))


@pytest.mark.parametrize(
    ("mode", "channels", "out"), [("RGBA", 3, "RGB"), ("P", 3, "RGB"), ("L", 3, "RGB"), ("RGB", 1, "L"), ("LA", 1, "L")]
)
def test_to_model_mode(mode: str, channels: int, out: str) -> None:
    assert to_model_mode(Image.new(mode, (2, 2)), channels).mode == out


def striped(width: int, height: int) -> Image.Image:
    """Red, green and blue vertical thirds."""
    image = Image.new("RGB", (width, height), (0, 255, 0))
    image.paste((255, 0, 0), (0, 0, width // 3, height))
    image.paste((0, 0, 255), (2 * width // 3, 0, width, height))
    return image


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic"])
def test_resize_short_side_then_centre_crop(interpolation: str) -> None:
    # 90x30 -> short side 10 -> 30x10 -> centre 8x8 lies within the green middle third (columns 10..19).
    spec = InputSpec(crop_size=8, resize_size=10, mean=[0.0] * 3, std=[1.0] * 3, interpolation=interpolation)
    tensor = preprocess(striped(90, 30), spec)
    assert tensor.shape == (3, 8, 8)
    assert_uniform(tensor, (0, 255, 0), spec)


def test_portrait_image_is_cropped_vertically() -> None:
    spec = InputSpec(crop_size=8, resize_size=10, mean=[0.0] * 3, std=[1.0] * 3)
    tensor = preprocess(striped(90, 30).rotate(90, expand=True), spec)  # 30x90: stripes now horizontal
    assert tensor.shape == (3, 8, 8)
    assert_uniform(tensor, (0, 255, 0), spec)


def test_resize_keeps_the_aspect_ratio() -> None:
    # Only the short side is resized: with crop == resize the crop keeps the middle of a 30x10 image,
    # so the outer thirds must not appear. A squashing resize would show red and blue at the edges.
    spec = InputSpec(crop_size=10, resize_size=10, mean=[0.0] * 3, std=[1.0] * 3, interpolation="nearest")
    tensor = preprocess(striped(90, 30), spec)
    assert tensor.shape == (3, 10, 10)
    assert_uniform(tensor, (0, 255, 0), spec)


def test_output_follows_the_image_content() -> None:
    spec = InputSpec(crop_size=4, resize_size=4, mean=[0.0] * 3, std=[1.0] * 3, interpolation="nearest")
    image = Image.new("L", (4, 4), 0)
    image.putpixel((3, 0), 255)
    tensor = preprocess(image, spec)
    assert tensor[:, 0, 3].tolist() == [1.0, 1.0, 1.0]
    assert tensor.sum().item() == 3.0


def test_output_is_deterministic() -> None:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (37, 53, 3), dtype=torch.uint8, generator=generator).numpy()
    image = Image.fromarray(pixels, "RGB")
    spec = InputSpec(crop_size=16, resize_size=20)
    first = preprocess(image, spec)
    assert torch.equal(first, preprocess(image.copy(), spec))
    assert torch.equal(first, preprocess(Image.fromarray(pixels.copy(), "RGB"), spec))
    assert first.std() > 0.1  # not a constant image


def test_input_image_is_not_modified() -> None:
    image = Image.new("RGBA", (12, 12), (1, 2, 3, 0))
    preprocess(image, SPEC)
    assert image.mode == "RGBA" and image.size == (12, 12) and image.getpixel((0, 0)) == (1, 2, 3, 0)


def test_a_normalised_batch_equals_its_images_normalised_one_by_one() -> None:
    # The loader normalises whole batches; training, seeding and evaluation must see the same numbers.
    generator = torch.Generator().manual_seed(1)
    spec = InputSpec(crop_size=16, resize_size=20)
    images = [
        Image.fromarray(torch.randint(0, 256, (24 + i, 30, 3), dtype=torch.uint8, generator=generator).numpy(), "RGB")
        for i in range(5)
    ]
    pixels = [to_pixels(image, spec) for image in images]
    assert all(p.dtype == torch.uint8 and p.shape == (3, 16, 16) for p in pixels)
    batch = normalize(torch.stack(pixels), spec)
    assert torch.equal(batch, torch.stack([preprocess(image, spec) for image in images]))


def test_pixels_of_a_one_channel_spec_keep_a_channel_axis() -> None:
    spec = InputSpec(crop_size=4, resize_size=4, mean=[0.5], std=[0.5], channels=1)
    pixels = to_pixels(Image.new("L", (6, 6), 255), spec)
    assert pixels.shape == (1, 4, 4) and pixels.dtype == torch.uint8
    assert torch.equal(normalize(pixels[None], spec), torch.ones(1, 1, 4, 4))


def test_an_image_already_at_the_resize_size_is_not_resampled() -> None:
    # Resizing to the current size is a copy in Pillow; skipping it must give the same pixels.
    generator = torch.Generator().manual_seed(2)
    image = Image.fromarray(torch.randint(0, 256, (20, 28, 3), dtype=torch.uint8, generator=generator).numpy(), "RGB")
    spec = InputSpec(crop_size=16, resize_size=20)
    expected = torch.from_numpy(np.array(image.crop((6, 2, 22, 18)))).permute(2, 0, 1)
    assert torch.equal(to_pixels(image, spec), expected)


# --- training augmentation ----------------------------------------------------------------------------------------


def textured(width: int = 120, height: int = 90, seed: int = 3) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator).numpy())


AUG = InputSpec(crop_size=48, resize_size=56)


def augmented(image: Image.Image, key: str, seed: int = 0, epoch: int = 1, spec: InputSpec = AUG) -> torch.Tensor:
    """As the loader augments: one RNG per (seed, epoch, image key)."""
    return to_pixels(image, spec, augment=random.Random(f"{seed}:{epoch}:{key}"))


def test_augmentation_is_a_pure_function_of_seed_epoch_and_key() -> None:
    image = textured()
    first = augmented(image, "a/1.jpg")
    assert first.shape == (3, 48, 48) and first.dtype == torch.uint8
    assert torch.equal(first, augmented(image.copy(), "a/1.jpg"))
    for other in [augmented(image, "a/2.jpg"), augmented(image, "a/1.jpg", epoch=2), augmented(image, "a/1.jpg", 1)]:
        assert not torch.equal(first, other)
    assert not torch.equal(first, to_pixels(image, AUG))


def test_augmentation_leaves_the_global_rngs_alone() -> None:
    # The loader augments in eight threads; drawing from torch's or Python's global RNG would make
    # results depend on thread timing, and would shift every later draw of the training run.
    torch.manual_seed(0)
    random.seed(0)
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    for key in range(20):
        augmented(textured(), str(key))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state


def test_augmentation_is_the_same_from_many_threads() -> None:
    images = [textured(100 + i, 80, seed=i) for i in range(6)]
    jobs = [(i, f"k{j}") for i in range(6) for j in range(8)]
    sequential = [augmented(images[i], key) for i, key in jobs]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda job: augmented(images[job[0]], job[1]), jobs))
    assert all(torch.equal(a, b) for a, b in zip(sequential, threaded, strict=True))


@pytest.mark.parametrize(("width", "height"), [(120, 90), (400, 200), (200, 400), (64, 64)])
def test_sampled_crops_keep_within_the_image_scale_and_ratio(width: int, height: int) -> None:
    short = min(width, height)
    for key in range(300):
        top, left, h, w = sample_crop(random.Random(str(key)), width, height)
        assert 0 <= top <= height - h and 0 <= left <= width - w
        # Each side is rounded to whole pixels: the bounds hold for some size within half a pixel of it.
        assert (w - 0.5) / (h + 0.5) <= CROP_RATIO[1] and (w + 0.5) / (h - 0.5) >= CROP_RATIO[0]
        assert (w - 0.5) * (h - 0.5) <= CROP_SCALE[1] * short**2 and (w + 0.5) * (h + 0.5) >= CROP_SCALE[0] * short**2


def test_decode_side_leaves_every_training_crop_enough_pixels() -> None:
    # Draft decoding may shrink a photo to decode_side on its short side; no crop may then need upscaling.
    spec = InputSpec(crop_size=224, resize_size=256)
    side = decode_side(spec, augment=True)
    assert decode_side(spec, augment=False) == 256 and side == 355
    smallest = min(min(sample_crop(random.Random(str(k)), side * 4 // 3, side)[2:]) for k in range(2000))
    assert spec.crop_size <= smallest < spec.crop_size * 1.05  # and the rule is not more generous than needed
    smaller = min(min(sample_crop(random.Random(str(k)), side, side - 30)[2:]) for k in range(2000))
    assert smaller < spec.crop_size


def circle(width: int, height: int) -> Image.Image:
    """A red disc of diameter 60 at the centre of a white image."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(image).ellipse((width // 2 - 30, height // 2 - 30, width // 2 + 30, height // 2 + 30), (255, 0, 0))
    return image


def disc_aspect(pixels: torch.Tensor) -> float | None:
    """Width over height of the red disc's bounding box; None unless the whole disc is in the picture."""
    red = (pixels[0] > 150) & (pixels[1] < 100) & (pixels[2] < 100)
    rows, cols = red.any(dim=1).nonzero().flatten(), red.any(dim=0).nonzero().flatten()
    if len(rows) == 0:
        return None
    top, bottom, left, right = rows[0] - 2, rows[-1] + 2, cols[0] - 2, cols[-1] + 2
    if top < 0 or left < 0 or bottom >= pixels.shape[1] or right >= pixels.shape[2]:
        return None
    # A disc cut by the crop's edge meets the black fill that rotation brings in; a whole one has white around it.
    ring = torch.cat([pixels[:, top, left:right], pixels[:, bottom, left:right], pixels[:, top:bottom, left],
                      pixels[:, top:bottom, right]], dim=1)  # fmt: skip
    if ring.min() < 180:
        return None
    return (right - left - 3).item() / (bottom - top - 3).item()


@pytest.mark.parametrize(("width", "height"), [(400, 200), (200, 400)])
def test_training_crops_keep_a_circle_round(width: int, height: int) -> None:
    # Cropping the photo's own 2:1 shape and squashing it into a square made this disc twice as tall as wide.
    spec = InputSpec(crop_size=128, resize_size=128, mean=[0.0] * 3, std=[1.0] * 3)
    image = circle(width, height)
    assert disc_aspect(to_pixels(image, spec)) == pytest.approx(1.0, abs=0.05)
    aspects = [a for key in range(200) if (a := disc_aspect(augmented(image, str(key), spec=spec))) is not None]
    assert len(aspects) >= 30
    assert all(CROP_RATIO[0] - 0.08 <= a <= CROP_RATIO[1] + 0.08 for a in aspects), sorted(aspects)
    assert sum(aspects) / len(aspects) == pytest.approx(1.0, abs=0.1)  # measured 0.96; squashing gave 0.5


def test_nothing_is_mirrored() -> None:
    image = Image.new("RGB", (90, 90), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 45, 90))  # red left half; every crop spans the middle
    for key in range(50):
        pixels = augmented(image, str(key)).float()
        assert pixels[0, :, :12].mean() > pixels[0, :, -12:].mean() + 100, key
