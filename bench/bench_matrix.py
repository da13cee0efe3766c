"""The lecture's 2x2 matrix (data size x similarity to the pretraining data), reproduced by measurement.

The source network is the demo's: ResNet-18 pretrained on sklearn's digits 0-4 at 32x32 (``seed_demo``).
Four target tasks, five classes each (chance is 0.2):

- similar: sklearn's digits 5-9 (same pen, same 8x8 grid, new classes);
- dissimilar: ``airflow_tl.demo.textures`` (noisy grayscale stripes, checks, rings, blobs and dots);
- small: ``SMALL_TRAIN`` training and ``SMALL_VAL`` validation images per class;
- large: as many as the digits allow (about 180 per class in all: what is left after the test and validation
  images, ~110 per class, for training). The textures are generated at the same size, so the columns differ
  in similarity only.

Every task uses explicit ``train/val/test`` folders (layout 'splits'), and a task's small and large versions
share the same ``TEST_PER_CLASS`` x 5 = 250 test images: every strategy, seed and size is scored on the same
images. 250 is what the digits leave after a large training split; the standard error of an accuracy near
0.8 on 250 images is about 0.025, small enough to separate the strategies that matter and stated beside
the figures. The small tasks' training images are the first of the large tasks', so size is the only change.

Each task is learned with all four strategies, ``SEEDS`` training seeds each (5 on small tasks, whose runs take
seconds and swing most from seed to seed; 3 on large ones), through the production code a
DAG run calls: ``extract_features`` + ``train(features_uri=...)`` for feature extraction, ``train(dataset_uri=
...)`` with ``TrainConfig(freeze_layers=..., init=...)`` for the others (from_scratch: the source's
architecture and input size, ``init='random'``), then ``predict`` + ``compute_metrics`` on the test split.
Hyper-parameters are each strategy's ``STRATEGIES[...].defaults`` plus the DAG's general defaults (patience
3, no augmentation, partial_freeze's default ``freeze_layers``): what a DAG run with no conf would use.
No deviation is needed for time: ``EPOCHS_OVERRIDE`` and ``PATIENCE_OVERRIDE`` are empty unless set for an
experiment (below), and the output says which were set. Checkpointing is off
(``checkpoint_uri=None``): it only makes a run resumable, and would add S3 writes to every epoch's time.
Feature extraction's features are extracted once per task (cold, timed) and shared by its seeds, as the
content-keyed cache does in production.

Then the advisor (``airflow_tl.assess.task.assess``) is run on each task, each with a fresh features root,
and its pick is compared with the measured winner; without the advisor those lines are skipped.

Time: 2 x 4 x 5 + 2 x 4 x 3 = 64 trainings of ResNet-18 at 32x32 (8 epochs, the DAG default, is what keeps
it affordable). Most of the time goes to the large tasks' 18 full trainings of 8 epochs x ~550 images (20-40 s
each on 2 cores); a small task's run takes seconds and its features a few. On 2 cores the bench took 13
minutes with 3 seeds everywhere while other work shared the CPUs (1-minute load 1-6), and 18 minutes with
these seeds under a load of 6-9; alone, expect about 10. Knobs for experiments (each printed and recorded
with the results): ``BENCH_MATRIX_SEEDS`` (one count for every task), ``BENCH_MATRIX_TASKS`` (quadrants),
``BENCH_MATRIX_EPOCHS`` (``strategy=epochs,...``), ``BENCH_MATRIX_PATIENCE`` (epochs or ``none``).

Prints ``BENCH matrix_<quadrant>_winner <strategy>``, ``BENCH matrix_<quadrant>_<strategy>_accuracy <mean>``,
``BENCH matrix_advisor_agreement <fraction>`` and ``BENCH assess_vs_finetune_time <ratio>``; the table and
progress go to stderr (``BENCH_MATRIX_VERBOSE=1`` adds the library's per-epoch log). All results are written
as JSON to the path given as the first argument, or ``BENCH_MATRIX_JSON``, or ``<tempdir>/bench_matrix.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

BUCKET = "tl-bench-matrix"
# Training seeds per task size. A small task's runs take seconds and its accuracy swings from seed to seed
# (an epoch of 50 images is one optimizer step), so it gets more.
SEEDS = {"small": 5, "large": 3}
DATA_SEED = 0  # which digits land in which split, and the textures drawn
TEST_PER_CLASS = 50
LARGE_VAL = 20
SMALL_TRAIN = 10
SMALL_VAL = 5
TEXTURE_LARGE_TRAIN = 110  # about what the digits leave for training
STRATEGY_ORDER = ("feature_extraction", "partial_freeze", "full_finetune", "from_scratch")
QUADRANTS = ("small_similar", "small_dissimilar", "large_similar", "large_dissimilar")
LECTURE = {
    "small_similar": "feature_extraction",
    "small_dissimilar": "partial_freeze",
    "large_similar": "full_finetune",
    "large_dissimilar": "from_scratch",
}
# Per-strategy overrides of the DAG defaults' epochs, should the bench ever need them for time. Empty: none.
EPOCHS_OVERRIDE: dict[str, int] = {}
PATIENCE_OVERRIDE: dict[str, int | None] = {}  # {"all": n or None} replaces the DAG's patience; empty: none


def _settings_from_env() -> None:
    """Apply the experiment knobs set in the environment; the output and the JSON say which were set.

    BENCH_MATRIX_SEEDS: one seed count for every task; BENCH_MATRIX_TASKS: quadrants, comma-separated;
    BENCH_MATRIX_EPOCHS: ``strategy=epochs,...``; BENCH_MATRIX_PATIENCE: epochs, or ``none`` for no early stopping.
    """
    global QUADRANTS
    if os.environ.get("BENCH_MATRIX_SEEDS"):
        SEEDS.update(dict.fromkeys(SEEDS, int(os.environ["BENCH_MATRIX_SEEDS"])))
    if os.environ.get("BENCH_MATRIX_TASKS"):
        QUADRANTS = tuple(q for q in QUADRANTS if q in os.environ["BENCH_MATRIX_TASKS"].split(","))
    for item in filter(None, os.environ.get("BENCH_MATRIX_EPOCHS", "").split(",")):
        strategy, epochs = item.split("=")
        EPOCHS_OVERRIDE[strategy] = int(epochs)
    patience = os.environ.get("BENCH_MATRIX_PATIENCE")
    if patience:
        PATIENCE_OVERRIDE["all"] = None if patience == "none" else int(patience)


_STARTED = time.monotonic()


def note(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


# --- the four tasks ------------------------------------------------------------------------------


def digit_splits() -> dict[str, list]:
    """Digits 5-9 re-split per class: TEST_PER_CLASS test, LARGE_VAL val, the rest train (seeded)."""
    from airflow_tl.demo.digits import TARGET_CLASSES, digit_images

    rng = np.random.default_rng(DATA_SEED)
    every = digit_images(TARGET_CLASSES)
    large = []
    for label in TARGET_CLASSES:
        members = sorted((i for i in every if i.label == label), key=lambda i: i.index)
        order = rng.permutation(len(members))
        for rank, position in enumerate(order):
            split = "test" if rank < TEST_PER_CLASS else "val" if rank < TEST_PER_CLASS + LARGE_VAL else "train"
            large.append(dataclasses.replace(members[position], split=split))
    return large


def small_subset(images: list, rank) -> list:
    """The first SMALL_TRAIN train and SMALL_VAL val images of each class (by ``rank``), every test image."""
    kept, seen = [], {}
    for image in sorted(images, key=rank):
        limit = {"train": SMALL_TRAIN, "val": SMALL_VAL}.get(image.split)
        count = seen.get((image.split, image.label), 0)
        if limit is None or count < limit:
            kept.append(image)
            seen[(image.split, image.label)] = count + 1
    return kept


def build_tasks(store) -> dict[str, dict]:
    """Upload the four datasets; returns per quadrant its URI and images per class per split."""
    from airflow_tl.demo.seed import upload_dataset
    from airflow_tl.demo.textures import texture_images

    digits = digit_splits()
    textures = texture_images({"train": TEXTURE_LARGE_TRAIN, "val": LARGE_VAL, "test": TEST_PER_CLASS}, seed=DATA_SEED)
    by_rank = {id(image): rank for rank, image in enumerate(digits)}
    images = {
        "large_similar": digits,
        "small_similar": small_subset(digits, lambda i: by_rank[id(i)]),
        "large_dissimilar": textures,
        "small_dissimilar": small_subset(textures, lambda i: (i.label, i.index)),
    }
    tasks = {}
    for quadrant in QUADRANTS:
        uri = f"s3://{BUCKET}/datasets/{quadrant}"
        upload_dataset(store, images[quadrant], uri)
        counts: dict[str, dict[str, int]] = {}
        for image in images[quadrant]:
            counts.setdefault(image.split, {}).setdefault(image.label, 0)
            counts[image.split][image.label] += 1
        tasks[quadrant] = {"dataset_uri": uri, "images_per_class": counts}
        note(f"{quadrant}: {uri}, images per class {_per_split(counts)}")
    return tasks


def _per_split(counts: dict[str, dict[str, int]]) -> str:
    return ", ".join(f"{split} {min(c.values())}-{max(c.values())}" for split, c in counts.items())


# --- one strategy, one seed ----------------------------------------------------------------------


def train_config(strategy: str, seed: int):
    """What a DAG run of ``strategy`` with no conf trains with (epochs possibly capped by EPOCHS_OVERRIDE)."""
    from airflow_tl.pipelines.params import GENERAL_DEFAULTS
    from airflow_tl.pipelines.strategies import STRATEGIES
    from airflow_tl.training.config import TrainConfig

    spec = STRATEGIES[strategy]
    defaults = spec.defaults
    return TrainConfig(
        epochs=EPOCHS_OVERRIDE.get(strategy, defaults["epochs"]),
        batch_size=defaults["batch_size"],
        learning_rate=defaults["learning_rate"],
        patience=PATIENCE_OVERRIDE.get("all", GENERAL_DEFAULTS["patience"]),
        augment=False if spec.uses_features else GENERAL_DEFAULTS["augment"],
        seed=seed,
        freeze_layers=defaults["freeze_layers"] if spec.freeze_layers is None else spec.freeze_layers,
        init=spec.init,
    )


def run_one(store, source_uri: str, task: dict, quadrant: str, strategy: str, seed: int, features_uri) -> dict:
    """Train with ``strategy`` and ``seed``, then score the test split; returns the figures of this run."""
    from airflow_tl.data.dataset import list_dataset
    from airflow_tl.evaluation.metrics import compute_metrics
    from airflow_tl.evaluation.predict import predict
    from airflow_tl.training.task import train

    config = train_config(strategy, seed)
    on_features = strategy == "feature_extraction"
    inputs = {"features_uri": features_uri} if on_features else {"dataset_uri": task["dataset_uri"]}
    started = time.perf_counter()
    result = train(
        store,
        model_uri=source_uri,
        config=config,
        output_uri=f"s3://{BUCKET}/trained/{quadrant}/{strategy}/seed{seed}",
        checkpoint_uri=None,
        layout="splits",
        **inputs,
    )
    train_s = time.perf_counter() - started
    dataset = list_dataset(store, task["dataset_uri"], layout="splits", for_training=False)
    predictions = predict(store, result.model_uri, dataset, split="test")
    metrics = compute_metrics(predictions.probs, predictions.labels, predictions.class_names)
    return {
        "seed": seed,
        "accuracy": metrics.accuracy,
        "macro_f1": metrics.macro_f1,
        "test_images": metrics.n,
        "train_seconds": train_s,
        "fit_seconds": result.fit.seconds,
        "epochs_run": len(result.fit.history),
        "best_epoch": result.fit.best_epoch,
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "config": config.to_dict(),
    }


def run_task(store, source_uri: str, quadrant: str, task: dict) -> dict:
    """All strategies x its seeds on one task; feature extraction's features extracted once (cold) for its seeds."""
    from airflow_tl.data.dataset import list_dataset
    from airflow_tl.features.extract import extract_features

    started = time.perf_counter()
    dataset = list_dataset(store, task["dataset_uri"], layout="splits")
    features = extract_features(
        store, model_uri=source_uri, dataset=dataset, features_root=f"s3://{BUCKET}/features/{quadrant}"
    )
    task["extract_seconds"] = time.perf_counter() - started
    note(f"{quadrant}: features extracted in {task['extract_seconds']:.1f}s ({features.uri})")
    results = {}
    for strategy in STRATEGY_ORDER:
        runs = []
        for seed in range(SEEDS[quadrant.split("_")[0]]):
            runs.append(run_one(store, source_uri, task, quadrant, strategy, seed, features.uri))
            r = runs[-1]
            note(
                f"{quadrant} {strategy} seed {seed}: accuracy {r['accuracy']:.3f}, train {r['train_seconds']:.1f}s, "
                f"{r['epochs_run']} epochs (best {r['best_epoch']})"
            )
        results[strategy] = summarise(runs)
    task["strategies"] = results
    task["winner"], task["within_one_std"], task["within_test_error"] = winner(results)
    return task


