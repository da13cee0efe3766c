"""Where the task links point: the dashboard's version page, and the checkpoints in the AWS console."""

from __future__ import annotations

import boto3
import pytest

from airflow_tl.dashboard.urls import version_page
from airflow_tl.operators.links import s3_console_url


def test_the_version_page_is_a_same_origin_path_under_airflows_base_path(monkeypatch):
    page = version_page("s3://b/reg/", "digits", "v3")
    assert page == "/airflow-tl/models/digits/versions/v3?registry=s3%3A%2F%2Fb%2Freg"
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/ml/")
    assert version_page("s3://b/reg", "a b", "v1").startswith("/ml/airflow-tl/models/a%20b/versions/v1?")


def test_checkpoints_link_to_the_aws_console_only_on_aws():
    aws = boto3.client("s3", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="y")
    assert s3_console_url(aws, "s3://ml-work/runs/tl_x/r1/checkpoints") == (
        "https://console.aws.amazon.com/s3/buckets/ml-work?region=eu-west-1&prefix=runs%2Ftl_x%2Fr1%2Fcheckpoints%2F"
    )


@pytest.mark.parametrize(
    "endpoint", ["http://127.0.0.1:9000", "https://minio.internal", "https://evil.com/amazonaws.com"]
)
def test_other_s3_endpoints_get_no_console_link(endpoint):
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="y")  # fmt: skip
    assert s3_console_url(client, "s3://ml-work/checkpoints") is None
