"""The feature-extraction head against scikit-learn's LogisticRegression on the same cached features.

The source network is the demo's: ResNet-18 pretrained on digits 0–4 (``airflow_tl.demo``, seed 0, 8
epochs, as ``make demo`` seeds it). Features are computed in-process with production's pieces: the same
preprocessing (``airflow_tl.data.preprocess.preprocess`` with the model's input spec) and the same feature
extractor (``airflow_tl.features.backbone.as_feature_extractor``); no S3 is involved, since both sides
read the same tensors. Four target tasks:

- ``digits``: digits 5–9, the demo's target task (similar to the source), every image;
- ``digits-10shot``: the same with 10 training and 5 validation images per class;
- ``shapes``: generated discs, squares and triangles (dissimilar), 3 classes;
- ``shapes-10shot``: the same with 10 training and 5 validation images per class.

Test splits stay whole, so accuracies are measured on 180–300 images.

On each task, on the same training features:

- ours: ``airflow_tl.training.head.fit_linear_head`` (L-BFGS, L2 chosen on the validation split);
- scikit-learn's reference: ``StandardScaler`` + ``LogisticRegression(C)`` with C chosen on the same
  validation split over the same grid (``C = 1 / (l2 * n)``, which is the same objective), by validation
  accuracy with validation log-loss breaking ties (what a grid search over accuracy does);
- scikit-learn at its default ``C=1.0`` (standardised features), and at ``C=1.0`` on the raw features;
- for context, the epoch loop this replaced: AdamW, batch 64, lr 3e-3, label smoothing 0.1, early
  stopping with patience 3, best epoch by validation loss, at 4 and at 30 epochs.

Prints ``BENCH head_vs_sklearn_logreg <ours - reference>`` (test accuracy, worst case over the tasks;
goal >= -0.01), ``BENCH head_vs_sklearn_logreg_default`` (the same against C=1.0), ``BENCH
head_vs_epoch_loop_4`` (ours - the 4-epoch loop, worst case) and ``BENCH head_fit_s_max``. Lines not
starting with BENCH are context; progress goes to stderr.
"""

from __future__ import annotations

import io
import math
import os
import sys
import time
import warnings

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("disc", "square", "triangle")
SHAPES_PER_SPLIT = {"train": 120, "val": 40, "test": 100}  # per class
SHOT = {"train": 10, "val": 5}  # per class, in the 10-shot variants
SKLEARN_MAX_ITER = 5000  # its default tol (1e-4); the default max_iter (100) stops short on weak penalties
EPOCH_LOOP = {"batch_size": 64, "learning_rate": 3e-3, "patience": 3}  # the DAG's defaults before this change

_STARTED = time.monotonic()


