"""LP-FT's effect on full fine-tuning, on the matrix's four tasks (bench_matrix.py builds them).

For each task, full_finetune with its DAG defaults is trained ``SEEDS`` times without and with ``lp_ft`` (Kumar
et al. 2022: the new head fitted as a linear probe on the frozen features first, then everything fine-tuned),
on the same seeds, and scored on the same test images. The difference is paired by seed, so seed-to-seed
swings that hit both variants cancel.

Prints ``BENCH lpft_<quadrant>_accuracy_delta <mean of (with − without)>`` per task, ``BENCH lpft_accuracy_delta``
over all runs, and ``BENCH lpft_time_ratio`` (training time with ÷ without). About 8 minutes on 2 cores, most
of it the large tasks' fine-tuning. JSON goes to the first argument or ``<tempdir>/bench_lpft.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

import bench_matrix as matrix

SEEDS = 3


def run_variant(store, source_uri: str, task: dict, quadrant: str, seed: int, lp_ft: bool) -> dict:
    from airflow_tl.data.dataset import list_dataset
    from airflow_tl.evaluation.metrics import compute_metrics
    from airflow_tl.evaluation.predict import predict
    from airflow_tl.training.task import train

    config = dataclasses.replace(matrix.train_config("full_finetune", seed), lp_ft=lp_ft)
    started = time.perf_counter()
    result = train(
        store,
        model_uri=source_uri,
        config=config,
        output_uri=f"s3://{matrix.BUCKET}/lpft/{quadrant}/{'lpft' if lp_ft else 'ft'}/seed{seed}",
        checkpoint_uri=None,
        dataset_uri=task["dataset_uri"],
        layout="splits",
    )
    seconds = time.perf_counter() - started
    dataset = list_dataset(store, task["dataset_uri"], layout="splits", for_training=False)
    predictions = predict(store, result.model_uri, dataset, split="test")
    accuracy = compute_metrics(predictions.probs, predictions.labels, predictions.class_names).accuracy
    probe = result.card.training.get("linear_probe")
    return {"seed": seed, "lp_ft": lp_ft, "accuracy": accuracy, "train_seconds": seconds, "probe": probe}


def main() -> None:
    import logging

    from airflow_tl.runtime import prepare_torch_runtime

    logging.getLogger("airflow_tl").setLevel(logging.WARNING)
    prepare_torch_runtime()
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.gettempdir(), "bench_lpft.json")
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="tl-bench-airflow-"))
    from airflow_tl.demo.local_s3 import start_local_s3

    server = start_local_s3()
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = server.connection_uri()
    try:
        run(path)
    finally:
        server.stop()


def run(path: str) -> None:
    from airflow_tl.demo.seed import seed_demo
    from airflow_tl.hooks.s3 import s3_store

    store = s3_store("aws_default")
    store.ensure_bucket(matrix.BUCKET)
    source = seed_demo(store, bucket=matrix.BUCKET).source_model
    tasks = matrix.build_tasks(store)
    results: dict[str, list[dict]] = {}
    for quadrant, task in tasks.items():
        runs = results.setdefault(quadrant, [])
        for seed in range(SEEDS):
            for lp_ft in (False, True):
                runs.append(run_variant(store, source, task, quadrant, seed, lp_ft))
                r = runs[-1]
                matrix.note(
                    f"{quadrant} seed {seed} lp_ft={lp_ft}: accuracy {r['accuracy']:.3f}, {r['train_seconds']:.1f}s"
                )
    deltas, ratios = [], []
    for quadrant, runs in results.items():
        pairs = [(a, b) for a, b in zip(runs[::2], runs[1::2], strict=True)]
        task_deltas = [b["accuracy"] - a["accuracy"] for a, b in pairs]
        deltas += task_deltas
        ratios += [b["train_seconds"] / a["train_seconds"] for a, b in pairs]
        without = statistics.fmean(a["accuracy"] for a, _ in pairs)
        with_ = statistics.fmean(b["accuracy"] for _, b in pairs)
        matrix.note(f"{quadrant}: full_finetune {without:.3f}, with LP-FT {with_:.3f} (mean of {len(pairs)} seeds)")
        print(f"BENCH lpft_{quadrant}_accuracy_delta {statistics.fmean(task_deltas):+.4f}")
    print(f"BENCH lpft_accuracy_delta {statistics.fmean(deltas):+.4f}")
    print(f"BENCH lpft_time_ratio {statistics.fmean(ratios):.2f}")
    with open(path, "w") as fh:
        json.dump({"seeds": SEEDS, "results": results}, fh, indent=2)
    matrix.note(f"results in {path}")


if __name__ == "__main__":
    main()