def summarise(runs: list[dict]) -> dict:
    accuracies = [r["accuracy"] for r in runs]
    return {
        "accuracy_mean": statistics.fmean(accuracies),
        "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in runs),
        "trainable_params": runs[0]["trainable_params"],
        "total_params": runs[0]["total_params"],
        "runs": runs,
    }


def winner(results: dict[str, dict]) -> tuple[str, list[str], list[str]]:
    """The strategy of highest mean accuracy (a tie goes to the faster), and those close to it.

    Close is within one std over seeds (the issue's criterion), and, less strictly, within the larger of that
    std and the winner's standard error on the test set, sqrt(p(1-p)/n): seeds share one test set, so their
    std can be far below what another 250 test images would move the accuracy by.
    """
    best = max(results, key=lambda s: (results[s]["accuracy_mean"], -results[s]["train_seconds_mean"]))
    mean, std = results[best]["accuracy_mean"], results[best]["accuracy_std"]
    test_error = math.sqrt(mean * (1 - mean) / results[best]["runs"][0]["test_images"])
    close = [s for s in STRATEGY_ORDER if results[s]["accuracy_mean"] >= mean - std]
    near = [s for s in STRATEGY_ORDER if results[s]["accuracy_mean"] >= mean - max(std, test_error)]
    return best, close, near


