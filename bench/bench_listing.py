"""Listing and splitting a dataset prefix of 100,000 images on a local S3 endpoint: time and memory.

Prints:

- ``BENCH listing_100k_s <seconds>``: ``list_dataset`` over a class-folder prefix of 100,000 objects (100 classes
  of 1,000), which pages through ListObjectsV2 1,000 keys at a time, places every key in its class, splits
  it by its key's hash and checks the split. Best of 3, each in a fresh process.
- ``BENCH listing_100k_rss_mb <MB>``: the peak resident memory of that process, everything included (Python,
  Airflow's and boto3's imports, the listing). Context lines give the part the listing adds over the same
  process before it, per object, and what that makes for 10 M objects.

The objects are empty (a listing reads keys, ETags and sizes, never contents), PUT 32 at a time. Lines not
starting with BENCH are context; progress goes to stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

BUCKET = "tl-bench-listing"
CLASSES, PER_CLASS = 100, 1_000
PREFIX = f"s3://{BUCKET}/datasets/flat"

# Runs in a fresh interpreter, so imports and the listing are all that is in its memory.
CHILD = """
import json, resource, sys, time
from airflow_tl.data.dataset import list_dataset
from airflow_tl.hooks.s3 import s3_store

store = s3_store("aws_default")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.monotonic()
dataset = list_dataset(store, sys.argv[1], layout="classes")
seconds = time.monotonic() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_kb": peak, "before_kb": before, "items": len(dataset.items),
                  "counts": dataset.counts()}))
"""


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def populate(store) -> None:
    folder = PREFIX.split("/", 3)[3]
    keys = [f"{folder}/class-{c:03d}/img-{i:05d}.jpg" for c in range(CLASSES) for i in range(PER_CLASS)]
    started = time.monotonic()

    def put(key: str) -> None:
        store.client.put_object(Bucket=BUCKET, Key=key, Body=b"")

    with ThreadPoolExecutor(32) as pool:
        for done, _ in enumerate(pool.map(put, keys), start=1):
            if done % 20_000 == 0:
                note(f"  {done:,} objects PUT ({done / (time.monotonic() - started):.0f}/s)")


def measure() -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, PREFIX], capture_output=True, text=True, env=os.environ)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="tl-bench-airflow-"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    from airflow_tl.demo.local_s3 import start_local_s3

    server = start_local_s3()
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = server.connection_uri()  # before anything imports Airflow
    try:
        from airflow_tl.hooks.s3 import s3_store

        store = s3_store("aws_default")
        store.ensure_bucket(BUCKET)
        note(f"PUT {CLASSES * PER_CLASS:,} empty objects under {PREFIX} ...")
        populate(store)
        runs = [measure() for _ in range(3)]
    finally:
        server.stop()
    best = min(runs, key=lambda r: r["seconds"])
    assert best["items"] == CLASSES * PER_CLASS, best
    peak_mb = max(r["peak_kb"] for r in runs) / 1024
    added_mb = (best["peak_kb"] - best["before_kb"]) / 1024
    per_object = added_mb * 2**20 / best["items"]
    times = ", ".join(f"{r['seconds']:.1f}" for r in runs)
    print(f"runs (s): {times}; split {best['counts']}")
    before_mb = best["before_kb"] / 1024
    print(f"memory: {before_mb:.0f} MB before listing, +{added_mb:.0f} MB for it ({per_object:.0f} B/object)")
    print(
        f"10 M objects: ~{best['seconds'] * 100 / 60:.0f} min and ~{per_object * 10_000_000 / 2**30:.1f} GB more, "
        "by linear growth (one ListObjectsV2 page per 1,000 keys; every key, ETag and split is held)"
    )
    print(f"BENCH listing_100k_s {best['seconds']:.1f}")
    print(f"BENCH listing_100k_rss_mb {peak_mb:.0f}")


if __name__ == "__main__":
    main()
