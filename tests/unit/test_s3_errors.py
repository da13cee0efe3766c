"""How S3 error answers become airflow-tl errors: absent, permanent, or worth another try."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from airflow_tl.exceptions import AccessDeniedError, AirflowTLError, ObjectNotFoundError, PermanentError
from airflow_tl.storage.s3 import S3RequestError, classify_client_error
from airflow_tl.uris import parse_s3_uri

URI = parse_s3_uri("s3://tl-bucket/runs/checkpoints/latest.json")


def answer(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("NoSuchKey", 404, ObjectNotFoundError),
        ("404", 404, ObjectNotFoundError),  # HEAD answers carry no body, so the code is the status
        ("NotFound", 404, ObjectNotFoundError),
        ("NoSuchBucket", 404, ObjectNotFoundError),
        ("AccessDenied", 403, AccessDeniedError),
        ("403", 403, AccessDeniedError),
        ("InvalidAccessKeyId", 403, AccessDeniedError),
        ("SignatureDoesNotMatch", 403, AccessDeniedError),
        ("InvalidArgument", 400, S3RequestError),
        ("InvalidObjectState", 403, S3RequestError),
        ("EntityTooLarge", 400, S3RequestError),
        ("PreconditionFailed", 412, S3RequestError),
    ],
)
def test_permanent_answers(code, status, expected):
    error = classify_client_error(answer(code, status), URI, "reading")
    assert type(error) is expected and isinstance(error, PermanentError)
    assert str(URI) in str(error) or URI.bucket in str(error)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("SlowDown", 503),
        ("InternalError", 500),
        ("ServiceUnavailable", 503),
        ("503", 503),
        ("TooManyRequests", 429),
        ("RequestTimeout", 400),
        ("ExpiredToken", 400),
        ("OperationAborted", 409),
        ("NoSuchUpload", 404),
    ],
)
def test_transient_answers_leave_the_retry_to_airflow(code, status):
    error = classify_client_error(answer(code, status), URI, "reading")
    assert type(error) is AirflowTLError and not isinstance(error, PermanentError)
    assert f"{code} (HTTP {status}) while reading {URI}" in str(error)


def test_access_denied_says_why_a_retry_cannot_help():
    error = classify_client_error(answer("AccessDenied", 403), URI, "reading")
    assert str(error).startswith(f"Access denied (AccessDenied) while reading {URI}")
    assert "retrying with the same ones cannot help" in str(error)
