"""Parsing of s3://, torchvision:// and http(s):// URIs."""

from __future__ import annotations

import pytest

from airflow_tl.exceptions import InvalidURIError
from airflow_tl.uris import (
    S3URI,
    HubURL,
    TorchvisionURI,
    parse_hub_url,
    parse_s3_uri,
    parse_torchvision_uri,
    source_kind,
)

# --- parse_s3_uri -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "bucket", "key"),
    [
        ("s3://my-bucket", "my-bucket", ""),
        ("s3://my-bucket/", "my-bucket", ""),
        ("s3://my-bucket/models", "my-bucket", "models"),
        ("s3://my-bucket/models/", "my-bucket", "models/"),
        ("s3://my-bucket/a/b/c.json", "my-bucket", "a/b/c.json"),
        ("s3://abc/x", "abc", "x"),
        ("s3://my.dotted.bucket/x", "my.dotted.bucket", "x"),
        ("s3://0bucket9/x", "0bucket9", "x"),
        ("s3://" + "a" * 63 + "/k", "a" * 63, "k"),
        ("s3://b-1/with space/and=sign", "b-1", "with space/and=sign"),
    ],
)
def test_parse_s3_uri_accepts(uri: str, bucket: str, key: str) -> None:
    parsed = parse_s3_uri(uri)
    assert parsed == S3URI(bucket, key)
    assert str(parsed) == f"s3://{bucket}/{key}"


@pytest.mark.parametrize(
    "uri",
    [
        "s3://ab/x",  # too short
        "s3://" + "a" * 64 + "/x",  # too long
        "s3://My-Bucket/x",  # upper case
        "s3://my_bucket/x",  # underscore
        "s3://-bucket/x",  # starts with a hyphen
        "s3://bucket-/x",  # ends with a hyphen
        "s3://.bucket/x",
        "s3:///key",  # empty bucket
        "s3://",
        "s3://buck et/x",
    ],
)
def test_parse_s3_uri_rejects_bad_bucket_names(uri: str) -> None:
    with pytest.raises(InvalidURIError) as err:
        parse_s3_uri(uri)
    assert repr(uri) in str(err.value)
    assert "invalid bucket name" in str(err.value)


@pytest.mark.parametrize("uri", ["s3://bucket/a//b", "s3://bucket//a", "s3://bucket/a/b//"])
def test_parse_s3_uri_rejects_empty_path_segments(uri: str) -> None:
    with pytest.raises(InvalidURIError, match="empty path segment") as err:
        parse_s3_uri(uri)
    assert repr(uri) in str(err.value)


@pytest.mark.parametrize(
    "uri",
    [
        "https://bucket/key",
        "gs://bucket/key",
        "S3://bucket/key",
        "s3:/bucket/key",
        "s3a://bucket/key",
        "bucket/key",
        "/local/path",
        "",
        " s3://bucket/key",
        None,
        123,
    ],
)
def test_parse_s3_uri_rejects_other_schemes(uri: object) -> None:
    with pytest.raises(InvalidURIError) as err:
        parse_s3_uri(uri)  # type: ignore[arg-type]
    assert str(err.value) == f"URI must be an s3:// URI, got {uri!r}."


def test_parse_s3_uri_names_what_was_given() -> None:
    with pytest.raises(InvalidURIError) as err:
        parse_s3_uri("s3://x/y", what="Dataset URI")
    assert str(err.value) == "Dataset URI 's3://x/y' has an invalid bucket name 'x'."


def test_parse_s3_uri_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        parse_s3_uri("ftp://bucket/key")


# --- S3URI ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "parts", "joined"),
    [
        ("", ("a",), "a"),
        ("", ("a", "b.json"), "a/b.json"),
        ("models", ("v1",), "models/v1"),
        ("models/", ("v1",), "models/v1"),
        ("models/", ("/v1/", "/model.json"), "models/v1/model.json"),
        ("a/b", (), "a/b"),
        ("a/b/", (), "a/b"),
    ],
)
def test_s3uri_join(key: str, parts: tuple[str, ...], joined: str) -> None:
    uri = S3URI("bucket", key)
    assert uri.join(*parts) == S3URI("bucket", joined)
    assert uri.key == key  # frozen: join returns a new URI


@pytest.mark.parametrize(
    ("key", "folder"),
    [("", ""), ("/", ""), ("models", "models/"), ("models/", "models/"), ("a/b", "a/b/"), ("a/b//", "a/b/")],
)
def test_s3uri_folder_key(key: str, folder: str) -> None:
    assert S3URI("bucket", key).folder_key == folder


def test_s3uri_round_trips_through_str() -> None:
    uri = S3URI("bucket", "a/b/c")
    assert parse_s3_uri(str(uri)) == uri


