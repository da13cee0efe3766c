"""Decoding 12-megapixel JPEGs to the model's input, now against the loader's decode path before draft mode.

Prints:

- ``BENCH decode_12mp_jpeg_speedup <ratio>``: images/s of ``airflow_tl.data.decode.decode`` (JPEG draft
  mode at the smallest DCT scale ``decode_side`` allows) plus ``to_pixels``, over images/s of the path as
  it was before (a full decode, then resize and centre-crop: copied below as ``before_*``), turning 4000x3000
  JPEGs of about 3 MB (a phone photo at quality 90) into the 224 px input of a 256/224 model card. Images/s
  per core: one over the median CPU time of one image, the two paths alternating image by image.

Lines not starting with BENCH are context: the same by wall time; for a lighter (~2 MB) and a denser (~4.5 MB,
sensor noise) set of JPEGs, since entropy decoding, which draft mode cannot shorten, grows with the file; both
paths with augmentation; where one image's CPU time goes; both over two threads; and how far the two paths'
pixels are apart. Progress goes to stderr.
"""

from __future__ import annotations

import io
import os
import random
import statistics
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
ROUNDS = 8  # each image decoded this many times by each path

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


def per_image_seconds(photos: list[bytes], spec, *, augment: bool = False) -> dict[str, dict[str, list[float]]]:
    """CPU and wall seconds of every decode, before and now alternating image by image.

    The work runs in the calling thread only (Pillow, numpy, torch at one thread), so the thread's CPU time
    is what one image costs a core, whatever else the machine runs; the wall time is noisier on a shared
    machine. Alternating keeps a burst of outside load from landing on one side only.
    """
    seconds = {name: {"cpu": [], "wall": []} for name in ("before", "now")}
    for _ in range(ROUNDS):
        for i, data in enumerate(photos):
            for name, load in (("before", before_load), ("now", now_load)):
                wall, cpu = time.perf_counter(), time.thread_time()
                load(data, f"img{i}", spec, augment)
                seconds[name]["cpu"].append(time.thread_time() - cpu)
                seconds[name]["wall"].append(time.perf_counter() - wall)
    return seconds


def rates(photos: list[bytes], spec, **kwargs) -> dict[str, tuple[float, float]]:
    """Images/s (per core by CPU time, and by wall time) for before and now, from median per-image seconds."""
    seconds = per_image_seconds(photos, spec, **kwargs)
    return {
        name: (1 / statistics.median(times["cpu"]), 1 / statistics.median(times["wall"]))
        for name, times in seconds.items()
    }


def decode_only_ms(photos: list[bytes], draft: tuple[int, int] | None) -> float:
    """Median CPU milliseconds of Image.open + load alone, at full size or in draft mode."""
    times = []
    for _ in range(ROUNDS // 2):
        for data in photos:
            cpu = time.thread_time()
            image = Image.open(io.BytesIO(data))
            if draft:
                image.draft("RGB", draft)
            image.load()
            times.append(time.thread_time() - cpu)
    return statistics.median(times) * 1000


def threaded_images_per_s(load, photos: list[bytes], spec, threads: int) -> float:
    jobs = [(data, f"img{i}") for i, data in enumerate(photos)] * 2
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda job: load(*job, spec, False), jobs))
    return len(jobs) / (time.perf_counter() - started)


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

    results = {}
    for name, photos, augment in (("typical", typical, False), ("light", light, False), ("dense", dense, False),
                                  ("typical, augmented", typical, True)):  # fmt: skip
        note(f"{name}: {ROUNDS} rounds")
        results[name] = rates(photos, spec, augment=augment)
    note("typical, two threads")
    two = {name: max(threaded_images_per_s(load, typical, spec, 2) for _ in range(3))
           for name, load in (("before", before_load), ("now", now_load))}  # fmt: skip

    for name, result in results.items():
        (cpu_before, wall_before), (cpu_now, wall_now) = result["before"], result["now"]
        print(
            f"  {name}: before {cpu_before:.1f} images/s per core ({wall_before:.1f} by wall time), "
            f"now {cpu_now:.1f} ({wall_now:.1f}); ratio {cpu_now / cpu_before:.2f} ({wall_now / wall_before:.2f})"
        )
    side = decode_side(spec, augment=False)
    full_ms, draft_ms = decode_only_ms(typical, None), decode_only_ms(typical, (side, side))
    (cpu_before, _), (cpu_now, _) = results["typical"]["before"], results["typical"]["now"]
    print(
        f"  typical, CPU ms per image: before {1000 / cpu_before:.1f}, of which Image.open + load at full size "
        f"~{full_ms:.1f}; now {1000 / cpu_now:.1f}, of which Image.open + load at 1/8 ~{draft_ms:.1f} "
        "(measured apart: the shares are approximate)"
    )
    print(f"  typical, two threads: before {two['before']:.1f} images/s, now {two['now']:.1f} images/s, "
          f"ratio {two['now'] / two['before']:.2f}")  # fmt: skip
    difference = mean_abs_difference(typical, spec)
    print(f"  mean absolute difference of the 224 px inputs, before vs now: {difference:.2f} of 255")
    print(
        f"  machine: {os.cpu_count()} CPUs, 1-min load average {load_at_start:.1f} at start and "
        f"{os.getloadavg()[0]:.1f} at the end (figures are noisy when other work shares the CPUs)"
    )
    print(f"BENCH decode_12mp_jpeg_speedup {cpu_now / cpu_before:.2f}")
    note("done")


if __name__ == "__main__":
    main()
