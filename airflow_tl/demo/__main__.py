"""``python -m airflow_tl.demo seed``: seed the demo data and source model into the S3 behind an AWS connection.

``python -m airflow_tl.demo run``: what ``make demo`` does: local S3 (unless a real endpoint is
configured), seed, run the DAGs, print what they did.

``python -m airflow_tl.demo airflow``: what ``make airflow`` does: local S3 (seeded, unless a real endpoint is
configured) and a local Airflow with our DAGs and dashboard on 127.0.0.1, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_tl.demo", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    seed = commands.add_parser("seed", help="upload the digits datasets and the pretrained source model")
    run = commands.add_parser("run", help="start local S3 if needed, seed, run the DAGs and report")
    ui = commands.add_parser("airflow", help="start local S3 if needed and Airflow with the dashboard, until Ctrl-C")
    ui.add_argument("--port", type=int, default=8080, help="the API server's port on 127.0.0.1 (default: 8080)")
    ui.add_argument("--no-seed", action="store_true", help="leave the local S3 empty instead of seeding the demo data")
    for sub in (seed, run, ui):
        sub.add_argument("--aws-conn-id", default="aws_default", help="Airflow AWS connection (default: aws_default)")
        sub.add_argument(
            "--bucket", default="airflow-tl-demo", help="bucket for the demo data (default: airflow-tl-demo)"
        )
    for sub in (seed, run):
        sub.add_argument("--seed", type=int, default=0, help="seed for the data split and pretraining (default: 0)")
        sub.add_argument("--force", action="store_true", help="retrain the source model even if it is already seeded")
        sub.add_argument("--epochs", type=int, default=8, help="pretraining epochs of the source model (default: 8)")
    run.add_argument(
        "--train-epochs", type=int, default=None, help="training epochs of every strategy (default: each DAG's own)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr, force=True
    )

    if args.command == "seed":
        from airflow_tl.demo.seed import seed_demo
        from airflow_tl.hooks.s3 import s3_store

        uris = seed_demo(
            s3_store(args.aws_conn_id), bucket=args.bucket, seed=args.seed, force=args.force, epochs=args.epochs
        )
        for name, uri in uris.as_dict().items():
            print(f"{name:15} {uri}")
        return 0

    if args.command == "airflow":
        from airflow_tl.demo.airflow_ui import run_airflow

        return run_airflow(aws_conn_id=args.aws_conn_id, bucket=args.bucket, port=args.port, seed=not args.no_seed)

    from airflow_tl.demo.runner import run_demo

    return run_demo(
        aws_conn_id=args.aws_conn_id,
        bucket=args.bucket,
        seed=args.seed,
        force=args.force,
        epochs=args.epochs,
        train_epochs=args.train_epochs,
    )


if __name__ == "__main__":
    sys.exit(main())
