"""Streaming batches of images from S3: parallel GETs, decoding, preprocessing, bounded memory.

At most ``window`` images are in flight or waiting at any time, so memory does not grow with the
dataset. Threads fetch, decode, resize and crop (Pillow and the socket release the GIL); each batch
is normalised once, as uint8 pixels turned float in one op. Encoded bytes may be kept between epochs
up to ``cache_bytes`` to spare repeated GETs. Decoding is ``airflow_tl.data.decode``: large JPEGs at
reduced size, and the pixel limit ``[airflow_tl] max_image_pixels``, read once per stream.

A sharded dataset (data/shards.py) is read a whole shard per GET instead (data/shard_reader.py), shuffled
within a buffer of ``shuffle_buffer`` images rather than as a whole; decoding is the same.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from airflow_tl import settings
from airflow_tl.data.ahead import submitted_ahead
from airflow_tl.data.dataset import DatasetChangedError, DatasetError, ImageDataset, ImageItem
from airflow_tl.data.decode import ImageDecodeError, decode
from airflow_tl.data.preprocess import decode_side, normalize, to_pixels
from airflow_tl.data.shard_reader import group_sizes, rank_shards, shards_of
from airflow_tl.data.shard_reader import samples as shard_samples
from airflow_tl.exceptions import ObjectNotFoundError
from airflow_tl.models.card import InputSpec
from airflow_tl.storage.s3 import S3Store

log = logging.getLogger(__name__)


_GONE = "deleted after the listing"  # the reason of an image skipped by skip_missing, told apart by identity


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


def strided(count: int, batch_size: int, shard: tuple[int, int]) -> list[list[int]]:
    """The positions rank ``r`` of ``W`` takes from each global batch of ``count`` items: r, r+W, ... of each.

    One list per global batch, in order, some possibly empty (a last batch smaller than W): every rank gets the
    same number of lists, so ranks training together step together.
    """
    rank, size = shard
    return [list(range(start + rank, min(start + batch_size, count), size)) for start in range(0, count, batch_size)]


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
        shuffle_buffer: int = 1000,
        on_corrupt: Callable[[ImageItem, str], None] | None = None,
        skip_missing: bool = False,
    ) -> None:
        self.store = store
        self.dataset = dataset
        self.spec = spec
        self.batch_size = batch_size
        self.threads = threads
        self.skip_corrupt = skip_corrupt
        self.cache_bytes = cache_bytes  # objects only: a sharded dataset reads whole shards each pass
        self.shuffle_buffer = shuffle_buffer
        self._cache: dict[str, bytes] = {}
        self._cached = 0
        self.skipped: set[str] = set()  # corrupt keys skipped so far, over all passes
        # Told of each image that cannot be decoded (item, reason) as the pass meets it, so a caller writing as
        # it goes (tl_predict's rejects) need not wait for the end of the pass; raising from it stops the pass.
        self.on_corrupt = on_corrupt
        # An image deleted after the listing: an error (DatasetChangedError) for training and evaluation, which
        # must see the listing they recorded; skipped with a warning where there is nothing to score (tl_predict).
        self.skip_missing = skip_missing
        self.missing: list[str] = []
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
        shard: tuple[int, int] | None = None,
    ) -> Iterator[Batch]:
        """One pass over one split, or several in a row (prefetching across their boundary; no batch
        mixes splits). Raises CorruptImagesError at the end when images failed to decode.

        ``shard=(rank, size)``: this rank's slice of each global batch of ``batch_size`` images of the same order
        (``strided``), one batch per global batch, however many images it holds (none,
        when the last global batch has fewer than ``size``): ranks that train together step together. From a
        sharded dataset a rank reads its own shards instead, in as many batches (``_from_shards``).
        """
        splits = (split,) if isinstance(split, str) else tuple(split)
        stats = StreamStats()
        if self.dataset.shards is not None:
            groups, sources = self._from_shards(splits, shuffle, seed, epoch, shard)
        else:
            groups, sources = self._from_objects(splits, shuffle, seed, epoch, shard)
        if shard is not None:
            yield from self._grouped(groups, sources, seed, epoch, augment, stats)
        else:
            yield from self._packed(sources, seed, epoch, augment, stats)
        self._finish("/".join(splits), stats)

    def _from_objects(self, splits, shuffle: bool, seed: int, epoch: int, shard: tuple[int, int] | None):
        """The images in pass order (one GET each, in threads), and with ``shard`` the rank's batch sizes."""
        groups: list[tuple[str, int]] = []
        items: list[ImageItem] = []
        for name in splits:
            part = self.dataset.split(name)
            if shuffle:
                random.Random(f"{seed}:{epoch}").shuffle(part)
            if shard is None:
                items += part
                continue
            for positions in strided(len(part), self.batch_size, shard):
                groups.append((name, len(positions)))
                items += [part[i] for i in positions]
        return groups, ((item, None) for item in items)

    def _from_shards(self, splits, shuffle: bool, seed: int, epoch: int, shard: tuple[int, int] | None):
        """The images in pass order from whole shards, and with ``shard=(rank, size)`` the rank's batch sizes.

        Ranks take every ``size``-th shard of the pass's shard order; each spreads its images over as many
        batches as one process would take (``ceil(images / batch_size)``), so all step together through the same
        schedule, their batches adding up to the global batch.
        """
        rng = random.Random(f"{seed}:{epoch}") if shuffle else None
        groups: list[tuple[str, int]] = []
        streams = []
        for name in splits:
            items = self.dataset.split(name)
            shards = shards_of(items)
            if rng is not None:
                rng.shuffle(shards)
            if shard is not None:
                shards = rank_shards(shards, *shard)
                chosen = set(shards)
                mine = sum(1 for item in items if item.shard in chosen)
                steps = -(-len(items) // self.batch_size)
                groups += [(name, n) for n in group_sizes(mine, steps)]
            streams.append(
                shard_samples(self.store, self.dataset.shards, items, shards, rng=rng, buffer=self.shuffle_buffer)
            )
        return groups, itertools.chain.from_iterable(streams)

    def _packed(self, sources, seed: int, epoch: int, augment: bool, stats: StreamStats):
        """Batches of ``batch_size`` decoded images (a corrupt one skipped makes room for the next)."""
        current = ""
        xs: list[torch.Tensor] = []
        ys: list[int] = []
        keys: list[str] = []
        for item, tensor in self._decoded(sources, seed, epoch, augment, stats):
            if tensor is None:
                continue
            if xs and item.split != current:
                yield self._batch(xs, ys, keys, current)
                xs, ys, keys = [], [], []
            current = item.split
            xs.append(tensor)
            ys.append(item.label)
            keys.append(item.key)
            if len(xs) == self.batch_size:
                yield self._batch(xs, ys, keys, current)
                xs, ys, keys = [], [], []
        if xs:
            yield self._batch(xs, ys, keys, current)

    def _grouped(self, groups, sources, seed: int, epoch: int, augment: bool, stats: StreamStats):
        """One batch per ``(split, size)`` group: the next ``size`` images, decoded (corrupt ones left out)."""
        with contextlib.closing(self._decoded(sources, seed, epoch, augment, stats)) as decoded:
            for name, size in groups:
                xs: list[torch.Tensor] = []
                ys: list[int] = []
                keys: list[str] = []
                for item, tensor in itertools.islice(decoded, size):
                    if tensor is not None:
                        xs.append(tensor)
                        ys.append(item.label)
                        keys.append(item.key)
                yield self._batch(xs, ys, keys, name)

    def _decoded(self, sources, seed: int, epoch: int, augment: bool, stats: StreamStats):
        """``(item, uint8 pixels)`` in order, None for an image that cannot be decoded (its reason in ``stats``).

        ``sources`` yields ``(item, encoded bytes or None)``; None is fetched here. Threads fetch and decode
        ahead, at most ``window`` images in flight or waiting, so memory does not grow with the dataset.
        """
        window = max(2 * self.batch_size, 4 * self.threads)

        def load(source: tuple[ImageItem, bytes | None]):
            return self._load(*source, seed, epoch, augment)

        with ThreadPoolExecutor(self.threads, thread_name_prefix="airflow-tl-images") as pool:
            for (item, _), future in submitted_ahead(pool, load, sources, window):
                tensor, size, reason = future.result()
                stats.bytes_read += size
                if reason is _GONE:
                    self.missing.append(item.key)
                    log.warning("Skipped s3://%s/%s: deleted after the listing", self.dataset.bucket, item.key)
                elif tensor is None:
                    stats.corrupt.append(item.key)
                    stats.reasons[item.key] = reason
                    if self.on_corrupt is not None:
                        self.on_corrupt(item, reason)
                else:
                    stats.images += 1
                yield item, tensor

    def _batch(self, pixels: list[torch.Tensor], labels: list[int], keys: list[str], split: str) -> Batch:
        if not pixels:  # a rank's empty share of a global batch: no images, the right shape
            size = self.spec.crop_size
            empty = torch.empty((0, self.spec.channels, size, size), dtype=torch.uint8)
            return Batch(normalize(empty, self.spec), torch.empty(0, dtype=torch.int64), [], split)
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

    def _load(
        self, item: ImageItem, data: bytes | None, seed: int, epoch: int, augment: bool
    ) -> tuple[torch.Tensor | None, int, str]:
        """One image as uint8 pixels, the bytes read, and why it could not be decoded (pixels None).

        ``data``: the encoded image when a shard brought it; None to GET it (or take it from the cache).
        """
        data = data if data is not None else self._cache.get(item.key)
        if data is None:
            try:
                data = self._get(item)
            except DatasetChangedError:
                if self.skip_missing:
                    return None, 0, _GONE
                raise
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