# --- parse_torchvision_uri --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "architecture", "weights"),
    [
        ("torchvision://resnet18/IMAGENET1K_V1", "resnet18", "IMAGENET1K_V1"),
        ("torchvision://efficientnet_b0/IMAGENET1K_V1/", "efficientnet_b0", "IMAGENET1K_V1"),
        ("torchvision://vit_b_16/DEFAULT", "vit_b_16", "DEFAULT"),
        ("torchvision://resnet18", "resnet18", None),
        ("torchvision://resnet18/", "resnet18", None),
        ("torchvision://mobilenet_v3_small", "mobilenet_v3_small", None),
    ],
)
def test_parse_torchvision_uri(uri: str, architecture: str, weights: str | None) -> None:
    parsed = parse_torchvision_uri(uri)
    assert parsed == TorchvisionURI(architecture, weights)
    expected = f"torchvision://{architecture}" + (f"/{weights}" if weights else "")
    assert str(parsed) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "torchvision://",
        "torchvision:///",
        "torchvision://18resnet/IMAGENET1K_V1",
        "torchvision://res-net/IMAGENET1K_V1",
        "torchvision://resnet18/IMAGENET1K-V1",
        "torchvision://resnet18/IMAGENET1K_V1/extra",
        "torchvision://resnet18/IMAGENET1K_V1?x=1",
        "torchvision://resnet 18",
    ],
)
def test_parse_torchvision_uri_rejects_malformed(uri: str) -> None:
    with pytest.raises(InvalidURIError) as err:
        parse_torchvision_uri(uri)
    assert repr(uri) in str(err.value)
    assert "torchvision://<architecture>/<WEIGHTS>" in str(err.value)


@pytest.mark.parametrize(
    "uri",
    [
        # Another scheme must not pass for torchvision:// by its length.
        "s3://my-bucket/resnet18",
        "gs://abcdefghiresnet18/X",
        # An empty architecture must not let the weights name slide into its place.
        "torchvision:///IMAGENET1K_V1",
    ],
)
def test_parse_torchvision_uri_rejects_what_is_not_its_form(uri: str) -> None:
    with pytest.raises(InvalidURIError) as err:
        parse_torchvision_uri(uri)
    assert repr(uri) in str(err.value)


# --- parse_hub_url ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "filename", "name", "sha"),
    [
        (
            "https://download.pytorch.org/models/resnet18-f37072fd.pth",
            "resnet18-f37072fd.pth",
            "resnet18",
            "f37072fd",
        ),
        ("http://127.0.0.1:8080/resnet18-0123456789.pth", "resnet18-0123456789.pth", "resnet18", "0123456789"),
        (
            "https://h.example/m/efficientnet_b0_rwightman-7f5810bc.pth",
            "efficientnet_b0_rwightman-7f5810bc.pth",
            "efficientnet_b0_rwightman",
            "7f5810bc",
        ),
        # The name may hold hyphens; the hash is the last hyphenated part.
        ("https://h.example/my-net-v2-abcdef12.pth", "my-net-v2-abcdef12.pth", "my-net-v2", "abcdef12"),
        ("https://h.example/x-" + "a" * 64 + ".pth", "x-" + "a" * 64 + ".pth", "x", "a" * 64),
        ("https://h.example/x-deadbeef.pth?download=1", "x-deadbeef.pth", "x", "deadbeef"),
    ],
)
def test_parse_hub_url(url: str, filename: str, name: str, sha: str) -> None:
    assert parse_hub_url(url) == HubURL(url, filename, name, sha)


@pytest.mark.parametrize(
    "url",
    [
        "https://h.example/resnet18-f37072f.pth",  # 7 hex digits
        "https://h.example/resnet18-F37072FD.pth",  # upper-case hex
        "https://h.example/resnet18-f37072fg.pth",  # not hex
        "https://h.example/resnet18.pth",  # no hash
        "https://h.example/resnet18_f37072fd.pth",  # no hyphen
        "https://h.example/-f37072fd.pth",  # no name
        "https://h.example/resnet18-f37072fd.pth.tmp",
        "https://h.example/resnet18-f37072fd.zip",
        "https://h.example/resnet18-f37072fd",
        "https://h.example/resnet18-f37072fd.pth/",
        "https://h.example/",
    ],
)
def test_parse_hub_url_requires_hub_file_name(url: str) -> None:
    with pytest.raises(InvalidURIError) as err:
        parse_hub_url(url)
    assert repr(url) in str(err.value)
    assert "<name>-<sha256 prefix>.pth" in str(err.value)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://h.example/resnet18-f37072fd.pth",
        "file:///tmp/resnet18-f37072fd.pth",
        "s3://bucket/resnet18-f37072fd.pth",
        "https:///resnet18-f37072fd.pth",  # no host
        "resnet18-f37072fd.pth",
        "//h.example/resnet18-f37072fd.pth",
    ],
)
def test_parse_hub_url_requires_http(url: str) -> None:
    with pytest.raises(InvalidURIError) as err:
        parse_hub_url(url)
    assert str(err.value) == f"Pretrained URI {url!r} is not an http(s) URL."


SHA = "f37072fd" + "0123456789abcdef" * 3 + "01234567"


