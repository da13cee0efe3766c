"""Images of a sharded dataset in the order a pass wants them: one GET per shard, shuffled within a bounded buffer.

A pass asks for some items (a split, or the part of one a rank or a comparison needs); only the shards holding
them are read, a few ahead of the one being consumed, each checked against the index before any of its images
is used (data/shards.py). Shuffling is WebDataset's: the shard order is shuffled, then samples pass through a
buffer of ``buffer`` images from which a seeded random one leaves as each new one arrives. Memory is bounded by
the shards ahead and the buffer, never by the dataset.

Each sample is checked against the listing the task holds (key, ETag, label and shard), and every wanted item
must turn up in the shard its index places it in: shards that disagree with their index are refused.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from airflow_tl.data.ahead import submitted_ahead
from airflow_tl.data.dataset import ImageItem
from airflow_tl.data.errors import ShardError
from airflow_tl.data.shards import Sample, ShardIndex, read_shard
from airflow_tl.storage.s3 import S3Store

# Shards fetched ahead of the one being consumed: enough to hide a GET, few enough to bound memory.
SHARDS_AHEAD = 2


def shards_of(items: Sequence[ImageItem]) -> list[int]:
    """The shards that hold ``items``, in the order their items come."""
    return list(dict.fromkeys(item.shard for item in items))


def rank_shards(shards: list[int], rank: int, size: int) -> list[int]:
    """A rank's shards of a pass: every ``size``-th of the pass's order, starting at its own."""
    return shards[rank::size]


def group_sizes(images: int, groups: int) -> list[int]:
    """``images`` spread as evenly as possible over ``groups`` batches (some empty when there are fewer images)."""
    return [images * (g + 1) // groups - images * g // groups for g in range(groups)]


def samples(
    store: S3Store,
    index: ShardIndex,
    items: Sequence[ImageItem],
    shards: list[int],
    *,
    rng: random.Random | None = None,
    buffer: int = 1000,
    ahead: int = SHARDS_AHEAD,
) -> Iterator[tuple[ImageItem, bytes]]:
    """``(item, encoded image)`` for every item of ``items`` in ``shards``, read in that order.

    Without ``rng`` the images come in shard order; with it they pass through a shuffle buffer of ``buffer``.
    """
    chosen = set(shards)
    wanted = {item.key: item for item in items if item.shard in chosen}
    stream = _checked(store, index, wanted, shards, max(1, ahead))
    yield from stream if rng is None else _shuffled(stream, rng, buffer)


def _checked(store, index: ShardIndex, wanted: dict[str, ImageItem], shards: list[int], ahead: int):
    expected = Counter(item.shard for item in wanted.values())
    with ThreadPoolExecutor(ahead, thread_name_prefix="airflow-tl-shards") as pool:
        read = functools.partial(read_shard, store, index)
        for position, future in submitted_ahead(pool, read, shards, ahead):
            contents = future.result()
            uri = index.shard_uri(position)
            found = 0
            for sample in contents:
                item = wanted.get(sample.key)
                if item is None:
                    continue
                _check(sample, item, position, uri)
                found += 1
                yield item, sample.data
            if found != expected[position]:
                raise _missing(wanted, contents, position, uri)
            del contents, future  # before waiting for the next: at most ``ahead`` + 1 shards in memory


def _missing(wanted: dict[str, ImageItem], contents: list[Sample], position: int, uri: str) -> ShardError:
    seen = {sample.key for sample in contents}
    absent = sorted(key for key, item in wanted.items() if item.shard == position and key not in seen)
    return ShardError(
        f"Shard {uri} disagrees with its index, which places {len(absent)} images in it that it does not hold "
        f"(e.g. {', '.join(absent[:3])}). Prepare the shards again."
    )


def _check(sample: Sample, item: ImageItem, position: int, uri: str) -> None:
    if item.shard != position or sample.etag != item.etag or sample.label != item.label:
        raise ShardError(
            f"Shard {uri} disagrees with its index: sample {sample.name} ({sample.key}, ETag {sample.etag}, label "
            f"{sample.label}) is listed as ETag {item.etag}, label {item.label} in shard "
            f"{item.shard}. Prepare the shards again."
        )


def _shuffled(stream: Iterator[tuple[ImageItem, bytes]], rng: random.Random, buffer: int):
    """WebDataset's shuffle: hold ``buffer`` samples; each arrival sends a random held one on."""
    held: list[tuple[ImageItem, bytes]] = []
    for sample in stream:
        if len(held) < buffer:
            held.append(sample)
            continue
        pick = rng.randrange(len(held))
        held[pick], sample = sample, held[pick]
        yield sample
    rng.shuffle(held)
    yield from held
