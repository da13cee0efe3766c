"""Streaming image batches from S3: shapes, labels, order, augmentation, corrupt images, caching, bounded memory,
and real photos (formats, EXIF orientation, 16-bit, CMYK, draft decoding, the pixel limit)."""

from __future__ import annotations

import io
import os
import threading
import time
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from airflow_tl.data.dataset import DatasetChangedError, DatasetError, list_dataset
from airflow_tl.data.decode import decode
from airflow_tl.data.loader import CorruptImagesError, ImageStream
from airflow_tl.data.preprocess import decode_side, normalize, to_pixels
from airflow_tl.storage.s3 import S3Store
from tests.helpers import SMALL_INPUT

CLASSES = ("ant", "bee", "cow")
PER_CLASS = {"train": 12, "val": 2, "test": 1}
MODES = ("RGB", "L", "RGBA")
FORMATS = (("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP"))
SIZES = ((40, 36), (36, 48), (33, 33), (64, 40))


def colour_of(n: int) -> tuple[int, int, int]:
    """A distinct colour per image (at its centre), so every tensor can be traced back to the key it came from."""
    return (n * 7 % 256, 255 - n * 5 % 256, n * 11 % 256)


def encode(n: int, lossless: bool = False) -> bytes:
    mode = MODES[n % len(MODES)]
    _, fmt = FORMATS[0] if lossless else FORMATS[n % len(FORMATS)]
    r, g, b = colour_of(n)
    colour = {"RGB": (r, g, b), "RGBA": (r, g, b, 255), "L": r}[mode]
    buffer = io.BytesIO()
    save = {"lossless": True} if fmt == "WEBP" else {"quality": 100} if fmt == "JPEG" else {}
    image = Image.new(mode, SIZES[n % len(SIZES)], colour)
    # Texture away from the centre, so that crops and rotations visibly move something.
    image.paste({"RGB": (0, 0, 0), "RGBA": (0, 0, 0, 255), "L": 0}[mode], (0, 0, image.width // 4, image.height // 4))
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def expected_pixel(n: int) -> torch.Tensor:
    """The normalised colour a solid image turns into (grayscale images are replicated to RGB)."""
    r, g, b = colour_of(n)
    rgb = (r, r, r) if MODES[n % len(MODES)] == "L" else (r, g, b)
    mean, std = torch.tensor(SMALL_INPUT.mean), torch.tensor(SMALL_INPUT.std)
    return (torch.tensor(rgb, dtype=torch.float32) / 255 - mean) / std


def upload(store: S3Store, root: str, per_class: dict[str, int]) -> dict[str, int]:
    """Upload a train/val/test dataset; returns each key's image number."""
    numbers = {}
    for split, count in per_class.items():
        for name in CLASSES:
            for i in range(count):
                n = len(numbers)
                ext, _ = FORMATS[n % len(FORMATS)]
                key = f"{root.split('/', 3)[3]}/{split}/{name}/{i:03d}.{ext}"
                store.put_bytes(f"s3://{root.split('/')[2]}/{key}", encode(n))
                numbers[key] = n
    return numbers


@pytest.fixture(scope="module")
def store(local_s3):
    """The conftest ``store``, built the same production way, once per module: building a client costs ~0.5 s."""
    from airflow_tl.hooks.s3 import s3_store

    return s3_store("aws_default")


@pytest.fixture(scope="module")
def images(store):
    """One dataset shared by the read-only tests: (dataset, key -> image number)."""
    name = f"tl-test-{uuid.uuid4().hex[:12]}"
    store.ensure_bucket(name)
    root = f"s3://{name}/imgs"
    numbers = upload(store, root, PER_CLASS)
    return list_dataset(store, root), numbers


def one_pass(stream: ImageStream, split: str = "train", **kwargs) -> tuple[list[str], dict[str, torch.Tensor]]:
    keys, tensors = [], {}
    for batch in stream.batches(split, **kwargs):
        keys += batch.keys
        tensors.update(zip(batch.keys, batch.x, strict=True))
    return keys, tensors


class CountingStore(S3Store):
    """The real store, counting GETs (they still go to the S3 server)."""

    def __init__(self, client) -> None:
        super().__init__(client)
        self.gets: list[str] = []
        self._lock = threading.Lock()

    def get_bytes(self, uri):
        with self._lock:
            self.gets.append(str(uri))
        return super().get_bytes(uri)


# --- shapes, labels, coverage ---------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_batches_shapes_labels_and_content(store, images, split):
    dataset, numbers = images
    stream = ImageStream(store, dataset, SMALL_INPUT, batch_size=4, threads=4)
    expected_keys = sorted(i.key for i in dataset.split(split))
    batches = list(stream.batches(split))

    assert [len(b.keys) for b in batches[:-1]] == [4] * (len(batches) - 1)
    assert 1 <= len(batches[-1].keys) <= 4
    seen = []
    for batch in batches:
        n = len(batch.keys)
        assert batch.x.shape == (n, 3, SMALL_INPUT.crop_size, SMALL_INPUT.crop_size)
        assert batch.x.dtype == torch.float32
        assert batch.y.shape == (n,) and batch.y.dtype == torch.int64
        for key, x, y in zip(batch.keys, batch.x, batch.y, strict=True):
            assert dataset.class_names[int(y)] == key.split("/")[2]  # imgs/<split>/<class>/<file>
            centre = x[:, SMALL_INPUT.crop_size // 2, SMALL_INPUT.crop_size // 2]
            # JPEG is lossy even at quality 100, and chroma subsampling shifts colours a little.
            tolerance = 0.2 if key.endswith(".jpg") else 1e-5
            assert torch.allclose(centre, expected_pixel(numbers[key]), atol=tolerance), key
        seen += batch.keys
    assert seen == expected_keys  # every image once, in key order when not shuffled
    assert len(expected_keys) == PER_CLASS[split] * len(CLASSES)


# --- order and augmentation -------------------------------------------------------------------------------------


def test_shuffle_is_deterministic_per_seed_and_epoch(store, images):
    dataset, _ = images
    stream = ImageStream(store, dataset, SMALL_INPUT, batch_size=5, threads=4, cache_bytes=10**8)
    plain, plain_x = one_pass(stream)

    first, first_x = one_pass(stream, shuffle=True, seed=3, epoch=1)
    again, _ = one_pass(stream, shuffle=True, seed=3, epoch=1)
    next_epoch, _ = one_pass(stream, shuffle=True, seed=3, epoch=2)
    other_seed, _ = one_pass(stream, shuffle=True, seed=4, epoch=1)

    assert first == again
    assert first != next_epoch and first != other_seed and first != plain
    for order in (first, next_epoch, other_seed):
        assert sorted(order) == plain and len(set(order)) == len(order)
    for key in plain:  # shuffling moves images, it does not change them
        assert torch.equal(first_x[key], plain_x[key])
    assert [i.key for i in dataset.items] == sorted(i.key for i in dataset.items)  # the dataset is not reordered


def test_augmentation_changes_pixels_deterministically(store, images):
    dataset, _ = images
    stream = ImageStream(store, dataset, SMALL_INPUT, batch_size=8, threads=4, cache_bytes=10**8)
    _, plain = one_pass(stream)
    _, aug = one_pass(stream, augment=True, seed=0, epoch=1)
    _, aug_again = one_pass(stream, augment=True, seed=0, epoch=1, shuffle=True)
    _, aug_epoch2 = one_pass(stream, augment=True, seed=0, epoch=2)
    _, aug_seed1 = one_pass(stream, augment=True, seed=1, epoch=1)

    assert aug.keys() == plain.keys()
    for key in plain:
        assert aug[key].shape == plain[key].shape
        assert torch.equal(aug[key], aug_again[key]), key  # same seed and epoch: same variation, whatever the order
        assert not torch.equal(aug[key], plain[key]), key
    assert sum(not torch.equal(aug[k], aug_epoch2[k]) for k in plain) == len(plain)
    assert sum(not torch.equal(aug[k], aug_seed1[k]) for k in plain) == len(plain)


# --- corrupt images ---------------------------------------------------------------------------------------------


@pytest.fixture
def with_corrupt(store, bucket):
    root = f"s3://{bucket}/bad"
    upload(store, root, {"train": 3, "val": 1})
    corrupt_key = "bad/train/bee/x.png"
    store.put_bytes(f"s3://{bucket}/{corrupt_key}", os.urandom(300))
    return list_dataset(store, root), corrupt_key


def test_corrupt_image_fails_the_pass_at_the_end(store, bucket, with_corrupt):
    dataset, corrupt_key = with_corrupt
    good = sorted(i.key for i in dataset.split("train") if i.key != corrupt_key)
    stream = ImageStream(store, dataset, SMALL_INPUT, batch_size=2, threads=2)

    received = []
    with pytest.raises(CorruptImagesError) as err:
        for batch in stream.batches("train"):
            received += batch.keys
    assert received == good  # every good image was yielded before the error
    assert isinstance(err.value, DatasetError)
    message = str(err.value)
    assert f"s3://{bucket}/{corrupt_key}" in message
    assert dataset.uri in message and "skip_corrupt" in message
    assert stream.skipped == set()
    assert [k for b in stream.batches("val") for k in b.keys]  # other splits are unaffected


def test_skip_corrupt_leaves_the_image_out(store, bucket, with_corrupt):
    dataset, corrupt_key = with_corrupt
    good = sorted(i.key for i in dataset.split("train") if i.key != corrupt_key)
    stream = ImageStream(store, dataset, SMALL_INPUT, batch_size=2, threads=2, skip_corrupt=True)

    for _ in range(2):  # and again: still skipped, still reported once
        batches = list(stream.batches("train", shuffle=True, epoch=1))
        keys = [k for b in batches for k in b.keys]
        assert sorted(keys) == good
        assert sum(len(b.y) for b in batches) == sum(len(b.x) for b in batches) == len(good)
        assert stream.skipped == {corrupt_key}


def test_an_image_deleted_after_listing_fails_naming_it_even_with_skip_corrupt(store, bucket):
    root = f"s3://{bucket}/vanishing"
    upload(store, root, {"train": 3, "val": 1})
    dataset = list_dataset(store, root)
    gone = dataset.split("train")[1].key
    store.delete(f"s3://{bucket}/{gone}")  # deleted between listing and reading
    stream = ImageStream(store, dataset, SMALL_INPUT, batch_size=2, threads=2, skip_corrupt=True)

    with pytest.raises(DatasetChangedError) as err:
        list(stream.batches("train"))
    assert f"image s3://{bucket}/{gone} was listed when this task started but no longer exists" in str(err.value)
    assert "AirflowFailException" in [c.__name__ for c in type(err.value).__mro__]  # not retried

    # Scoring (tl_predict) has nothing to do with an image that is gone: skipped and counted, not corrupt.
    told = []
    stream = ImageStream(store, dataset, SMALL_INPUT, batch_size=2, threads=2, skip_missing=True,
                         on_corrupt=lambda item, reason: told.append(item.key))  # fmt: skip
    keys = [k for batch in stream.batches("train") for k in batch.keys]
    assert sorted(keys) == sorted(i.key for i in dataset.split("train") if i.key != gone)
    assert stream.missing == [gone] and told == [] and stream.skipped == set()


# --- caching and bounded memory ---------------------------------------------------------------------------------


def test_cache_spares_gets_on_the_next_pass(store, images):
    dataset, _ = images
    counting = CountingStore(store.client)
    n = len(dataset.split("train"))

    cached = ImageStream(counting, dataset, SMALL_INPUT, batch_size=4, threads=4, cache_bytes=10**8)
    _, first = one_pass(cached)
    assert len(counting.gets) == n
    _, second = one_pass(cached, shuffle=True, epoch=3)
    assert len(counting.gets) == n  # no new GETs
    assert all(torch.equal(first[k], second[k]) for k in first)

    counting.gets.clear()
    uncached = ImageStream(counting, dataset, SMALL_INPUT, batch_size=4, threads=4, cache_bytes=0)
    one_pass(uncached)
    one_pass(uncached)
    assert len(counting.gets) == 2 * n


def test_cache_stays_within_its_budget(store, images):
    dataset, _ = images
    items = dataset.split("train")
    budget = sum(sorted(i.size for i in items)[: len(items) // 2])  # room for about half the images
    counting = CountingStore(store.client)
    stream = ImageStream(counting, dataset, SMALL_INPUT, batch_size=4, threads=1, cache_bytes=budget)

    one_pass(stream)
    cached = set(stream._cache)
    assert 0 < len(cached) < len(items)
    assert stream._cached == sum(len(v) for v in stream._cache.values()) <= budget
    counting.gets.clear()
    one_pass(stream)
    assert len(counting.gets) == len(items) - len(cached)  # only what did not fit is fetched again


@pytest.mark.parametrize(("batch_size", "threads"), [(2, 1), (3, 2)])
def test_images_in_flight_never_exceed_the_window(store, images, batch_size, threads):
    dataset, _ = images
    stream = ImageStream(store, dataset, SMALL_INPUT, batch_size=batch_size, threads=threads)
    window = max(2 * batch_size, 4 * threads)
    total = len(dataset.split("train"))
    assert total > 2 * window  # otherwise there is nothing to bound

    lock = threading.Lock()
    counts = {"started": 0, "running": 0, "max_running": 0}
    load = stream._load

    def counted(*args):
        with lock:
            counts["started"] += 1
            counts["running"] += 1
            counts["max_running"] = max(counts["max_running"], counts["running"])
        try:
            return load(*args)
        finally:
            with lock:
                counts["running"] -= 1

    stream._load = counted
    yielded = 0
    ahead = []
    for batch in stream.batches("train"):
        yielded += len(batch.keys)
        time.sleep(0.05)  # a slow consumer: the loader must wait, not read ahead
        ahead.append(counts["started"] - yielded)
        assert counts["started"] <= yielded + window, (counts, yielded, window)
    assert yielded == total == counts["started"]
    assert window // 2 <= max(ahead) <= window  # it does read ahead while the consumer is slow, within the window
    assert counts["max_running"] <= threads


# --- real photos: formats, orientation, bit depth, the pixel limit ---------------------------------------------


def photo(fmt: str, image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def marked(size: int = 64) -> Image.Image:
    """White, with a red top-left quadrant: rotations and flips move it."""
    image = Image.new("RGB", (size, size), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, size // 2, size // 2))
    return image


def rotated_jpeg() -> bytes:
    """The marked image as a phone stores a portrait shot: rotated, with EXIF orientation 6 to undo it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return photo("JPEG", marked().transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes(), quality=95)


def grey16(value: int) -> Image.Image:
    return Image.fromarray(np.full((48, 64), value, dtype=np.uint16))


# key -> (bytes, the RGB every pixel of the top-left quadrant should have, the RGB of the bottom-right one)
PHOTOS = {
    "train/a/portrait.JPG": (rotated_jpeg(), (255, 0, 0), (255, 255, 255)),
    "train/a/scan16.png": (photo("PNG", grey16(40000)), (156, 156, 156), (156, 156, 156)),  # 40000 / 257
    "train/b/print.jpeg": (photo("JPEG", Image.new("CMYK", (64, 64), (0, 255, 255, 0)), quality=95), (255, 0, 0),
                           (255, 0, 0)),
    "train/b/scan16.TIF": (photo("TIFF", grey16(10280)), (40, 40, 40), (40, 40, 40)),  # 10280 / 257
    "val/a/old.BMP": (photo("BMP", marked()), (255, 0, 0), (255, 255, 255)),
    "val/b/icon.GIF": (photo("GIF", Image.new("P", (64, 64), 0), transparency=0), (255, 255, 255), (255, 255, 255)),
}  # fmt: skip


def test_real_photos_decode_as_a_viewer_shows_them(store, bucket):
    root = f"s3://{bucket}/photos"
    for rel, (data, _, _) in PHOTOS.items():
        store.put_bytes(f"{root}/{rel}", data)
    dataset = list_dataset(store, root)
    assert sorted(i.key.removeprefix("photos/") for i in dataset.items) == sorted(PHOTOS)  # upper-case names listed
    stream = ImageStream(store, dataset, SMALL_INPUT, batch_size=3, threads=4)
    _, tensors = one_pass(stream, ("train", "val"))
    mean, std = torch.tensor(SMALL_INPUT.mean)[:, None, None], torch.tensor(SMALL_INPUT.std)[:, None, None]
    half = SMALL_INPUT.crop_size // 2
    for rel, (_, top_left, bottom_right) in PHOTOS.items():
        rgb = tensors[f"photos/{rel}"] * std + mean  # back to 0..1
        for quadrant, expected in ((rgb[:, 2 : half - 2, 2 : half - 2], top_left), (rgb[:, -half + 2 :, -half + 2 :],
                                   bottom_right)):  # fmt: skip
            assert quadrant.mean(dim=(1, 2)) * 255 == pytest.approx(expected, abs=4), rel


def test_large_jpegs_are_decoded_at_reduced_size_and_match_a_full_decode(store, bucket):
    rng = np.random.default_rng(5)
    big = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).resize((1600, 1200), Image.BICUBIC)
    data = photo("JPEG", big, quality=90)
    root = f"s3://{bucket}/big"
    for rel in ("train/a/0.jpg", "train/b/1.jpg", "val/a/2.jpg", "val/b/3.jpg"):
        store.put_bytes(f"{root}/{rel}", data)
    stream = ImageStream(store, list_dataset(store, root), SMALL_INPUT, batch_size=2, threads=2)
    _, tensors = one_pass(stream)

    drafted = decode(data, "k", channels=3, max_pixels=10**9, min_side=decode_side(SMALL_INPUT, augment=False))
    assert drafted.size == (200, 150)  # 1/8 scale still leaves the 32 px the model needs
    full = to_pixels(Image.open(io.BytesIO(data)).convert("RGB"), SMALL_INPUT)
    for x in tensors.values():
        assert torch.equal(x, normalize(to_pixels(drafted, SMALL_INPUT), SMALL_INPUT))
        assert (normalize(full, SMALL_INPUT) - x).abs().mean() * 255 * SMALL_INPUT.std[0] < 1.5  # levels of 255


@pytest.fixture
def with_huge(store, bucket):
    root = f"s3://{bucket}/huge"
    for rel in ("train/a/0.png", "train/b/1.png", "val/a/2.png", "val/b/3.png", "train/b/4.png"):
        store.put_bytes(f"{root}/{rel}", photo("PNG", marked(64)))  # 4096 pixels
    store.put_bytes(f"{root}/train/a/huge.png", photo("PNG", marked(100)))  # 10000 pixels
    return list_dataset(store, root), "huge/train/a/huge.png"


def test_an_image_over_the_pixel_limit_is_refused_naming_it_and_the_limit(store, bucket, with_huge, monkeypatch):
    dataset, huge = with_huge
    monkeypatch.setenv("AIRFLOW__AIRFLOW_TL__MAX_IMAGE_PIXELS", "5000")
    stream = ImageStream(store, dataset, SMALL_INPUT, batch_size=2, threads=4)
    monkeypatch.setenv("AIRFLOW__AIRFLOW_TL__MAX_IMAGE_PIXELS", "20000")  # read once per stream: no effect now
    with pytest.raises(CorruptImagesError) as raised:
        one_pass(stream)
    message = str(raised.value)
    assert (
        f"s3://{bucket}/{huge} (100x100 is 10000 pixels, over the limit of 5000 ([airflow_tl] max_image_pixels))"
        in message
    )
    assert ": 1 train images cannot be decoded" in message  # only the huge one

    skipping = ImageStream(store, dataset, SMALL_INPUT, batch_size=2, threads=4, skip_corrupt=True)  # limit 20000
    assert huge in one_pass(skipping)[0]
    monkeypatch.setenv("AIRFLOW__AIRFLOW_TL__MAX_IMAGE_PIXELS", "5000")
    skipping = ImageStream(store, dataset, SMALL_INPUT, batch_size=2, threads=4, skip_corrupt=True)
    keys, _ = one_pass(skipping)
    assert huge not in keys and len(keys) == 3 and skipping.skipped == {huge}
