"""Decoding 12-megapixel JPEGs to the model's input, now against the loader's decode path before draft mode.

Prints:

- ``BENCH decode_12mp_jpeg_speedup <ratio>``: images/s of ``airflow_tl.data.decode.decode`` (JPEG draft
  mode at the smallest DCT scale ``decode_side`` allows) plus ``to_pixels``, over images/s of the path as
  it was before (a full decode, then resize and centre-crop: copied below as ``before_*``), turning 4000x3000
  JPEGs of about 3 MB (a phone photo at quality 90) into the 224 px input of a 256/224 model card. One
  thread each, best of ``ROUNDS`` interleaved rounds.

Lines not starting with BENCH are context: the same for a lighter (~2 MB) and a denser (~4.5 MB, sensor
noise) set of JPEGs, since entropy decoding, which draft mode cannot shorten, grows with the file; both paths
with augmentation; both over two threads; and how far the two paths' pixels are apart. Progress goes to stderr.
"""

from __future__ import annotations

import io
import os
import random
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from airflow_tl.data.decode import decode
from airflow_tl.data.preprocess import decode_side, to_pixels
from airflow_tl.models.card import InputSpec

WIDTH, HEIGHT = 4000, 3000
IMAGES = 3
REPEATS = 4  # each image decoded this many times per round
ROUNDS = 3

_STARTED = time.monotonic()


def note(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def photo_like_jpeg(seed: int, weights: tuple[float, float, float], noise: float) -> bytes:
    """Structure at three scales (large shapes, mid detail, fine texture) plus sensor noise, as a JPEG.

    Flat colour would make a tiny file that decodes unrealistically fast: the work of entropy decoding
    grows with the file, so the photo's detail, not its pixel count alone, decides the speed.
    """
    rng = np.random.default_rng(seed)
    pixels = np.full((HEIGHT, WIDTH, 3), 128.0, dtype=np.float32)
    for weight, grid, resample in zip(weights, ((16, 12), (200, 150), (1000, 750)), (Image.BICUBIC, Image.BICUBIC,
                                      Image.BILINEAR), strict=True):  # fmt: skip
        layer = Image.fromarray(rng.integers(0, 256, (grid[1], grid[0], 3), dtype=np.uint8)).resize(
            (WIDTH, HEIGHT), resample
        )
        pixels += weight * (np.asarray(layer, dtype=np.float32) - 128)
    pixels += rng.normal(0, noise, pixels.shape).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# --- before: the decode path of the base commit 95f16c2 (airflow_tl/data/loader.py ``_load``, preprocess.py),
# verbatim but for names, kept as the baseline: a full decode, then resize and crop of the full-size image. ------


def before_to_model_mode(image, channels):
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    wanted = "RGB" if channels == 3 else "L"
    return image if image.mode == wanted else image.convert(wanted)


def before_to_pixels(image, spec, augment=None):
    image = before_to_model_mode(image, spec.channels)
    mode = InterpolationMode(spec.interpolation)
    if min(image.size) != spec.resize_size:
        image = F.resize(image, spec.resize_size, interpolation=mode, antialias=True)
    if augment is None:
        image = F.center_crop(image, spec.crop_size)
    else:
        image = before_light_augmentation(image, spec.crop_size, mode, augment)
    pixels = np.array(image, dtype=np.uint8, copy=True)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(pixels).permute(2, 0, 1)


def before_light_augmentation(image, size, mode, rng):
    width, height = image.size
    scale = rng.uniform(0.8, 1.0)
    w, h = max(1, round(width * scale**0.5)), max(1, round(height * scale**0.5))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    image = F.resized_crop(image, top, left, h, w, [size, size], interpolation=mode, antialias=True)
    image = F.rotate(image, rng.uniform(-10.0, 10.0), interpolation=InterpolationMode.BILINEAR)
    return F.adjust_brightness(image, rng.uniform(0.85, 1.15))


def before_load(data: bytes, key: str, spec, augment: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))
        image.load()
    rng = random.Random(f"0:1:{key}") if augment else None
    return before_to_pixels(image, spec, augment=rng)


# --- now ---------------------------------------------------------------------------------------------------------