# --- the advisor ---------------------------------------------------------------------------------


def run_advisor(store, source_uri: str, tasks: dict[str, dict]) -> dict | None:
    """The advisor's pick on every task (each with a fresh features root, so each call is cold)."""
    import airflow_tl

    try:
        from airflow_tl.assess.task import assess
    except ImportError as error:
        note(f"advisor not available yet ({error}); skipping the advisor lines")
        return None
    # An editable install can resolve a subpackage missing here from the checkout it was installed from.
    if not assess.__code__.co_filename.startswith(os.path.dirname(airflow_tl.__file__)):
        note(f"advisor not available yet in {os.path.dirname(airflow_tl.__file__)}; skipping the advisor lines")
        return None
    for quadrant, task in tasks.items():
        started = time.perf_counter()
        advice = assess(
            store,
            model_uri=source_uri,
            dataset_uri=task["dataset_uri"],
            features_root=f"s3://{BUCKET}/assess/{quadrant}",
            layout="splits",
        )
        seconds = time.perf_counter() - started
        task["advice"] = {"strategy": advice.strategy, "quadrant": advice.quadrant, "seconds": seconds}
        task["advice"]["details"] = advice.to_dict()
        note(f"{quadrant}: advisor picks {advice.strategy} ({advice.quadrant}) in {seconds:.1f}s")
    agreeing = [q for q, t in tasks.items() if t["advice"]["strategy"] in t["within_one_std"]]
    near = [q for q, t in tasks.items() if t["advice"]["strategy"] in t["within_test_error"]]
    ratio = None
    if "large_similar" in tasks:
        large = tasks["large_similar"]
        ratio = large["advice"]["seconds"] / large["strategies"]["full_finetune"]["train_seconds_mean"]
    return {
        "agreement": len(agreeing) / len(tasks),
        "agreeing_quadrants": agreeing,
        "agreement_within_test_error": len(near) / len(tasks),
        "assess_vs_finetune_time": ratio,
    }


