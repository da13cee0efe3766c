"""Feature extraction and head training against the plain-PyTorch floor, on a local S3 endpoint.

Prints:

- ``BENCH extract_vs_raw_torch <ratio>``: images/s of ``extract_features``' streaming loop (its own
  ``images_per_s``; ``extract_call_vs_raw_torch`` is the whole call, one-time model loading included),
  reading 256px JPEGs from S3 (ResNet-18 at 224) over images/s of a bare ``inference_mode`` loop over the
  same images already decoded and preprocessed in memory: same model, batch size and torch thread count.
  Best of 3 for each side (run-by-run ratios are printed too); every extraction is a cache miss (a fresh
  ``features_root``).
- ``BENCH extract_vs_raw_torch_small <ratio>``: the same for the demo's 8x8 grayscale digit PNGs at 32x32
  input, where the network is cheap and fetching/decoding dominates.
- ``BENCH head_epoch_speedup <ratio>``: seconds of one epoch (train + validation) streaming images through
  the frozen backbone (``freeze_layers`` = every block) over seconds of one epoch of the same head on
  cached features. The image path is the last epoch of ``train(..., epochs=2)``; the features path is
  ``train(..., features_uri=..., epochs=2)`` too, but its history rounds to 0.01 s, so the ratio uses the
  median of repeated epochs of the same loop (``train_one_epoch`` + ``evaluate`` over ``TensorBatches``).
- ``BENCH extract_peak_rss_growth_4x <ratio>``: peak RSS of a fresh process extracting 4N images over one
  extracting N images (128px JPEGs): memory must not grow with the dataset.

Lines not starting with BENCH are context; progress goes to stderr.
"""

from __future__ import annotations

import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

BUCKET = "tl-bench"
BATCH_SIZE = 64
LARGE_CLASSES = ("amber", "cobalt", "moss")
LARGE_PER_CLASS_SPLIT = 20  # 3 classes x 20 x {train,val,test} = 180 JPEGs of 256x256
RSS_N = 200  # and 4 * RSS_N, 128x128 JPEGs
REPEATS = 3
HEAD_EPOCH_REPEATS = 30

_STARTED = time.monotonic()


