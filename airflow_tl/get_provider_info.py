"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from airflow_tl.settings import provider_config


def get_provider_info() -> dict:
    return {
        "package-name": "airflow-tl",
        "name": "Transfer Learning",
        "description": "Transfer learning pipelines for image models: fetch pretrained weights, extract features, "
        "freeze and train, evaluate and promote, with models versioned in S3.",
        "integrations": [
            {
                "integration-name": "Transfer Learning",
                "tags": ["software"],
            }
        ],
        "operators": [
            {
                "integration-name": "Transfer Learning",
                "python-modules": [
                    "airflow_tl.operators.fetch",
                    "airflow_tl.operators.extract",
                    "airflow_tl.operators.train",
                    "airflow_tl.operators.evaluate",
                    "airflow_tl.operators.assess",
                    "airflow_tl.operators.choose",
                    "airflow_tl.operators.tournament",
                    "airflow_tl.operators.wait",
                    "airflow_tl.operators.shards",
                    "airflow_tl.operators.predict",
                ],
            }
        ],
        "hooks": [
            {
                "integration-name": "Transfer Learning",
                "python-modules": ["airflow_tl.hooks.s3"],
            }
        ],
        "config": provider_config(),
    }