# --- output --------------------------------------------------------------------------------------


def table(tasks: dict[str, dict]) -> str:
    header = f"{'task':<17} {'strategy':<19} {'test accuracy':>15} {'train s':>8} {'trainable':>11}  note"
    lines = [header, "-" * len(header)]
    for quadrant, task in tasks.items():
        for strategy in STRATEGY_ORDER:
            s = task["strategies"][strategy]
            marks = []
            if strategy == task["winner"]:
                marks.append("measured winner")
            elif strategy in task["within_one_std"]:
                marks.append("within 1 std")
            elif strategy in task["within_test_error"]:
                marks.append("within test s.e.")
            if LECTURE[quadrant] == strategy:
                marks.append("lecture's pick")
            if task.get("advice", {}).get("strategy") == strategy:
                marks.append("advisor's pick")
            if strategy == "feature_extraction":
                marks.append(f"+{task['extract_seconds']:.1f}s extraction once")
            accuracy = f"{s['accuracy_mean']:.3f} ± {s['accuracy_std']:.3f}"
            lines.append(
                f"{quadrant:<17} {strategy:<19} {accuracy:>15} {s['train_seconds_mean']:>8.1f} "
                f"{s['trainable_params']:>11,}  {', '.join(marks)}"
            )
    return "\n".join(lines)


