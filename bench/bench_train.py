"""full_finetune's training epoch on the CPU against a bare torch loop on decoded tensors, on a local S3 endpoint.

Prints ``BENCH train_vs_raw_torch <ratio>``: training images/s of the second epoch of ``train()`` (ResNet-18,
every block trained, AdamW, batches of 32, 128 px JPEGs streamed from S3, decoded and cropped to 112 px by the
loader's threads; the epoch's seconds include its small validation pass) over images/s of a bare loop of
forward, backward and optimizer steps on one batch of the same images already decoded in memory: same model,
batch, optimizer and thread count. Best of 3 for each side, alternating.

Lines not starting with BENCH are context; progress goes to stderr.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extract import note, split_layout_jpegs, upload  # noqa: E402
from bench_gpu import CLASSES, bare_training, decoded, publish_model  # noqa: E402

BUCKET = "tl-bench-train"
SIZE, BATCH, PER_CLASS, REPEATS = 112, 32, 64, 3


def main() -> None:
    from airflow_tl.runtime import prepare_torch_runtime

    prepare_torch_runtime()
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="tl-bench-airflow-"))
    from airflow_tl.demo.local_s3 import start_local_s3

    server = start_local_s3()
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = server.connection_uri()
    try:
        run()
    finally:
        server.stop()


def run() -> None:
    import torch

    from airflow_tl.data.dataset import list_dataset
    from airflow_tl.devices import cpu
    from airflow_tl.hooks.s3 import s3_store
    from airflow_tl.models.card import InputSpec
    from airflow_tl.training.config import TrainConfig
    from airflow_tl.training.task import train

    spec = InputSpec(crop_size=SIZE, resize_size=SIZE + SIZE // 7)
    store = s3_store("aws_default")
    store.ensure_bucket(BUCKET)
    dataset_uri, model_uri = f"s3://{BUCKET}/images", f"s3://{BUCKET}/source"
    jpegs = split_layout_jpegs("images", CLASSES, PER_CLASS, SIZE + SIZE // 7, seed=0)
    # Validation and test stay small: the bench is about training throughput.
    jpegs = {k: v for k, v in jpegs.items() if "/train/" in k or int(k.rsplit("/", 1)[1][:4]) < 4}
    upload(store, {f"s3://{BUCKET}/{k}": v for k, v in jpegs.items()}, "image/jpeg")
    publish_model(store, model_uri, spec, "resnet18", len(CLASSES))
    dataset = list_dataset(store, dataset_uri)
    images = len(dataset.split("train"))
    print(f"resnet18 at {SIZE} px, batch {BATCH}, {images} training images; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs")  # fmt: skip
    tensors = decoded(store, dataset, spec)
    args = SimpleNamespace(batch_size=BATCH)
    ours, bare = [], []
    for attempt in range(REPEATS):
        config = TrainConfig(epochs=2, batch_size=BATCH, freeze_layers=0, patience=None)
        result = train(
            store, model_uri=model_uri, config=config, output_uri=f"s3://{BUCKET}/out/{attempt}", checkpoint_uri=None,
            dataset_uri=dataset_uri, device="cpu",
        )  # fmt: skip
        ours.append(images / result.fit.history[-1]["seconds"])
        bare.append(bare_training(store, model_uri, tensors, args, cpu(), 0, "pretrained"))
        note(f"run {attempt + 1}: {ours[-1]:.1f} images/s through S3, {bare[-1]:.1f} images/s bare")
    print(f"runs (ours / bare, images/s): {', '.join(f'{a:.1f}/{b:.1f}' for a, b in zip(ours, bare, strict=True))}")
    print(f"BENCH train_images_per_s {max(ours):.1f}")
    print(f"BENCH train_vs_raw_torch {max(ours) / max(bare):.3f}")


if __name__ == "__main__":
    main()
