"""The four strategies on a GPU, against a bare torch loop on the same model: for the accelerator machine.

Prints, for each strategy (feature_extraction, partial_freeze, full_finetune, from_scratch):

- ``BENCH gpu_<strategy>_images_per_s <n>``: images/s of our code path on the device, streaming JPEGs from
  a local S3: ``extract_features`` for feature extraction (the head's fit on features takes seconds and no
  GPU), one training epoch of ``train`` (its training images over the epoch's seconds, validation
  included) for the others.
- ``BENCH gpu_<strategy>_vs_bare_torch <ratio>``: that over the images/s of a bare torch loop on the same
  model, batch size, precision and layout, over tensors already decoded and on the GPU: the ceiling a
  pipeline reading from S3 could reach.

Without CUDA it prints ``BENCH gpu_available 0`` and exits 0, so ``make bench`` passes on any machine.
``--device cpu --small`` runs the same code at a toy size on the CPU, to check the script itself.
Lines not starting with BENCH are context; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extract import note, preloaded_batches, split_layout_jpegs, upload  # noqa: E402

BUCKET = "tl-bench-gpu"
CLASSES = ("amber", "cobalt", "moss")
STRATEGIES = {  # freeze_layers, init
    "partial_freeze": (3, "pretrained"),
    "full_finetune": (0, "pretrained"),
    "from_scratch": (0, "random"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu to check the script")
    parser.add_argument("--architecture", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--small", action="store_true", help="a toy size: 64 px, a few images per class")
    args = parser.parse_args()

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("BENCH gpu_available 0")
        note("no CUDA device here: nothing to measure (run it where a GPU is lent, or --device cpu --small)")
        return 0
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="tl-bench-airflow-"))
    from airflow_tl.demo.local_s3 import start_local_s3

    server = start_local_s3()
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = server.connection_uri()
    try:
        run(args)
    finally:
        server.stop()
    return 0


def run(args) -> None:
    import torch

    from airflow_tl.data.dataset import list_dataset
    from airflow_tl.devices import placement
    from airflow_tl.features.extract import extract_features
    from airflow_tl.hooks.s3 import s3_store
    from airflow_tl.models.card import InputSpec
    from airflow_tl.training.config import TrainConfig
    from airflow_tl.training.task import train

    place = placement(args.device)
    size, per_class = (64, 8) if args.small else (224, 300)
    spec = InputSpec(crop_size=size, resize_size=size + size // 7)
    store = s3_store("aws_default")
    store.ensure_bucket(BUCKET)
    dataset_uri, model_uri = f"s3://{BUCKET}/images", f"s3://{BUCKET}/source"
    jpegs = split_layout_jpegs("images", CLASSES, per_class, size + size // 7, seed=0)
    # Validation and test stay small: the bench is about training throughput.
    jpegs = {k: v for k, v in jpegs.items() if "/train/" in k or int(k.rsplit("/", 1)[1][:4]) < per_class // 10 + 2}
    upload(store, {f"s3://{BUCKET}/{k}": v for k, v in jpegs.items()}, "image/jpeg")
    publish_model(store, model_uri, spec, args.architecture, len(CLASSES))
    dataset = list_dataset(store, dataset_uri)
    print(f"device {place.describe()}; {args.architecture} at {size} px, batch {args.batch_size}; "
          f"{len(dataset.split('train'))} training images; torch {torch.__version__}")  # fmt: skip

    tensors = decoded(store, dataset, spec)
    features = extract_features(
        store, model_uri=model_uri, dataset=dataset, features_root=f"s3://{BUCKET}/features",
        batch_size=args.batch_size, place=place,
    )  # fmt: skip
    report("feature_extraction", features.images_per_s, bare_inference(store, model_uri, tensors, args, place))
    for name, (freeze, init) in STRATEGIES.items():
        config = TrainConfig(epochs=1, batch_size=args.batch_size, freeze_layers=freeze, init=init, patience=None)
        result = train(
            store, model_uri=model_uri, config=config, output_uri=f"s3://{BUCKET}/out/{name}", checkpoint_uri=None,
            dataset_uri=dataset_uri, device=args.device,
        )  # fmt: skip
        epoch = result.fit.history[-1]
        ours = len(dataset.split("train")) / epoch["seconds"]
        report(name, ours, bare_training(store, model_uri, tensors, args, place, freeze, init))


def publish_model(store, uri: str, spec, architecture: str, classes: int) -> None:
    """``architecture`` with random weights (seed 0) as the "pretrained" source: throughput needs no accuracy."""
    import torch

    from airflow_tl.models.architectures import build_model, describe_blocks, head_prefixes
    from airflow_tl.models.card import ModelCard
    from airflow_tl.models.folder import save_model_folder

    torch.manual_seed(0)
    card = ModelCard(
        architecture=architecture, class_names=[f"c{i}" for i in range(classes)], input=spec,
        blocks=describe_blocks(architecture), head=list(head_prefixes(architecture)), lineage={"source": "bench"},
    )  # fmt: skip
    save_model_folder(store, uri, build_model(architecture, classes).state_dict(), card)


def report(name: str, ours: float, bare: float) -> None:
    print(f"BENCH gpu_{name}_images_per_s {ours:.1f}")
    print(f"BENCH gpu_{name}_vs_bare_torch {ours / bare:.3f}")
    note(f"{name}: {ours:.0f} images/s through S3 against {bare:.0f} images/s of a bare loop")


def decoded(store, dataset, spec):
    """The training split decoded and preprocessed once, as the bare loops take it."""
    import torch

    batches = preloaded_batches(store, dataset.only([i.key for i in dataset.split("train")]), spec, 10**9)
    return torch.cat(batches)


def _model(store, model_uri, place, freeze: int, init: str):
    import torch

    from airflow_tl.models.folder import instantiate, load_model_folder
    from airflow_tl.models.freezing import freeze_first, without_autograd

    state_dict, card = load_model_folder(store, model_uri)
    torch.manual_seed(0)
    model = instantiate(card, None if init == "random" else state_dict, source=model_uri)
    without_autograd(model, freeze_first(model, card.blocks, freeze))
    return place.model(model), card


def _timed(step, batches: int) -> float:
    """Seconds per batch of ``step`` after two warm-up batches, the GPU's queue drained at both ends."""
    for _ in range(2):
        step()
    started = time.perf_counter()
    for _ in range(batches):
        step()
    return (time.perf_counter() - started) / batches


def bare_inference(store, model_uri, tensors, args, place) -> float:
    import torch

    from airflow_tl.features.backbone import as_feature_extractor

    model, card = _model(store, model_uri, place, 0, "pretrained")
    model, _ = as_feature_extractor(model, card.architecture)
    (x,) = place.batch(tensors[: args.batch_size])

    def step():
        with torch.inference_mode(), place.autocast():
            model(x)
        place.synchronize()

    return args.batch_size / _timed(step, 20)


def bare_training(store, model_uri, tensors, args, place, freeze: int, init: str) -> float:
    import torch

    model, _ = _model(store, model_uri, place, freeze, init)
    model.train()
    x, y = place.batch(tensors[: args.batch_size], torch.arange(args.batch_size) % len(CLASSES))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = place.grad_scaler()
    criterion = torch.nn.CrossEntropyLoss()

    def step():
        with place.autocast():
            loss = criterion(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        place.synchronize()

    return args.batch_size / _timed(step, 20)


if __name__ == "__main__":
    sys.exit(main())