def advice_line(quadrant: str, task: dict) -> str:
    details = task["advice"]["details"]
    size, similarity = details.get("size", {}), details.get("similarity", {})
    scores = {k: (None if v is None else round(v, 4)) for k, v in similarity.get("scores", {}).items()}
    return (
        f"  advisor {quadrant}: {task['advice']['strategy']} ({task['advice']['quadrant']}), images per class "
        f"{size.get('images_per_class')}, scores {scores}, decided by {similarity.get('decided_by')}, "
        f"{task['advice']['seconds']:.1f}s; measured winner {task['winner']}"
    )


def report(tasks: dict[str, dict], advisor: dict | None, source: dict, wall: float, path: str) -> None:
    print(table(tasks), file=sys.stderr)
    print(f"  test images per task: {TEST_PER_CLASS * 5}; seeds per size {SEEDS}")
    print(f"  DAG defaults overridden: epochs {EPOCHS_OVERRIDE or 'none'}, patience {PATIENCE_OVERRIDE or 'none'}")
    for quadrant, task in tasks.items():
        for strategy in STRATEGY_ORDER:
            s = task["strategies"][strategy]
            print(f"BENCH matrix_{quadrant}_{strategy}_accuracy {s['accuracy_mean']:.4f}")
        print(f"BENCH matrix_{quadrant}_winner {task['winner']}")
    if advisor is None:
        print("  advisor not available yet: no advisor lines")
    else:
        for quadrant, task in tasks.items():
            print(advice_line(quadrant, task))
        print(f"BENCH matrix_advisor_agreement {advisor['agreement']:.2f}")
        print(f"  advisor agreement within the test set's standard error: {advisor['agreement_within_test_error']:.2f}")
        if advisor["assess_vs_finetune_time"] is not None:
            print(f"BENCH assess_vs_finetune_time {advisor['assess_vs_finetune_time']:.3f}")
    print(f"  wall time {wall:.0f}s on {os.cpu_count()} CPUs; 1-min load average {os.getloadavg()[0]:.1f} at the end")
    document = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "seeds": SEEDS,
        "test_images_per_class": TEST_PER_CLASS,
        "epochs_override": EPOCHS_OVERRIDE,
        "patience_override": PATIENCE_OVERRIDE,
        "lecture": LECTURE,
        "source_model": source,
        "tasks": tasks,
        "advisor": advisor,
        "wall_seconds": wall,
    }
    with open(path, "w") as f:
        json.dump(document, f, indent=1, default=str)
    print(f"  results written to {path}")


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    import logging

    from airflow_tl.runtime import prepare_torch_runtime

    if not os.environ.get("BENCH_MATRIX_VERBOSE"):
        logging.getLogger("airflow_tl").setLevel(logging.WARNING)  # 48 trainings' epoch lines; note() summarises

    prepare_torch_runtime()  # as the operators do, before torch loads
    _settings_from_env()
    path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("BENCH_MATRIX_JSON")
    path = path or os.path.join(tempfile.gettempdir(), "bench_matrix.json")
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="tl-bench-airflow-"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    from airflow_tl.demo.local_s3 import start_local_s3

    server = start_local_s3()
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = server.connection_uri()  # before anything imports Airflow
    try:
        run(server, path)
    finally:
        server.stop()


def run(server, path: str) -> None:
    import torch

    from airflow_tl.demo.seed import seed_demo
    from airflow_tl.hooks.s3 import s3_store
    from airflow_tl.models.folder import read_card

    note(f"local S3 at {server.endpoint_url}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    store = s3_store("aws_default")
    store.ensure_bucket(BUCKET)
    uris = seed_demo(store, bucket=BUCKET)
    card = read_card(store, uris.source_model)
    source = {"uri": uris.source_model, "architecture": card.architecture, "metrics": card.metrics}
    note(f"source model {uris.source_model} pretrained on digits 0-4, val accuracy {card.metrics}")
    tasks = build_tasks(store)
    for quadrant, task in tasks.items():
        note(f"--- {quadrant}")
        run_task(store, uris.source_model, quadrant, task)
    note("--- advisor")
    advisor = run_advisor(store, uris.source_model, tasks)
    report(tasks, advisor, source, time.monotonic() - _STARTED, path)
    note("done")


if __name__ == "__main__":
    main()