def note(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


# --- data ----------------------------------------------------------------------------------------------


def shape_png(rng: np.random.Generator, label: int, size: int = 32) -> bytes:
    """One grayscale shape (filled or outlined, any size, place and rotation) on a noisy background."""
    scale = 4  # drawn large and downsampled, so edges are antialiased
    canvas = Image.new("L", (size * scale, size * scale), int(rng.integers(0, 90)))
    draw = ImageDraw.Draw(canvas)
    radius = rng.uniform(0.2, 0.4) * size * scale
    cx, cy = (rng.uniform(radius, size * scale - radius) for _ in range(2))
    fill = int(rng.integers(150, 256))
    outline = rng.random() < 0.3
    if SHAPES[label] == "disc":
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        draw.ellipse(box, outline=fill, width=scale * 2) if outline else draw.ellipse(box, fill=fill)
    else:
        corners = 4 if SHAPES[label] == "square" else 3
        turn = rng.uniform(0, 2 * math.pi)
        points = [
            (
                cx + radius * math.cos(turn + 2 * math.pi * i / corners),
                cy + radius * math.sin(turn + 2 * math.pi * i / corners),
            )
            for i in range(corners)
        ]
        draw.polygon(points, outline=fill, width=scale * 2) if outline else draw.polygon(points, fill=fill)
    pixels = np.asarray(canvas.resize((size, size), Image.BILINEAR), dtype=np.float64)
    pixels += rng.normal(0, 12, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def shapes_dataset(seed: int = 1) -> dict[str, list[tuple[bytes, int]]]:
    rng = np.random.default_rng(seed)
    return {
        split: [(shape_png(rng, label), label) for label in range(len(SHAPES)) for _ in range(count)]
        for split, count in SHAPES_PER_SPLIT.items()
    }


def digits_dataset() -> dict[str, list[tuple[bytes, int]]]:
    from airflow_tl.demo.digits import TARGET_CLASSES, digit_images

    images = digit_images(TARGET_CLASSES, seed=0)
    return {
        split: [(i.png, TARGET_CLASSES.index(i.label)) for i in images if i.split == split]
        for split in ("train", "val", "test")
    }


def few_shot(features: dict, classes: int) -> dict:
    """The first SHOT[split] rows of each class in train and val; test unchanged."""
    out = dict(features)
    for split, count in SHOT.items():
        x, y = features[split]
        keep = np.concatenate([np.flatnonzero(y.numpy() == c)[:count] for c in range(classes)])
        out[split] = (x[keep], y[keep])
    return out


# --- the source network and its features ------------------------------------------------------------


def source_extractor():
    """The demo's source model (digits 0–4), pretrained as ``seed_demo`` does, as a feature extractor."""
    from airflow_tl.demo.digits import SOURCE_CLASSES, digit_images
    from airflow_tl.demo.source_model import ARCHITECTURE, DIGITS_INPUT, pretrain
    from airflow_tl.features.backbone import as_feature_extractor

    model, info = pretrain(digit_images(SOURCE_CLASSES, seed=0), SOURCE_CLASSES, seed=0, epochs=8)
    note(f"source model pretrained on digits 0-4: val accuracy {info['val_accuracy']:.3f}")
    extractor, dim = as_feature_extractor(model, ARCHITECTURE)
    return extractor, DIGITS_INPUT, dim


def features_of(extractor, spec, images: list[tuple[bytes, int]], batch_size: int = 128):
    import torch

    from airflow_tl.data.preprocess import preprocess

    x = torch.stack([preprocess(Image.open(io.BytesIO(png)), spec) for png, _ in images])
    with torch.inference_mode():
        rows = torch.cat([extractor(batch) for batch in x.split(batch_size)])
    return rows.float().clone(), torch.tensor([label for _, label in images])


# --- the contenders ----------------------------------------------------------------------------------


def ours(features: dict, classes: int) -> dict:
    """Test accuracy of ``fit_linear_head`` (which runs single-threaded, as in a task)."""
    from airflow_tl.training.head import fit_linear_head

    fit = fit_linear_head(features["train"], features["val"], num_classes=classes)
    x, y = features["test"]
    accuracy = ((x @ fit.weight.T + fit.bias).argmax(1) == y).double().mean().item()
    return {"accuracy": accuracy, "seconds": fit.seconds, "fit": fit}


def sklearn_logreg(features: dict, cs: list[float] | None, *, scaled: bool = True) -> dict:
    """Test accuracy of LogisticRegression with C chosen on val from ``cs`` (or C=1.0 when None).

    The grid runs from strong to weak penalties with ``warm_start``, as ours does; scaling is
    ``StandardScaler`` fitted on the training split, as ``make_pipeline(StandardScaler(), ...)`` would.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    (x, y), (xv, yv), (xt, yt) = ((a.double().numpy(), b.numpy()) for a, b in (features[s] for s in SPLITS))
    if scaled:
        scaler = StandardScaler().fit(x)
        x, xv, xt = scaler.transform(x), scaler.transform(xv), scaler.transform(xt)
    started = time.perf_counter()
    model = LogisticRegression(max_iter=SKLEARN_MAX_ITER, warm_start=True)
    best, unconverged = None, 0
    for c in sorted(cs or [1.0]):
        # One BLAS thread, as our fit runs with one torch thread: on this 2-CPU machine, shared with other
        # work, two BLAS threads made a 0.1 s fit take 3-8 s.
        with warnings.catch_warnings(record=True) as caught, threadpool_limits(1):
            warnings.simplefilter("always")
            model.set_params(C=c).fit(x, y)
        unconverged += any("converge" in str(w.message) for w in caught)
        probs = model.predict_proba(xv)
        score = ((probs.argmax(1) == yv).mean(), -log_loss(yv, probs, labels=model.classes_))
        if best is None or score > best[0]:
            best = (score, c, (model.predict(xt) == yt).mean())
    _, c, accuracy = best
    seconds = time.perf_counter() - started
    return {"accuracy": float(accuracy), "seconds": seconds, "C": c, "unconverged": unconverged}


def epoch_loop(features: dict, classes: int, epochs: int) -> dict:
    """The head as it was trained before: the epoch loop over cached features (``training.engine.fit``)."""
    import torch
    from torch import nn

    from airflow_tl.training.config import TrainConfig
    from airflow_tl.training.engine import fit
    from airflow_tl.training.sources import TensorBatches

    config = TrainConfig(freeze_layers="all", epochs=epochs, **EPOCH_LOOP)
    torch.manual_seed(0)
    head = nn.Linear(features["train"][0].shape[1], classes)
    source = TensorBatches(features["train"], features["val"], batch_size=config.batch_size, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = fit(head, source, config, blocks=[], head=[""], frozen=[], checkpoints=None, fingerprint="bench")
    finally:
        torch.set_num_threads(threads)
    x, y = features["test"]
    with torch.inference_mode():
        accuracy = (head(x).argmax(1) == y).double().mean().item()
    return {"accuracy": accuracy, "seconds": result.seconds, "epochs_run": len(result.history)}


SPLITS = ("train", "val", "test")


def warm_up() -> None:
    """Build one L-BFGS optimizer: the first in a process costs ~1.2 s of imports, which is not the fit's."""
    import torch

    from airflow_tl.training.head import fit_linear_head

    fit_linear_head((torch.rand(4, 2), torch.tensor([0, 1, 0, 1])), None, num_classes=2)


def compare(name: str, features: dict, classes: int) -> dict[str, float]:
    """Every contender on one task; prints the task's lines and returns ours minus each reference."""
    from airflow_tl.training.head import DEFAULT_L2_GRID

    n = len(features["train"][1])
    cs = [1.0 / (l2 * n) for l2 in DEFAULT_L2_GRID]  # the same penalties, in scikit-learn's units
    mine = ours(features, classes)
    reference, default = sklearn_logreg(features, cs), sklearn_logreg(features, None)
    unscaled = sklearn_logreg(features, None, scaled=False)
    loops = {epochs: epoch_loop(features, classes, epochs) for epochs in (4, 30)}
    fit = mine["fit"]
    counts = "/".join(str(len(features[s][1])) for s in SPLITS)
    print(f"  {name}: {classes} classes, train/val/test {counts}, chance {1 / classes:.3f}")
    print(
        f"  {name}: ours {mine['accuracy']:.4f} (l2 {fit.l2:.3g} = C {1 / (fit.l2 * n):.3g}, {fit.iterations} "
        f"iterations, {len(fit.candidates)} of {len(cs)} penalties fitted, {mine['seconds']:.2f}s)"
    )
    print(
        f"  {name}: sklearn, C chosen on val {reference['accuracy']:.4f} (C {reference['C']:.3g}, "
        f"{reference['seconds']:.2f}s for {len(cs)} fits, {reference['unconverged']} not converged); "
        f"C=1.0 {default['accuracy']:.4f}; C=1.0 on raw features {unscaled['accuracy']:.4f}"
    )
    print(
        f"  {name}: epoch loop, 4 epochs {loops[4]['accuracy']:.4f} ({loops[4]['seconds']:.2f}s); "
        f"30 epochs {loops[30]['accuracy']:.4f} ({loops[30]['epochs_run']} run, {loops[30]['seconds']:.2f}s)"
    )
    return {
        "reference": mine["accuracy"] - reference["accuracy"],
        "default": mine["accuracy"] - default["accuracy"],
        "loop": mine["accuracy"] - loops[4]["accuracy"],
        "seconds": mine["seconds"],
    }


def main() -> None:
    import logging

    from airflow_tl.runtime import prepare_torch_runtime

    prepare_torch_runtime()  # as the operators do before torch loads
    import torch

    logging.getLogger("airflow_tl").setLevel(logging.WARNING)  # the fits' own progress lines
    load_at_start = os.getloadavg()[0]
    note(f"torch {torch.__version__}, {torch.get_num_threads()} threads; pretraining the source model")
    extractor, spec, dim = source_extractor()
    tasks = {}
    for name, (images, classes) in {"digits": (digits_dataset(), 5), "shapes": (shapes_dataset(), 3)}.items():
        features = {split: features_of(extractor, spec, images[split]) for split in SPLITS}
        tasks[name] = (features, classes)
        tasks[f"{name}-10shot"] = (few_shot(features, classes), classes)
        note(f"{name}: features {', '.join(f'{s} {len(features[s][1])}' for s in SPLITS)} x {dim}")
    warm_up()
    gaps = {}
    for name, (features, classes) in tasks.items():
        gaps[name] = compare(name, features, classes)
        note(f"{name} done")
    print(
        f"  machine: {os.cpu_count()} CPUs, 1-min load average {load_at_start:.1f} at start and "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    for key, bench in (("reference", ""), ("default", "_default")):
        worst = min(gaps, key=lambda name: gaps[name][key])
        print(f"  worst case against sklearn{bench or ' (C chosen on val)'}: {worst}")
        print(f"BENCH head_vs_sklearn_logreg{bench} {gaps[worst][key]:+.4f}")
    print(f"BENCH head_vs_epoch_loop_4 {min(g['loop'] for g in gaps.values()):+.4f}")
    print(f"BENCH head_fit_s_max {max(g['seconds'] for g in gaps.values()):.2f}")
    note("done")


if __name__ == "__main__":
    main()
