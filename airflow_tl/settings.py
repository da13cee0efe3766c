"""Provider settings: Airflow's config section ``[airflow_tl]``, or ``AIRFLOW__AIRFLOW_TL__<KEY>`` in the environment.

Settings are for the people who run Airflow, not for whoever triggers a DAG: what DAG Params may point
at, and limits that protect workers. Each is read when it is used, so a worker picks up a changed
environment without a restart of anything but its task. ``OPTIONS`` is also what
``get_provider_info`` publishes, so ``airflow config list`` shows the same defaults the code uses.
Airflow reads provider info while its configuration loads, so nothing here imports Airflow at module level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SECTION = "airflow_tl"


@dataclass(frozen=True)
class Option:
    default: str
    type: str  # "string", "integer", "float" or "boolean", as provider_info's schema names them
    description: str
    example: str | None = None


OPTIONS: dict[str, Option] = {
    "allowed_uri_prefixes": Option(
        "",
        "string",
        "Comma-separated URI prefixes that DAG Params and operator arguments may point at (datasets, pretrained "
        "sources, registries, work prefixes), e.g. 's3://ml-data/,s3://ml-registry/,torchvision://'. Every URI is "
        "checked before anything is read or written. Empty: any URI is allowed.",
        "s3://ml-data/,s3://ml-registry/,torchvision://",
    ),
    "allow_http": Option(
        "False",
        "boolean",
        "Allow pretrained weights over plain http://. The sha256 in the file name or #sha256= pin is still "
        "checked, but the transport can be read and altered on the way; https:// is always allowed.",
        "True",
    ),
    "max_image_pixels": Option(
        "89478485",
        "integer",
        "Largest image (width x height) the loader decodes; larger ones are refused as decompression bombs. "
        "The default is Pillow's own warning threshold.",
        "200000000",
    ),
    "registries": Option(
        "",
        "string",
        "Comma-separated registry_uri values the ops dashboard shows, besides those named in the strategy DAGs' "
        "default Params.",
        "s3://ml-registry/models",
    ),
    "dashboard_aws_conn_id": Option(
        "aws_default",
        "string",
        "The Airflow connection the ops dashboard reads and writes the registries with, on the API server.",
        "aws_registry",
    ),
    # The advisor's matrix (assess/advice.py). Defaults measured by bench/bench_matrix.py: docs/choosing.md.
    "assess_large_images_per_class": Option(
        "50",
        "integer",
        "Training images per class at which AssessTransferOperator calls a dataset large rather than small.",
        "100",
    ),
    "assess_similarity_scores": Option(
        "leep_relative,logme_gain",
        "string",
        "Comma-separated transferability scores that decide similarity, in order of preference; the first one "
        "measured decides (LEEP needs the source model's own head). Known: leep_relative, logme_gain, probe_skill.",
        "logme_gain",
    ),
    "assess_leep_relative_threshold": Option(
        "0.15",
        "float",
        "leep_relative (the share of the target labels' entropy that LEEP's predictor explains: 0 when the source "
        "model's own predictions say nothing about the target labels, 1 when they say everything) at or above which "
        "the target data counts as similar to the pretraining data.",
        "0.4",
    ),
    "assess_logme_gain_threshold": Option(
        "0.3",
        "float",
        "logme_gain (LogME of the frozen features minus LogME of a constant feature: the per-image log Bayes factor "
        "of the features against the class frequencies alone) at or above which the target data counts as similar.",
        "0.5",
    ),
    "assess_probe_skill_threshold": Option(
        "0.65",
        "float",
        "probe_skill (linear-probe accuracy on held-out images, 0 at chance, 1 perfect) at or above which the "
        "target data counts as similar.",
        "0.9",
    ),
}


def get(key: str) -> str:
    """The raw string value of ``[airflow_tl] <key>``, or its default."""
    from airflow.sdk import conf

    option = OPTIONS[key]
    return conf.get(SECTION, key, fallback=option.default)


def get_list(key: str) -> list[str]:
    """A comma-separated setting as a list without blanks."""
    return [part.strip() for part in get(key).split(",") if part.strip()]


def get_int(key: str) -> int:
    from airflow_tl.exceptions import InvalidArgumentError

    raw = get(key).strip()
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidArgumentError(f"Setting [{SECTION}] {key} must be a positive integer. Provided value: {raw!r}.")
    return value


def get_float(key: str) -> float:
    from airflow_tl.exceptions import InvalidArgumentError

    raw = get(key).strip()
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InvalidArgumentError(f"Setting [{SECTION}] {key} must be a finite number. Provided value: {raw!r}.")
    return value


def get_bool(key: str) -> bool:
    from airflow_tl.exceptions import InvalidArgumentError

    raw = get(key).strip().lower()
    if raw in ("true", "1", "yes", "on"):
        return True
    if raw in ("false", "0", "no", "off", ""):
        return False
    raise InvalidArgumentError(f"Setting [{SECTION}] {key} must be True or False. Provided value: {get(key)!r}.")


def provider_config() -> dict[str, Any]:
    """The ``config`` entry of provider info."""
    return {
        SECTION: {
            "description": "Settings of the airflow-tl transfer-learning provider.",
            "options": {
                key: {
                    "description": option.description,
                    "version_added": "0.1.0",
                    "type": option.type,
                    "example": option.example,
                    "default": option.default,
                }
                for key, option in OPTIONS.items()
            },
        }
    }
