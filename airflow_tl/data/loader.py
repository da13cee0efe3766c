"""Streaming batches of images from S3: parallel GETs, decoding, preprocessing, bounded memory.

At most ``window`` images are in flight or waiting at any time, so memory does not grow with the
dataset. Threads fetch, decode, resize and crop (Pillow and the socket release the GIL); each batch
is normalised once, as uint8 pixels turned float in one op. Encoded bytes may be kept between epochs
up to ``cache_bytes`` to spare repeated GETs. Decoding is ``airflow_tl.data.decode``: large JPEGs at
reduced size, and the pixel limit ``[airflow_tl] max_image_pixels``, read once per stream.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from airflow_tl import settings
from airflow_tl.data.dataset import DatasetChangedError, DatasetError, ImageDataset, ImageItem
from airflow_tl.data.decode import ImageDecodeError, decode
from airflow_tl.data.preprocess import decode_side, normalize, to_pixels
from airflow_tl.exceptions import ObjectNotFoundError
from airflow_tl.models.card import InputSpec
from airflow_tl.storage.s3 import S3Store

log = logging.getLogger(__name__)


class CorruptImagesError(DatasetError):
    """Images that cannot be decoded; the message lists their keys and why."""


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    keys: list[str]
    split: str = ""


@dataclass
class StreamStats:
    images: int = 0
    corrupt: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    bytes_read: int = 0


class ImageStream:
    """Batches of one split of an ``ImageDataset``, preprocessed as the model card says."""

    def __init__(
        self,
        store: S3Store,
        dataset: ImageDataset,
        spec: InputSpec,
        *,
        batch_size: int = 64,
        threads: int = 8,
        skip_corrupt: bool = False,
        cache_bytes: int = 0,
    ) -> None:
        self.store = store
        self.dataset = dataset
        self.spec = spec
        self.batch_size = batch_size
        self.threads = threads
        self.skip_corrupt = skip_corrupt
        self.cache_bytes = cache_bytes
        self._cache: dict[str, bytes] = {}
        self._cached = 0
        self.skipped: set[str] = set()  # corrupt keys skipped so far, over all passes
        # Read once, here: every thread of every pass applies the same limit.
        self.max_pixels = settings.get_int("max_image_pixels")

    def batches(
        self,
        split: str | tuple[str, ...],
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        augment: bool = False,
    ) -> Iterator[Batch]:
        """One pass over one split, or several in a row (prefetching across their boundary; no batch
        mixes splits). Raises CorruptImagesError at the end when images failed to decode."""
        splits = (split,) if isinstance(split, str) else tuple(split)
        items = []
        for name in splits:
            part = self.dataset.split(name)
            if shuffle:
                random.Random(f"{seed}:{epoch}").shuffle(part)
            items += part
        split = "/".join(splits)
        stats = StreamStats()
        window = max(2 * self.batch_size, 4 * self.threads)
        pending: deque[tuple[ImageItem, Future]] = deque()
        xs: list[torch.Tensor] = []
        ys: list[int] = []
        keys: list[str] = []
        current = splits[0]
        with ThreadPoolExecutor(self.threads, thread_name_prefix="airflow-tl-images") as pool:
            queue = iter(items)
            for item in queue:
                pending.append((item, pool.submit(self._load, item, seed, epoch, augment)))
                if len(pending) >= window:
                    break
            while pending:
                item, future = pending.popleft()
                nxt = next(queue, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(self._load, nxt, seed, epoch, augment)))
                tensor, size, reason = future.result()
                stats.bytes_read += size
                if tensor is None:
                    stats.corrupt.append(item.key)
                    stats.reasons[item.key] = reason
                    continue
                if xs and item.split != current:
                    yield self._batch(xs, ys, keys, current)
                    xs, ys, keys = [], [], []
                current = item.split
                stats.images += 1
                xs.append(tensor)
                ys.append(item.label)
                keys.append(item.key)
                if len(xs) == self.batch_size:
                    yield self._batch(xs, ys, keys, current)
                    xs, ys, keys = [], [], []
        if xs:
            yield self._batch(xs, ys, keys, current)
        self._finish(split, stats)

    def _batch(self, pixels: list[torch.Tensor], labels: list[int], keys: list[str], split: str) -> Batch:
        return Batch(normalize(torch.stack(pixels), self.spec), torch.tensor(labels), keys, split)

    def _finish(self, split: str, stats: StreamStats) -> None:
        if not stats.corrupt:
            return
        if not self.skip_corrupt:
            shown = "; ".join(f"s3://{self.dataset.bucket}/{k} ({stats.reasons[k]})" for k in stats.corrupt[:20])
            more = f" and {len(stats.corrupt) - 20} more" if len(stats.corrupt) > 20 else ""
            raise CorruptImagesError(
                f"Dataset {self.dataset.uri}: {len(stats.corrupt)} {split} images cannot be decoded: {shown}{more}. "
                "Fix or remove them, or set skip_corrupt=True to leave them out."
            )
        new = set(stats.corrupt) - self.skipped
        self.skipped |= new
        if new:
            first = stats.corrupt[0]
            log.warning(
                "Skipped %d corrupt %s images of %s (e.g. %s: %s)",
                len(new),
                split,
                self.dataset.uri,
                first,
                stats.reasons[first],
            )

    def _get(self, item: ImageItem) -> bytes:
        uri = f"s3://{self.dataset.bucket}/{item.key}"
        try:
            return self.store.get_bytes(uri)
        except ObjectNotFoundError:
            raise DatasetChangedError(
                f"Dataset {self.dataset.uri}: image {uri} was listed when this task started but no longer exists; "
                "the dataset changed while the task ran. Run it again once the data is stable."
            ) from None

    def _load(self, item: ImageItem, seed: int, epoch: int, augment: bool) -> tuple[torch.Tensor | None, int, str]:
        """One image as uint8 pixels, the bytes read, and why it could not be decoded (pixels None)."""
        data = self._cache.get(item.key)
        if data is None:
            data = self._get(item)
            if self._cached + len(data) <= self.cache_bytes:
                self._cache[item.key] = data
                self._cached += len(data)
        try:
            image = decode(
                data,
                item.key,
                channels=self.spec.channels,
                max_pixels=self.max_pixels,
                min_side=decode_side(self.spec, augment),
            )
        except ImageDecodeError as exc:
            return None, len(data), exc.reason
        rng = random.Random(f"{seed}:{epoch}:{item.key}") if augment else None
        return to_pixels(image, self.spec, augment=rng), len(data), ""
