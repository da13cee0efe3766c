"""Parsing of the URIs airflow-tl accepts: ``s3://``, ``torchvision://`` and ``http(s)://``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

from airflow_tl.exceptions import InvalidURIError
from airflow_tl.redaction import redact

# S3 bucket naming rules, simplified: 3-63 chars of lowercase letters, digits, dots and hyphens.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
# torch hub convention: <name>-<hex sha256 prefix>.<ext>; the prefix is what is verified.
HUB_FILENAME = re.compile(r"^(?P<name>.+?)-(?P<sha>[0-9a-f]{8,64})\.(?P<ext>pth|pt|bin|ckpt|safetensors)$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._=-]+")
_SHA256_PIN = re.compile(r"^sha256=(?P<sha>[0-9a-fA-F]{64})$")
_WEIGHTS_EXTENSION = re.compile(r"\.(pth|pt|bin|ckpt|safetensors)$")


def slug(text: str) -> str:
    """Text made safe for one S3 key segment: Airflow run ids carry ':' and '+' from their timestamps."""
    return _UNSAFE_KEY_CHARS.sub("_", text).strip("_")


@dataclass(frozen=True)
class S3URI:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def join(self, *parts: str) -> S3URI:
        """A URI below this one; this one is treated as a folder."""
        key = "/".join([self.key.rstrip("/"), *(p.strip("/") for p in parts)]).lstrip("/")
        return S3URI(self.bucket, key)

    @property
    def folder_key(self) -> str:
        """The key as a folder prefix: empty for the bucket root, otherwise ending in '/'."""
        return self.key.rstrip("/") + "/" if self.key.strip("/") else ""


def parse_s3_uri(uri: str, *, what: str = "URI") -> S3URI:
    """Parse ``s3://bucket/key`` into bucket and key, naming the offending value on error."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise InvalidURIError(f"{what} must be an s3:// URI, got {redact(uri)!r}.")
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not _BUCKET.match(bucket):
        raise InvalidURIError(f"{what} {redact(uri)!r} has an invalid bucket name {redact('s3://' + bucket)[5:]!r}.")
    if "//" in key or key.startswith("/"):
        raise InvalidURIError(f"{what} {redact(uri)!r} has an empty path segment.")
    return S3URI(bucket, key)


@dataclass(frozen=True)
class TorchvisionURI:
    architecture: str
    weights: str | None  # None: the architecture only, randomly initialised

    def __str__(self) -> str:
        return f"torchvision://{self.architecture}" + (f"/{self.weights}" if self.weights else "")


def parse_torchvision_uri(uri: str) -> TorchvisionURI:
    """Parse ``torchvision://<arch>/<WEIGHTS>`` (``/<WEIGHTS>`` optional: architecture only)."""
    rest = uri[len("torchvision://") :].rstrip("/") if isinstance(uri, str) and uri.startswith("torchvision://") else ""
    arch, _, weights = rest.partition("/")
    if not _IDENTIFIER.match(arch or "-") or (weights and not _IDENTIFIER.match(weights)):
        raise InvalidURIError(
            f"Pretrained URI {redact(uri)!r} is not of the form torchvision://<architecture>/<WEIGHTS>, "
            "e.g. torchvision://resnet18/IMAGENET1K_V1."
        )
    return TorchvisionURI(arch, weights or None)


@dataclass(frozen=True)
class HubURL:
    url: str = field(repr=False)  # as given, credentials included: for the request only, never for messages
    filename: str
    name: str
    sha256_prefix: str | None  # what a torch-hub file name promises; None when the name follows no convention
    sha256: str | None = None  # the full hash pinned by #sha256=<64 hex>

    @property
    def expected(self) -> str:
        """The hash the content must have, or start with, for the message of a mismatch."""
        return self.sha256 or self.sha256_prefix or ""


def parse_hub_url(uri: str) -> HubURL:
    """Parse an http(s) URL of a weights file that says its own sha256.

    Either the file name follows torch hub's ``<name>-<sha256 prefix>.pth`` form, or the URL ends in
    ``#sha256=<64 hex digits>`` and the name may be anything; with both, they must agree.
    """
    parts = _split(uri, "Pretrained URI")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidURIError(f"Pretrained URI {redact(uri)!r} is not an http(s) URL.")
    filename = parts.path.rsplit("/", 1)[-1]
    pin = _sha256_pin(uri, parts.fragment)
    match = HUB_FILENAME.match(filename)
    if pin is None and not match:
        raise InvalidURIError(
            f"Pretrained URL {redact(uri)!r} must end in a file named <name>-<sha256 prefix>.pth "
            "(at least 8 lowercase hex digits), as torch hub publishes them, or carry the full hash as "
            "#sha256=<64 hex digits>; the hash is what makes it trusted."
        )
    if match and pin and not pin.startswith(match["sha"]):
        raise InvalidURIError(
            f"Pretrained URL {redact(uri)!r}: its file name promises a sha256 starting {match['sha']}, "
            f"but #sha256= pins {pin}."
        )
    if match:
        return HubURL(uri, filename, match["name"], match["sha"], pin)
    if not filename:
        raise InvalidURIError(f"Pretrained URL {redact(uri)!r} names no file.")
    return HubURL(uri, filename, _WEIGHTS_EXTENSION.sub("", filename), None, pin)


def _sha256_pin(uri: str, fragment: str) -> str | None:
    if not fragment:
        return None
    match = _SHA256_PIN.match(fragment)
    if not match:
        raise InvalidURIError(
            f"Pretrained URL {redact(uri)!r} has a fragment other than #sha256=<64 hex digits>, "
            "the only one understood."
        )
    return match["sha"].lower()


def _split(uri: str, what: str) -> SplitResult:
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except (ValueError, TypeError, AttributeError) as err:
        raise InvalidURIError(f"{what} {redact(uri)!r} is not a valid URL ({err}).") from err
    return parts


def source_kind(uri: str) -> str:
    """Which kind of pretrained source a URI names: 's3', 'torchvision' or 'http'."""
    if not isinstance(uri, str) or not uri:
        raise InvalidURIError(f"Pretrained URI must be a non-empty string, got {redact(uri)!r}.")
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    kinds = {"s3": "s3", "torchvision": "torchvision", "http": "http", "https": "http"}
    if scheme not in kinds:
        raise InvalidURIError(
            f"Pretrained URI {redact(uri)!r} has an unsupported scheme; use s3://<bucket>/<model folder>, "
            "torchvision://<architecture>/<WEIGHTS>, https://.../<name>-<sha256 prefix>.pth or "
            "https://...#sha256=<64 hex digits>."
        )
    return kinds[scheme]
