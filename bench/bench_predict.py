"""tl_predict's scoring on the CPU against a bare torch inference loop on decoded tensors, on a local S3 endpoint.

Prints ``BENCH predict_vs_raw_torch <ratio>``: images/s of ``predict_images`` (ResNet-18 champion of a registry at
224 px, the ImageNet preset its weights come with; batches of 64; 640 JPEGs of 256 px under a prefix streamed from
S3, decoded, resized and cropped by the loader's threads, written as Parquet parts; the seconds include the
listing, the model's download and every part's PUT) over images/s of a bare loop of forward passes over the same
images already decoded in memory: same model, batch and thread count. Best of 3 for each side, alternating.
Goal: >= 0.9. ``--size 112`` measures the same at 112 px, where the network's work per image is a quarter and
the S3 endpoint sharing this machine's cores weighs four times as much; ``--shards`` scores the sharded form of the
same images (class folders packed by ``prepare_shards``, read one GET per shard).

Lines not starting with BENCH are context; progress goes to stderr.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extract import note, smooth_jpeg, upload  # noqa: E402
from bench_gpu import CLASSES, publish_model  # noqa: E402

BUCKET = "tl-bench-predict"
BATCH, IMAGES, REPEATS = 64, 640, 3


def main() -> None:
    from airflow_tl.runtime import prepare_torch_runtime

    prepare_torch_runtime()
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="tl-bench-airflow-"))
    from airflow_tl.demo.local_s3 import start_local_s3

    server = start_local_s3()
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = server.connection_uri()
    size = int(sys.argv[sys.argv.index("--size") + 1]) if "--size" in sys.argv else 224
    try:
        run(size, "--shards" in sys.argv)
    finally:
        server.stop()


def champion(store, spec) -> str:
    """A registry whose champion v1 is ResNet-18 with random weights (throughput needs no accuracy)."""
    from airflow_tl.registry.store import Registry

    registry_uri = f"s3://{BUCKET}/registry"
    publish_model(store, f"s3://{BUCKET}/trained", spec, "resnet18", len(CLASSES))
    registry = Registry(store, registry_uri, "bench")
    registry.write_version("v1", model_uri=f"s3://{BUCKET}/trained", metrics={}, report_html=b"", plots={})
    assert registry.replace_champion({"version": "v1"}, etag=None)
    return registry_uri


def run(size: int, shards: bool) -> None:
    import torch
    from PIL import Image

    from airflow_tl.data.preprocess import preprocess
    from airflow_tl.devices import cpu
    from airflow_tl.hooks.s3 import s3_store
    from airflow_tl.models.card import InputSpec
    from airflow_tl.models.folder import instantiate, load_model_folder
    from airflow_tl.predict.task import PredictSpec, predict_images

    spec = InputSpec(crop_size=size, resize_size=size + size // 7)
    store = s3_store("aws_default")
    store.ensure_bucket(BUCKET)
    rng = np.random.default_rng(0)
    # No class folders: a camera upload's layout, eight folders deep enough to list concurrently. Shards are
    # packed from class folders.
    folder = (lambda i: f"c{i % 3}") if shards else (lambda i: f"day-{i % 8}")
    side = size + size // 7
    jpegs = {f"s3://{BUCKET}/inbox/{folder(i)}/{i:05d}.jpg": smooth_jpeg(rng, side, i % 3) for i in range(IMAGES)}
    upload(store, jpegs, "image/jpeg")
    dataset_uri = f"s3://{BUCKET}/inbox"
    if shards:
        from airflow_tl.data.shard_writer import prepare_shards

        dataset_uri = prepare_shards(store, dataset_uri, shard_images=256).uri
    registry_uri = champion(store, spec)

    def load(blob: bytes):
        return preprocess(Image.open(io.BytesIO(blob)), spec)

    with ThreadPoolExecutor(8) as pool:
        tensors = torch.stack(list(pool.map(load, jpegs.values())))
    state_dict, card = load_model_folder(store, f"{registry_uri}/bench/versions/v1")
    place = cpu()
    model = place.model(instantiate(card, state_dict, source="bench").eval())
    batches = list(torch.split(tensors, BATCH))

    def bare() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            for x in batches:
                torch.softmax(model(x).float(), dim=1)
        return IMAGES / (time.perf_counter() - started)

    print(f"resnet18 at {size} px, batch {BATCH}, {IMAGES} JPEGs of {side} px from {dataset_uri}; "
          f"torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs")  # fmt: skip
    bare()  # warm-up: the first passes allocate
    ours, raw = [], []
    for attempt in range(REPEATS):
        args = PredictSpec(
            dataset_uri=dataset_uri, registry_uri=registry_uri, model_name="bench",
            output_uri=f"s3://{BUCKET}/predictions/{attempt}", batch_size=BATCH, device="cpu",
        )  # fmt: skip
        result = predict_images(store, args, place=place)
        assert result.scored == IMAGES, result.summary()
        ours.append(result.scored / result.seconds)
        raw.append(bare())
        note(f"run {attempt + 1}: {ours[-1]:.1f} images/s through S3, {raw[-1]:.1f} images/s bare")
    print(f"runs (ours / bare, images/s): {', '.join(f'{a:.1f}/{b:.1f}' for a, b in zip(ours, raw, strict=True))}")
    suffix = ("" if size == 224 else f"_{size}px") + ("_shards" if shards else "")
    print(f"BENCH predict_images_per_s{suffix} {max(ours):.1f}")
    print(f"BENCH predict_vs_raw_torch{suffix} {max(ours) / max(raw):.3f}")


if __name__ == "__main__":
    main()
