"""Credentials in URIs: redacted for display, listed for the masker, moved into a header for the request."""

from __future__ import annotations

import base64

import pytest

from airflow_tl.redaction import is_secret_param, redact, request_parts, secrets

PIN = "#sha256=" + "ab" * 32


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        # userinfo: a password, or a token as the user name
        ("https://user:hunter22@h.example/m/x.pth", "https://***@h.example/m/x.pth"),
        ("https://ghp_abcdef123@h.example/x.pth", "https://***@h.example/x.pth"),
        ("https://user:p%40ss@h.example:8443/x.pth", "https://***@h.example:8443/x.pth"),
        ("https://u:p@ss@h.example/x", "https://***@h.example/x"),  # the last '@' ends the userinfo
        ("s3://key:secret@bucket/k", "s3://***@bucket/k"),
        # S3 presigned (SigV4), with the session token of temporary credentials
        (
            "https://b.s3.amazonaws.com/k.pth?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20261129"
            "&X-Amz-Date=20261129T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
            "&X-Amz-Security-Token=FwoGZX&X-Amz-Signature=4f2a",
            "https://b.s3.amazonaws.com/k.pth?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***"
            "&X-Amz-Date=20261129T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
            "&X-Amz-Security-Token=***&X-Amz-Signature=***",
        ),
        # S3 SigV2 and GCS v2 signed URLs
        (
            "https://b.s3.amazonaws.com/k?AWSAccessKeyId=AKID&Expires=1700000000&Signature=abc%3D",
            "https://b.s3.amazonaws.com/k?AWSAccessKeyId=***&Expires=1700000000&Signature=***",
        ),
        (
            "https://storage.googleapis.com/b/k?GoogleAccessId=sa%40p.iam&Expires=1&Signature=xyz",
            "https://storage.googleapis.com/b/k?GoogleAccessId=***&Expires=1&Signature=***",
        ),
        # GCS v4
        (
            "https://storage.googleapis.com/b/k?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=sa%2F2026"
            "&X-Goog-Signature=00ff",
            "https://storage.googleapis.com/b/k?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=***"
            "&X-Goog-Signature=***",
        ),
        # Azure SAS: only sig is the secret
        (
            "https://acct.blob.core.windows.net/c/m.pth?sv=2022-11-02&ss=b&se=2026-12-01&sp=r&sig=Zm9v%2Bbar%3D",
            "https://acct.blob.core.windows.net/c/m.pth?sv=2022-11-02&ss=b&se=2026-12-01&sp=r&sig=***",
        ),
        # CloudFront
        (
            "https://d1.cloudfront.net/m.pth?Policy=eyJ&Signature=abc&Key-Pair-Id=K2",
            "https://d1.cloudfront.net/m.pth?Policy=***&Signature=***&Key-Pair-Id=***",
        ),
        # generic tokens and keys, any case, '-' or '_'
        (
            "https://h/x?access_token=t1&api-key=k1&TOKEN=t2&Key=k3&page=2",
            "https://h/x?access_token=***&api-key=***&TOKEN=***&Key=***&page=2",
        ),
        (
            "https://h/x?client_secret=s&password=p&private_token=q",
            "https://h/x?client_secret=***&password=***&private_token=***",
        ),
        # a fragment: the hash pin stays, a token does not
        ("https://h/x.pth" + PIN, "https://h/x.pth" + PIN),
        ("https://h/cb#access_token=tok&state=1", "https://h/cb#access_token=***&state=1"),
        ("https://u:p@h/x.pth?sig=s" + PIN, "https://***@h/x.pth?sig=***" + PIN),
    ],
)
def test_redact(uri: str, shown: str) -> None:
    assert redact(uri) == shown


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/models/resnet18",
        "s3:///key",
        "torchvision://resnet18/IMAGENET1K_V1",
        "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        "https://h/x?download=1&name=None&flag=True&empty=&novalue",
        "https://h/x?sig=",  # nothing to hide
        "https://h/a://b?c",
        "bucket/key?token=t",  # not a URI: nothing to parse, nothing changed
        "not a uri",
        "",
    ],
)
def test_redact_leaves_the_rest_byte_for_byte(uri: str) -> None:
    assert redact(uri) == uri


@pytest.mark.parametrize("value", [None, 42, ["https://u:p@h/"]])
def test_redact_passes_non_strings_through(value: object) -> None:
    assert redact(value) is value  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["sig", "Signature", "X-Amz-Signature", "x_amz_security_token", "KEY", "apiKey"])
def test_secret_params(name: str) -> None:
    assert is_secret_param(name)


@pytest.mark.parametrize("name", ["sv", "se", "sp", "X-Amz-Date", "X-Amz-Expires", "Expires", "download", "sha256"])
def test_params_that_are_not_secret(name: str) -> None:
    assert not is_secret_param(name)


@pytest.mark.parametrize(
    ("uri", "found"),
    [
        ("https://user:p%40ss@h/x?X-Amz-Signature=abc&x=1", ["abc", "p%40ss", "p@ss"]),
        ("https://ghp_token123@h/x", ["ghp_token123"]),
        ("https://h/x?sig=a%2Bb%3D&sv=1", ["a%2Bb%3D", "a+b="]),
        ("https://h/x#access_token=zz", ["zz"]),
        ("https://h/x.pth" + PIN, []),
        ("s3://bucket/key", []),
        (None, []),
    ],
)
def test_secrets_as_written_and_decoded(uri: str, found: list[str]) -> None:
    assert secrets(uri) == found


def test_request_parts_move_userinfo_into_basic_auth_and_drop_the_fragment() -> None:
    url, headers = request_parts("https://us%40er:p%3Ass@h.example:8443/m/x.pth?sig=s&v=1" + PIN)
    assert url == "https://h.example:8443/m/x.pth?sig=s&v=1"
    assert headers == {"Authorization": "Basic " + base64.b64encode(b"us@er:p:ss").decode()}


def test_request_parts_of_a_token_as_user() -> None:
    assert request_parts("https://tok@h/x")[1] == {"Authorization": "Basic " + base64.b64encode(b"tok:").decode()}


def test_request_parts_without_credentials_change_nothing_but_the_fragment() -> None:
    assert request_parts("https://h/x.pth?a=1" + PIN) == ("https://h/x.pth?a=1", {})
