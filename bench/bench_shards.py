"""An epoch of 20,000 small images from tar shards against one S3 object per image, side by side on local S3.

Prints:

- ``BENCH shards_vs_objects_throughput <ratio>``: images/s of an epoch (every image of every split fetched,
  decoded, resized, cropped and normalised into batches of 64, as training and extraction read them, with 8
  threads) from the sharded form (``<prefix>/shards``, one GET per shard) divided by images/s of the same epoch
  from the class folders (one GET per image). The two are measured alternately, twice each; the best of each.
  Goal >= 3.

Context lines give each side's images/s and GETs, the time ``prepare_shards`` took (its own listing and one GET
per image included), and the time to open each form (a listing of 20,000 objects against one index and one
manifest). The images: 10 classes of 2,000 JPEGs of 64x64 px (about 2 KB), in ``<class>/<image>`` folders split by
key hash; crops of 56 px. Lines not starting with BENCH are context; progress goes to stderr.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

BUCKET = "tl-bench-shards"
PREFIX = f"s3://{BUCKET}/photos"
CLASSES, PER_CLASS, SIDE = 10, 2_000, 64


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def jpeg(n: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(n)
    pixels = (rng.random((SIDE, SIDE, 3)) * 64 + (n % 7) * 24).astype("uint8")  # texture: realistic sizes
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def populate(store) -> int:
    folder = PREFIX.split("/", 3)[3]
    jobs = [
        (f"{folder}/class-{c:02d}/img-{i:05d}.jpg", c * PER_CLASS + i) for c in range(CLASSES) for i in range(PER_CLASS)
    ]
    total = 0
    started = time.monotonic()

    def put(job: tuple[str, int]) -> int:
        body = jpeg(job[1])
        store.client.put_object(Bucket=BUCKET, Key=job[0], Body=body)
        return len(body)

    with ThreadPoolExecutor(32) as pool:
        for done, size in enumerate(pool.map(put, jobs), start=1):
            total += size
            if done % 5_000 == 0:
                note(f"  {done:,} images PUT ({done / (time.monotonic() - started):.0f}/s)")
    return total


class Counting:
    """The store, counting GETs."""

    def __init__(self, store) -> None:
        self.store, self.gets, self._lock = store, 0, threading.Lock()

    def get_bytes(self, uri):
        with self._lock:
            self.gets += 1
        return self.store.get_bytes(uri)

    def __getattr__(self, name):
        return getattr(self.store, name)


def epoch(store, dataset, spec) -> tuple[float, int, int]:
    """images/s, images and GETs of one shuffled pass over every split."""
    from airflow_tl.data.loader import ImageStream

    counting = Counting(store)
    stream = ImageStream(counting, dataset, spec, batch_size=64, threads=8)
    started = time.monotonic()
    images = sum(len(batch.y) for batch in stream.batches(("train", "val", "test"), shuffle=True, seed=0, epoch=1))
    return images / (time.monotonic() - started), images, counting.gets


def main() -> None:
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="tl-bench-airflow-"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    from airflow_tl.demo.local_s3 import start_local_s3

    server = start_local_s3()
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = server.connection_uri()  # before anything imports Airflow
    try:
        from airflow_tl.data.dataset import list_dataset
        from airflow_tl.data.shard_writer import prepare_shards
        from airflow_tl.hooks.s3 import s3_store
        from airflow_tl.models.card import InputSpec

        store = s3_store("aws_default")
        store.ensure_bucket(BUCKET)
        note(f"PUT {CLASSES * PER_CLASS:,} JPEGs under {PREFIX} ...")
        total = populate(store)
        started = time.monotonic()
        result = prepare_shards(store, PREFIX)
        prepared_s = time.monotonic() - started
        started = time.monotonic()
        objects = list_dataset(store, PREFIX)
        list_s = time.monotonic() - started
        started = time.monotonic()
        shards = list_dataset(store, f"{PREFIX}/shards")
        open_s = time.monotonic() - started
        spec = InputSpec(crop_size=56, resize_size=64)
        runs: dict[str, list[tuple[float, int, int]]] = {"objects": [], "shards": []}
        for round_ in range(2):
            for name, dataset in (("objects", objects), ("shards", shards)):
                runs[name].append(epoch(store, dataset, spec))
                note(f"  round {round_ + 1}, {name}: {runs[name][-1][0]:.0f} images/s")
    finally:
        server.stop()
    best = {name: max(r, key=lambda run: run[0]) for name, r in runs.items()}
    assert best["objects"][1] == best["shards"][1] == CLASSES * PER_CLASS, best
    size_kb = total / CLASSES / PER_CLASS / 1024
    print(f"images: {CLASSES * PER_CLASS:,} JPEGs of {SIDE}x{SIDE} px, {size_kb:.1f} KB each")
    print(
        f"prepare_shards: {prepared_s:.1f} s ({result.shards} shards, {result.bytes / 1e6:.1f} MB); opening: "
        f"listing the objects {list_s:.1f} s, reading the index and manifest {open_s:.2f} s"
    )
    for name, (rate, images, gets) in best.items():
        everyone = ", ".join(f"{r[0]:.0f}" for r in runs[name])
        print(f"{name}: {rate:.0f} images/s (runs: {everyone}), {images:,} images in {gets:,} GETs")
    print(f"BENCH shards_vs_objects_throughput {best['shards'][0] / best['objects'][0]:.2f}")


if __name__ == "__main__":
    main()