def note(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def smooth_jpeg(rng: np.random.Generator, size: int, label: int, quality: int = 90) -> bytes:
    """A smooth random RGB pattern (coarse + finer structure), tinted by class, as a JPEG."""
    coarse = rng.random((4, 4, 3))
    coarse[..., label % 3] += 0.8
    fine = rng.random((size // 8, size // 8, 3))
    up = [
        np.asarray(Image.fromarray((a / a.max() * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
        for a in (coarse, fine)
    ]
    pixels = (0.75 * up[0] + 0.25 * up[1]).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def upload(store, blobs: dict[str, bytes], content_type: str) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: store.put_bytes(kv[0], kv[1], content_type=content_type), blobs.items()))


def split_layout_jpegs(prefix: str, classes, per_class_split: int, size: int, seed: int) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {
        f"{prefix}/{split}/{name}/{i:04d}.jpg": smooth_jpeg(rng, size, label)
        for split in ("train", "val", "test")
        for label, name in enumerate(classes)
        for i in range(per_class_split)
    }


def flat_layout_jpegs(prefix: str, classes, total: int, size: int, seed: int) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {
        f"{prefix}/{classes[i % len(classes)]}/{i:05d}.jpg": smooth_jpeg(rng, size, i % len(classes))
        for i in range(total)
    }


def publish(store, uri: str, spec) -> None:
    """ResNet-18 with random weights (seed 0), as a model zoo would hold it."""
    import torch

    from airflow_tl.models.architectures import build_model, describe_blocks, head_prefixes
    from airflow_tl.models.card import ModelCard
    from airflow_tl.models.folder import save_model_folder

    torch.manual_seed(0)
    classes = ["c0", "c1", "c2", "c3", "c4"]
    card = ModelCard(
        architecture="resnet18",
        class_names=classes,
        input=spec,
        blocks=describe_blocks("resnet18"),
        head=list(head_prefixes("resnet18")),
        lineage={"source": "bench"},
    )
    save_model_folder(store, uri, build_model("resnet18", len(classes)).state_dict(), card)


# --- extraction vs raw torch ---------------------------------------------------------------------


def preloaded_batches(store, dataset, spec, batch_size: int) -> list:
    """The dataset fetched, decoded and preprocessed up front, batched per split as ImageStream does."""
    import torch

    from airflow_tl.data.dataset import SPLITS
    from airflow_tl.data.preprocess import preprocess

    def load(item):
        image = Image.open(io.BytesIO(store.get_bytes(f"s3://{dataset.bucket}/{item.key}")))
        image.load()
        return preprocess(image, spec)

    batches = []
    with ThreadPoolExecutor(16) as pool:
        for split in SPLITS:
            tensors = list(pool.map(load, dataset.split(split)))
            batches += [torch.stack(tensors[i : i + batch_size]) for i in range(0, len(tensors), batch_size)]
    return batches


def raw_images_per_s(model, batches) -> float:
    import torch

    images = sum(len(b) for b in batches)
    started = time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            model(x).float()
    return images / (time.perf_counter() - started)


def stream_only_images_per_s(store, dataset, spec, batch_size: int) -> float:
    """ImageStream alone (GET + decode + preprocess, no network): the I/O side's ceiling."""
    from airflow_tl.data.dataset import SPLITS
    from airflow_tl.data.loader import ImageStream

    stream = ImageStream(store, dataset, spec, batch_size=batch_size)
    started, images = time.perf_counter(), 0
    for split in SPLITS:
        for batch in stream.batches(split):
            images += len(batch.y)
    return images / (time.perf_counter() - started)


def compare_extraction(store, tag: str, model_uri: str, dataset_uri: str) -> tuple[float, str | None]:
    """Best-of-REPEATS images/s of extraction over best-of-REPEATS of the raw loop.

    Returns (streaming ratio, whole-call ratio, features uri). The streaming rate is extract_features' own
    images_per_s: from the first image requested to the last feature computed, the part that scales with
    the dataset. The whole call adds one-time work (model download and build, listing the cache).
    """
    import torch

    from airflow_tl.data.dataset import list_dataset
    from airflow_tl.features.backbone import as_feature_extractor
    from airflow_tl.features.extract import extract_features
    from airflow_tl.models.folder import instantiate, load_model_folder

    dataset = list_dataset(store, dataset_uri)
    state_dict, card = load_model_folder(store, model_uri)
    model, _ = as_feature_extractor(instantiate(card, state_dict, source=model_uri), card.architecture)
    batches = preloaded_batches(store, dataset, card.input, BATCH_SIZE)
    images = sum(len(b) for b in batches)
    note(f"{tag}: {images} images preloaded as {len(batches)} batches of {tuple(batches[0].shape[1:])}; warming up")
    with torch.inference_mode():
        for batch in {tuple(b.shape): b for b in batches}.values():
            model(batch)  # one batch of every shape, so oneDNN has built its kernels before timing

    ours, raw, rates, first_uri = [], [], [], None
    for run in range(REPEATS):
        started = time.perf_counter()
        result = extract_features(
            store,
            model_uri=model_uri,
            dataset=dataset,
            features_root=f"s3://{BUCKET}/features/{tag}-run{run}",
            batch_size=BATCH_SIZE,
        )
        seconds = time.perf_counter() - started
        assert not result.cache_hit and sum(result.counts.values()) == images, result
        first_uri = first_uri or result.uri
        ours.append(images / seconds)
        rates.append(result.images_per_s)
        raw.append(raw_images_per_s(model, batches))
        note(f"{tag} run {run + 1}: extract_features {ours[-1]:.1f} images/s, raw loop {raw[-1]:.1f} images/s")
    stream = stream_only_images_per_s(store, dataset, card.input, BATCH_SIZE)
    print(
        f"  {tag}: {images} images, resnet18 at {card.input.crop_size}px, batch {BATCH_SIZE}, "
        f"torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    )
    print(
        f"  {tag}: extract_features {max(ours):.1f} images/s (its own images_per_s {max(rates):.1f}), "
        f"raw torch {max(raw):.1f} images/s, ImageStream alone {stream:.1f} images/s"
    )
    print(f"  {tag}: every run: extract_features {[round(r, 1) for r in ours]}, raw {[round(r, 1) for r in raw]}")
    paired = sorted(r / w for r, w in zip(rates, raw, strict=True))
    print(f"  {tag}: streaming rate over the raw loop run by run: {[round(p, 3) for p in paired]}")
    return max(rates) / max(raw), max(ours) / max(raw), first_uri


# --- head epoch: cached features vs recomputing the frozen backbone ------------------------------


def head_epoch(store, model_uri: str, dataset_uri: str, features_uri: str) -> float:
    import torch
    from torch import nn

    from airflow_tl.features.extract import load_split, read_features_index
    from airflow_tl.models.architectures import describe_blocks
    from airflow_tl.training.config import TrainConfig
    from airflow_tl.training.engine import evaluate, train_one_epoch
    from airflow_tl.training.optim import build_optimizer, cosine_with_warmup, param_groups
    from airflow_tl.training.sources import TensorBatches
    from airflow_tl.training.task import train

    all_blocks = len(describe_blocks("resnet18"))
    note(f"head epoch: image path, freeze_layers={all_blocks}, epochs=2")
    image_run = train(
        store,
        model_uri=model_uri,
        config=TrainConfig(freeze_layers=all_blocks, epochs=2, batch_size=BATCH_SIZE),
        output_uri=f"s3://{BUCKET}/trained/images",
        checkpoint_uri=None,
        dataset_uri=dataset_uri,
    )
    note("head epoch: features path, freeze_layers='all', epochs=2")
    feature_run = train(
        store,
        model_uri=model_uri,
        config=TrainConfig(freeze_layers="all", epochs=2, batch_size=BATCH_SIZE),
        output_uri=f"s3://{BUCKET}/trained/features",
        checkpoint_uri=None,
        features_uri=features_uri,
    )
    image_s = image_run.fit.history[-1]["seconds"]

    # The history rounds to 0.01 s, coarser than a head epoch on a few hundred features: time the
    # same epoch (train_one_epoch + evaluate, as fit runs it) repeatedly at full resolution.
    index = read_features_index(store, features_uri)
    train_split = load_split(store, features_uri, index, "train")
    val_split = load_split(store, features_uri, index, "val")
    config = TrainConfig(freeze_layers="all", epochs=HEAD_EPOCH_REPEATS, batch_size=BATCH_SIZE, patience=None)
    torch.manual_seed(0)
    head = nn.Linear(index["feature_dim"], len(index["class_names"]))
    source = TensorBatches(train_split, val_split, batch_size=BATCH_SIZE, seed=0)
    optimizer = build_optimizer(param_groups(head, [], [""], config), config)
    steps = -(-source.train_size // BATCH_SIZE)
    scheduler = cosine_with_warmup(optimizer, warmup_steps=steps, total_steps=HEAD_EPOCH_REPEATS * steps)
    criterion = nn.CrossEntropyLoss()
    seconds = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as training.task runs head-only fits
    try:
        for epoch in range(1, HEAD_EPOCH_REPEATS + 1):
            started = time.perf_counter()
            train_one_epoch(head, criterion, optimizer, scheduler, source.train_batches(epoch), frozen=[], epoch=epoch)
            evaluate(head, criterion, source.val_batches())
            seconds.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    feature_s = statistics.median(seconds[1:])
    image_history = [h["seconds"] for h in image_run.fit.history]
    feature_history = [h["seconds"] for h in feature_run.fit.history]
    print(f"  head epoch: {source.train_size} train + {len(val_split[1])} val images, batch {BATCH_SIZE}")
    print(f"  head epoch: image path (frozen backbone recomputed) {image_s:.2f}s, history {image_history}")
    print(
        f"  head epoch: features path {feature_s * 1000:.2f} ms (median of {HEAD_EPOCH_REPEATS - 1} epochs, "
        f"min {min(seconds) * 1000:.2f} ms), history {feature_history}"
    )
    print(
        f"  head epoch: whole fit of 2 epochs {image_run.fit.seconds:.2f}s on images vs "
        f"{feature_run.fit.seconds:.3f}s on features"
    )
    return image_s / feature_s


# --- peak RSS, N vs 4N images --------------------------------------------------------------------


def rss_child(dataset_uri: str, model_uri: str, features_root: str) -> None:
    """Runs in a fresh interpreter: one extraction, then its peak RSS as JSON on stdout."""
    from airflow_tl.data.dataset import list_dataset
    from airflow_tl.features.extract import extract_features
    from airflow_tl.hooks.s3 import s3_store

    store = s3_store("aws_default")
    dataset = list_dataset(store, dataset_uri)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = extract_features(
        store, model_uri=model_uri, dataset=dataset, features_root=features_root, batch_size=BATCH_SIZE
    )
    assert not result.cache_hit
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm = next((int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")), None)
    images = sum(result.counts.values())
    print(json.dumps({"images": images, "before_kb": before, "peak_kb": peak, "hwm_kb": hwm, "s": seconds}))


# Linux records the RSS high-water mark of the process that exec()s into a child's ru_maxrss: a child
# spawned by this (by then large) process would report our peak, not its own. Children are therefore
# spawned by a small launcher started before anything heavy is imported.
_LAUNCHER = """
import json, subprocess, sys
for line in sys.stdin:
    out = subprocess.run(json.loads(line), capture_output=True, text=True, check=False)
    print(json.dumps([out.returncode, out.stdout, out.stderr]), flush=True)
"""


class Launcher:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def run(self, argv: list[str]) -> tuple[int, str, str]:
        self.process.stdin.write(json.dumps(argv) + "\n")
        self.process.stdin.flush()
        return tuple(json.loads(self.process.stdout.readline()))

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def peak_rss(launcher: Launcher, dataset_uri: str, model_uri: str, features_root: str) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), "--rss-child", dataset_uri, model_uri, features_root]
    code, stdout, stderr = launcher.run(argv)
    if code != 0:
        raise RuntimeError(f"RSS child failed ({code}):\n{stderr[-4000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


# --- main -----------------------------------------------------------------------------------------


def main() -> None:
    from airflow_tl.runtime import prepare_torch_runtime

    prepare_torch_runtime()  # as the operators do before torch loads; BENCH_OMP_WAIT_POLICY=ACTIVE compares
    if os.environ.get("BENCH_OMP_WAIT_POLICY"):
        os.environ["OMP_WAIT_POLICY"] = os.environ["BENCH_OMP_WAIT_POLICY"]
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="tl-bench-airflow-"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    from airflow_tl.demo.local_s3 import start_local_s3

    server = start_local_s3()
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = server.connection_uri()  # before anything imports Airflow
    launcher = Launcher()  # inherits the environment above
    try:
        run(server, launcher)
    finally:
        launcher.close()
        server.stop()


def run(server, launcher: Launcher) -> None:
    import torch

    from airflow_tl.demo.digits import TARGET_CLASSES, digit_images
    from airflow_tl.demo.source_model import DIGITS_INPUT
    from airflow_tl.hooks.s3 import s3_store
    from airflow_tl.models.card import InputSpec

    note(f"local S3 at {server.endpoint_url}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    load_at_start = os.getloadavg()[0]
    store = s3_store("aws_default")
    store.ensure_bucket(BUCKET)
    large, digits = f"s3://{BUCKET}/datasets/large", f"s3://{BUCKET}/datasets/digits"
    rss_sets = {n: f"s3://{BUCKET}/datasets/rss-{n}" for n in (RSS_N, 4 * RSS_N)}
    upload(store, split_layout_jpegs(large, LARGE_CLASSES, LARGE_PER_CLASS_SPLIT, 256, seed=1), "image/jpeg")
    every_other_digit = digit_images(TARGET_CLASSES)[::2]  # ~450 of the demo's 896 target-task digits
    upload(store, {f"{digits}/{d.key}": d.png for d in every_other_digit}, "image/png")
    for n, uri in rss_sets.items():
        upload(store, flat_layout_jpegs(uri, LARGE_CLASSES, n, 128, seed=n), "image/jpeg")
    models = {
        "imagenet": (f"s3://{BUCKET}/zoo/resnet18-224", InputSpec(crop_size=224, resize_size=256)),
        "digits": (f"s3://{BUCKET}/zoo/resnet18-digits", DIGITS_INPUT),
        # Same network and weights; 112px input for the 128px images keeps 5N extractions within budget.
        "rss": (f"s3://{BUCKET}/zoo/resnet18-112", InputSpec(crop_size=112, resize_size=128)),
    }
    for uri, spec in models.values():
        publish(store, uri, spec)
    note("datasets and models uploaded")

    ratio, call_ratio, features_uri = compare_extraction(store, "large", models["imagenet"][0], large)
    small_ratio, _, _ = compare_extraction(store, "small", models["digits"][0], digits)
    speedup = head_epoch(store, models["imagenet"][0], large, features_uri)

    note(f"peak RSS: extraction of {RSS_N} and {4 * RSS_N} images, each in a fresh process")
    peaks = {
        n: peak_rss(launcher, uri, models["rss"][0], f"s3://{BUCKET}/features/rss-{n}") for n, uri in rss_sets.items()
    }
    for p in peaks.values():
        print(
            f"  peak RSS, {p['images']} images: ru_maxrss {p['peak_kb'] / 1024:.0f} MiB "
            f"(VmHWM {p['hwm_kb'] / 1024:.0f} MiB; {p['before_kb'] / 1024:.0f} MiB before extract_features, "
            f"+{(p['peak_kb'] - p['before_kb']) / 1024:.0f} MiB during it; {p['images'] / p['s']:.1f} images/s)"
        )
    growth = peaks[4 * RSS_N]["peak_kb"] / peaks[RSS_N]["peak_kb"]

    print(
        f"  machine: {os.cpu_count()} CPUs, 1-min load average {load_at_start:.1f} at start and "
        f"{os.getloadavg()[0]:.1f} at the end (figures are noisy when other work shares the CPUs)"
    )
    print(f"BENCH extract_vs_raw_torch {ratio:.3f}")
    print(f"BENCH extract_call_vs_raw_torch {call_ratio:.3f}")
    print(f"BENCH extract_vs_raw_torch_small {small_ratio:.3f}")
    print(f"BENCH head_epoch_speedup {speedup:.1f}")
    print(f"BENCH extract_peak_rss_growth_4x {growth:.3f}")
    note("done")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--rss-child":
        rss_child(*sys.argv[2:])
    else:
        main()