@pytest.mark.parametrize(
    ("url", "filename", "name", "prefix"),
    [
        # With the full hash pinned, the file may be named anything.
        ("https://h.example/files/weights.pth#sha256=" + SHA, "weights.pth", "weights", None),
        ("https://h.example/resnet18.safetensors?download=1#sha256=" + SHA, "resnet18.safetensors", "resnet18", None),
        ("https://h.example/get?id=7#sha256=" + SHA, "get", "get", None),
        # Both: the name's prefix must agree with the pin.
        ("https://h.example/resnet18-f37072fd.pth#sha256=" + SHA, "resnet18-f37072fd.pth", "resnet18", "f37072fd"),
        ("https://h.example/x.pth#sha256=" + SHA.upper(), "x.pth", "x", None),
    ],
)
def test_parse_hub_url_with_a_full_sha256_pin(url: str, filename: str, name: str, prefix: str | None) -> None:
    hub = parse_hub_url(url)
    assert hub == HubURL(url, filename, name, prefix, SHA)
    assert hub.expected == SHA


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://h.example/x.pth#sha256=" + SHA[:63], "has a fragment other than #sha256=<64 hex digits>"),
        ("https://h.example/x.pth#sha256=" + SHA + "0", "has a fragment other than #sha256=<64 hex digits>"),
        ("https://h.example/x.pth#md5=" + SHA[:32], "has a fragment other than #sha256=<64 hex digits>"),
        ("https://h.example/x.pth#sha256=" + "g" * 64, "has a fragment other than #sha256=<64 hex digits>"),
        ("https://h.example/resnet18-deadbeef.pth#sha256=" + SHA, "promises a sha256 starting deadbeef, but"),
        ("https://h.example/#sha256=" + SHA, "names no file"),
    ],
)
def test_parse_hub_url_refuses_bad_pins(url: str, message: str) -> None:
    with pytest.raises(InvalidURIError) as err:
        parse_hub_url(url)
    assert message in str(err.value) and repr(url) in str(err.value)


def test_hub_url_without_a_pin_expects_the_name_prefix() -> None:
    hub = parse_hub_url("https://h.example/resnet18-f37072fd.pth")
    assert (hub.sha256, hub.expected) == (None, "f37072fd")


def test_hub_url_errors_and_repr_hide_credentials() -> None:
    url = "https://reader:hunter22@h.example/weights.pth?X-Amz-Signature=abc123"
    with pytest.raises(InvalidURIError) as err:
        parse_hub_url(url)
    assert "hunter22" not in str(err.value) and "abc123" not in str(err.value)
    assert "'https://***@h.example/weights.pth?X-Amz-Signature=***'" in str(err.value)
    hub = parse_hub_url(url + "#sha256=" + SHA)
    assert hub.url == url + "#sha256=" + SHA  # kept whole for the request
    assert "hunter22" not in repr(hub)


@pytest.mark.parametrize(
    "call",
    [
        lambda: parse_s3_uri("s3://key:hunter22@bucket/x"),
        lambda: parse_torchvision_uri("torchvision://u:hunter22@resnet18"),
        lambda: source_kind("gs://u:hunter22@bucket/x"),
    ],
)
def test_other_uri_errors_hide_credentials(call) -> None:
    with pytest.raises(InvalidURIError) as err:
        call()
    assert "hunter22" not in str(err.value) and "***@" in str(err.value)


# --- source_kind ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("s3://bucket/models/m", "s3"),
        ("torchvision://resnet18/IMAGENET1K_V1", "torchvision"),
        ("torchvision://resnet18", "torchvision"),
        ("http://127.0.0.1:8000/resnet18-f37072fd.pth", "http"),
        ("https://download.pytorch.org/models/resnet18-f37072fd.pth", "http"),
    ],
)
def test_source_kind(uri: str, kind: str) -> None:
    assert source_kind(uri) == kind


@pytest.mark.parametrize(
    "uri",
    [
        "gs://bucket/model",
        "file:///tmp/model.pth",
        "ftp://h/x-f37072fd.pth",
        "hf://org/model",
        "S3://bucket/model",
        "HTTPS://h/x-f37072fd.pth",
        "resnet18",
        "/tmp/model.pth",
        "://nothing",
    ],
)
def test_source_kind_rejects_unsupported_schemes(uri: str) -> None:
    with pytest.raises(InvalidURIError) as err:
        source_kind(uri)
    assert str(err.value).startswith(f"Pretrained URI {uri!r} has an unsupported scheme")
    for allowed in ("s3://", "torchvision://", "https://"):
        assert allowed in str(err.value)


@pytest.mark.parametrize("uri", ["", None, 42, ["s3://b/k"]])
def test_source_kind_rejects_non_strings(uri: object) -> None:
    with pytest.raises(InvalidURIError) as err:
        source_kind(uri)  # type: ignore[arg-type]
    assert str(err.value) == f"Pretrained URI must be a non-empty string, got {uri!r}."