def now_load(data: bytes, key: str, spec, augment: bool):
    image = decode(data, key, channels=spec.channels, max_pixels=89478485, min_side=decode_side(spec, augment))
    rng = random.Random(f"0:1:{key}") if augment else None
    return to_pixels(image, spec, augment=rng)


# --- measuring ---------------------------------------------------------------------------------------------------


def images_per_s(load, photos: list[bytes], spec, *, augment: bool = False, threads: int = 1) -> float:
    jobs = [(data, f"img{i}") for i, data in enumerate(photos)] * REPEATS
    started = time.perf_counter()
    if threads == 1:
        for data, key in jobs:
            load(data, key, spec, augment)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda job: load(*job, spec, augment), jobs))
    return len(jobs) / (time.perf_counter() - started)


def compare(photos: list[bytes], spec, **kwargs) -> tuple[float, float]:
    """Best of ROUNDS images/s for (before, now), rounds interleaved so that load changes hit both sides."""
    before, now = [], []
    for _ in range(ROUNDS):
        before.append(images_per_s(before_load, photos, spec, **kwargs))
        now.append(images_per_s(now_load, photos, spec, **kwargs))
    return max(before), max(now)


def mean_abs_difference(photos: list[bytes], spec) -> float:
    diffs = [
        (before_load(d, "k", spec, False).float() - now_load(d, "k", spec, False).float()).abs().mean() for d in photos
    ]
    return float(sum(diffs) / len(diffs))


def main() -> None:
    torch.set_num_threads(1)  # the loader's threads do this work; torch's pool has no part in it
    spec = InputSpec(crop_size=224, resize_size=256)
    load_at_start = os.getloadavg()[0]
    note("generating photo-like 12 MP JPEGs")
    typical = [photo_like_jpeg(seed, (0.7, 0.35, 0.25), noise=2.0) for seed in range(IMAGES)]
    light = [photo_like_jpeg(50 + seed, (0.7, 0.3, 0.12), noise=2.0) for seed in range(IMAGES)]
    dense = [photo_like_jpeg(100 + seed, (0.7, 0.35, 0.35), noise=7.0) for seed in range(IMAGES)]
    for name, photos in (("typical", typical), ("light", light), ("dense", dense)):
        sizes = ", ".join(f"{len(d) / 1e6:.2f}" for d in photos)
        print(f"  {name}: {len(photos)} JPEGs of {WIDTH}x{HEIGHT} at quality 90: {sizes} MB")
    note("warming up")
    for load in (before_load, now_load):
        load(typical[0], "warm", spec, False)
        load(typical[0], "warm", spec, True)

    note("typical, one thread")
    before, now = compare(typical, spec)
    others = {}
    for name, photos in (("light", light), ("dense", dense)):
        note(f"{name}, one thread")
        others[name] = compare(photos, spec)
    note("typical, augmented")
    aug_before, aug_now = compare(typical, spec, augment=True)
    note("typical, two threads")
    two_before, two_now = compare(typical, spec, threads=2)

    print(f"  typical, one thread: before {before:.1f} images/s, now {now:.1f} images/s")
    for name, (other_before, other_now) in others.items():
        print(f"  {name}, one thread: before {other_before:.1f} images/s, now {other_now:.1f} images/s, "
              f"ratio {other_now / other_before:.2f}")  # fmt: skip
    print(f"  typical, augmented: before {aug_before:.1f} images/s, now {aug_now:.1f} images/s, "
          f"ratio {aug_now / aug_before:.2f}")  # fmt: skip
    print(f"  typical, two threads: before {two_before:.1f} images/s, now {two_now:.1f} images/s, "
          f"ratio {two_now / two_before:.2f}")  # fmt: skip
    difference = mean_abs_difference(typical, spec)
    print(f"  mean absolute difference of the 224 px inputs, before vs now: {difference:.2f} of 255")
    print(
        f"  machine: {os.cpu_count()} CPUs, 1-min load average {load_at_start:.1f} at start and "
        f"{os.getloadavg()[0]:.1f} at the end (figures are noisy when other work shares the CPUs)"
    )
    print(f"BENCH decode_12mp_jpeg_speedup {now / before:.2f}")
    note("done")


if __name__ == "__main__":
    main()
