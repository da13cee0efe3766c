"""Listing and splitting a dataset prefix of 100,000 images on a local S3 endpoint: time and memory.

Prints:

- ``BENCH listing_100k_s <seconds>``: ``list_dataset`` over a class-folder prefix of 100,000 objects (100 classes
  of 1,000), which lists the class folders 8 at a time (ListObjectsV2, 1,000 keys a page), places every key
  in its class, splits it by its key's hash and checks the split. Best of 3, each in a fresh process.
- ``BENCH listing_100k_rss_mb <MB>``: the peak resident memory of that process, everything included (Python,
  Airflow's and boto3's imports, the listing). Context lines split the time between the endpoint's pages and
  our own work, give the memory the listing adds (resident before and after, the dataset held), per object,
  and what that makes for 10 M objects.

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


def rss_kb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() // 1024


class Timed:
    # The store, with the time its listing (the ListObjectsV2 pages) took.
    def __init__(self, store):
        self.store, self.seconds = store, 0.0

    def list(self, root, **kwargs):
        started = time.monotonic()
        try:
            return self.store.list(root, **kwargs)
        finally:
            self.seconds += time.monotonic() - started


store = Timed(s3_store("aws_default"))
# The client's first request (connection, credentials) is not the listing's.
store.store.list(sys.argv[1] + "/class-000")
before = rss_kb()
started = time.monotonic()
dataset = list_dataset(store, sys.argv[1], layout="classes")
seconds = time.monotonic() - started
after = rss_kb()
# VmHWM, not ru_maxrss: Linux folds the RSS of the process that exec()ed this one (the benchmark, holding
# 100,000 keys it PUT) into ru_maxrss, which then reports the parent's peak instead of this listing's.
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "list_seconds": store.seconds, "peak_kb": peak, "before_kb": before,
                  "after_kb": after, "items": len(dataset.items), "counts": dataset.counts()}))
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
    added_mb = (best["after_kb"] - best["before_kb"]) / 1024
    per_object = added_mb * 2**20 / best["items"]
    ours = best["seconds"] - best["list_seconds"]
    times = ", ".join(f"{r['seconds']:.1f}" for r in runs)
    print(f"runs (s): {times}; split {best['counts']}")
    print(
        f"best run: {best['list_seconds']:.1f} s in the store's listing (ListObjectsV2 pages from the endpoint, "
        f"parsed by botocore), {ours:.1f} s placing, splitting and checking the images"
    )
    print(
        f"memory: {best['before_kb'] / 1024:.0f} MB resident before listing (Python, Airflow, boto3), "
        f"{best['after_kb'] / 1024:.0f} MB with the dataset held: +{added_mb:.0f} MB, {per_object:.0f} B per object"
    )
    print(
        f"10 M objects, growing linearly: ~{per_object * 10_000_000 / 2**30:.1f} GB held, {ours * 100:.0f} s of our "
        "own work; the pages' time is the endpoint's (moto scans every key of the bucket for each request)"
    )
    print(f"BENCH listing_100k_s {best['seconds']:.1f}")
    print(f"BENCH listing_100k_rss_mb {peak_mb:.0f}")


if __name__ == "__main__":
    main()
