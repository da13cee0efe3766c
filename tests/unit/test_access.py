"""Allowed URI prefixes (folder boundaries, normalisation) and the plain-http policy."""

from __future__ import annotations

import urllib.request

import pytest

from airflow_tl.access import Location, allowed_prefixes, check_allowed, check_transport, is_allowed, location
from airflow_tl.exceptions import InvalidURIError, PermanentError
from airflow_tl.pretrained.download import _CheckedRedirects

PREFIXES = ["s3://ml-data", "s3://ml-registry/models/", "torchvision://", "https://Models.Example.com/zoo"]


@pytest.mark.parametrize(
    "uri",
    [
        "s3://ml-data",
        "s3://ml-data/",
        "s3://ml-data/datasets/flowers",
        "s3://ml-registry/models",
        "s3://ml-registry/models/flowers/versions/v1",
        "torchvision://resnet18/IMAGENET1K_V1",
        "torchvision://resnet18",
        "https://models.example.com/zoo/resnet18-f37072fd.pth",
        "HTTPS://MODELS.example.com:443/zoo/x.pth",  # scheme and host in any case, default port
        "https://user:pw@models.example.com/zoo/x.pth?sig=abc#sha256=" + "0" * 64,  # credentials, query: ignored
        "https://models.example.com/zoo/a%2Fb.pth",
    ],
)
def test_allowed(uri: str) -> None:
    assert is_allowed(uri, PREFIXES)
    check_allowed("dataset_uri", uri, PREFIXES)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://ml-data-evil/x",  # a prefix is a folder: no sibling with a longer name
        "s3://ml-dat/x",
        "s3://ml-registry/models-evil/x",
        "s3://ml-registry/other",
        "s3://other-bucket/ml-data/x",
        "https://models.example.com/zoo-evil/x.pth",
        "https://models.example.com.evil.net/zoo/x.pth",
        "https://models.example.com@evil.net/zoo/x.pth",  # userinfo, not the host
        "https://models.example.com:8443/zoo/x.pth",  # another port is another server
        "http://models.example.com/zoo/x.pth",  # another scheme
        "https://models.example.com/zoo/../admin/x.pth",
        "https://models.example.com/zoo/%2e%2e/admin/x.pth",
        "https://models.example.com/zoo/%2E%2E%2Fadmin/x.pth",
        "https://models.example.com/zoo\\..\\admin/x.pth",
        "s3://ml-data/../ml-secrets/x",
        "s3://ML-DATA/x",  # S3 bucket names are lower case; this one is another
        "gs://ml-data/x",
        "ml-data/x",
        "",
        "https://models.example.com:notaport/zoo/x",
    ],
)
def test_refused(uri: str) -> None:
    assert not is_allowed(uri, PREFIXES)
    with pytest.raises(InvalidURIError):
        check_allowed("dataset_uri", uri, PREFIXES)


def test_refusal_names_argument_redacted_uri_and_prefixes() -> None:
    with pytest.raises(InvalidURIError) as err:
        check_allowed(
            "pretrained_uri", "https://u:hunter22@evil.net/x.pth?sig=abc", ["s3://ml-data/", "torchvision://"]
        )
    assert str(err.value) == (
        "Argument pretrained_uri accepts only URIs under s3://ml-data/, torchvision://, as [airflow_tl] "
        "allowed_uri_prefixes says. Provided value: 'https://***@evil.net/x.pth?sig=***'."
    )
    assert isinstance(err.value, PermanentError)


def test_refusal_of_a_parent_segment_says_so() -> None:
    with pytest.raises(InvalidURIError) as err:
        check_allowed("model_uri", "s3://ml-data/../x", ["s3://ml-data"])
    assert "under s3://ml-data (without '..' path segments), as" in str(err.value)


@pytest.mark.parametrize("uri", ["s3://anything/at/all", "https://h/x", "whatever"])
def test_no_prefixes_allow_anything(uri: str) -> None:
    assert is_allowed(uri, [])
    check_allowed("x", uri, [])


def test_an_argument_not_given_passes() -> None:
    check_allowed("features_root", None, ["s3://ml-data"])


def test_prefixes_come_from_the_setting(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__AIRFLOW_TL__ALLOWED_URI_PREFIXES", " s3://ml-data/ , torchvision://,")
    assert allowed_prefixes() == ["s3://ml-data/", "torchvision://"]
    check_allowed("dataset_uri", "s3://ml-data/x")
    with pytest.raises(InvalidURIError, match="under s3://ml-data/, torchvision://, as"):
        check_allowed("dataset_uri", "s3://ml-data-2/x")
    monkeypatch.setenv("AIRFLOW__AIRFLOW_TL__ALLOWED_URI_PREFIXES", "")
    check_allowed("dataset_uri", "s3://ml-data-2/x")


@pytest.mark.parametrize(
    ("uri", "place"),
    [
        ("s3://b/k/", Location("s3", "b", "/k/")),
        ("HTTPS://U:P@Host.Example:443/A%20B?q#f", Location("https", "host.example", "/A B")),
        ("http://[::1]:8080/x", Location("http", "[::1]:8080", "/x")),
        ("torchvision://", Location("torchvision", "", "")),
    ],
)
def test_location(uri: str, place: Location) -> None:
    assert location(uri) == place


# --- plain http -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://h/x.pth", "HTTP://h/x.pth", "http://u:p@h/x.pth?sig=s"])
def test_plain_http_is_refused_by_default(url: str) -> None:
    with pytest.raises(InvalidURIError) as err:
        check_transport(url)
    assert str(err.value).startswith("Pretrained URL '" + url.replace("u:p@", "***@").replace("sig=s", "sig=***"))
    assert "set [airflow_tl] allow_http = True (AIRFLOW__AIRFLOW_TL__ALLOW_HTTP=True)" in str(err.value)


def test_plain_http_when_allowed(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__AIRFLOW_TL__ALLOW_HTTP", "True")
    check_transport("http://h/x.pth")


@pytest.mark.parametrize("url", ["https://h/x.pth", "s3://b/k", "torchvision://resnet18"])
def test_other_schemes_pass(url: str) -> None:
    check_transport(url)


def test_a_redirect_down_to_plain_http_is_refused() -> None:
    request = urllib.request.Request("https://h.example/x.pth")
    with pytest.raises(InvalidURIError, match=r"^Redirect target 'http://cdn.example/x.pth' uses plain http://"):
        _CheckedRedirects().redirect_request(request, None, 302, "Found", {}, "http://cdn.example/x.pth")
    follow = _CheckedRedirects().redirect_request(request, None, 302, "Found", {}, "https://cdn.example/x.pth")
    assert follow.full_url == "https://cdn.example/x.pth"
