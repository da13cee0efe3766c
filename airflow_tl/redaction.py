"""Keeping credentials that ride in URIs out of logs, error messages, model cards and XCom.

A URI carries secrets in two places: its userinfo (``https://user:password@host/``, or a token as the user
name) and the query string of a presigned or signed URL (S3's ``X-Amz-Signature``, GCS's ``X-Goog-Signature``,
an Azure SAS ``sig``, CloudFront's ``Signature``/``Policy``, an ``access_token``). ``redact`` replaces both with
``***`` and is what every log line, message, card and XCom shows. ``mask_uri_secrets`` also hands the secret
parts to Airflow's secrets masker, so even a stray log line of some library shows ``***``. ``request_parts``
gives what a download needs instead: the URL without userinfo or fragment, and the basic-auth header that
urllib does not build from ``user:pass@`` by itself.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from urllib.parse import unquote, unquote_plus

MASK = "***"

# Query (and fragment) parameters whose values are credentials, by name without case, '-' or '_'.
_SECRET_PARAMS = frozenset(
    {
        "sig",  # Azure SAS
        "signature",  # S3 v2, CloudFront, GCS v2, Alibaba OSS
        "policy",  # CloudFront custom policy: with the signature, it grants access
        "key",  # Google API keys
        "code",  # OAuth authorisation codes
        "auth",
        "authorization",
        "jwt",
        "password",
        "passwd",
        "pwd",
        "secret",
        "googleaccessid",  # GCS v2: the signer, paired with its signature
        "keypairid",  # CloudFront: the signer, paired with its signature
    }
)
# ... and any whose name contains one of these: X-Amz-Credential, X-Amz-Security-Token, X-Goog-Signature,
# access_token, api_key, client_secret, OSSAccessKeyId, private_token, ...
_SECRET_PARTS = ("signature", "token", "secret", "password", "credential", "apikey", "accesskey", "sessionkey")


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*$")


def is_secret_param(name: str) -> bool:
    """Whether a query parameter of this name carries a credential (case, '-' and '_' do not matter)."""
    key = unquote_plus(name).lower().replace("-", "").replace("_", "")
    return key in _SECRET_PARAMS or any(part in key for part in _SECRET_PARTS)


def redact(uri: str) -> str:
    """``uri`` with its userinfo and the values of credential parameters replaced by ``***``.

    Everything else stays as it was, byte for byte, so the result still says where the data came from.
    Never fails: anything but a URL-shaped string comes back unchanged.

    :param uri: any value; only strings with ``://`` change.
    """
    parts = _Parts.of(uri)
    if parts is None:
        return uri
    netloc = f"{MASK}@{parts.host}" if parts.userinfo is not None else parts.host
    query = parts.qmark + _redact_params(parts.query)
    # The fragment too: never sent, but OAuth implicit flows put tokens there; a #sha256= pin is kept.
    return f"{parts.scheme}://{netloc}{parts.path}{query}{parts.hash}{_redact_params(parts.fragment)}"


def secrets(uri: str) -> list[str]:
    """The secret parts of ``uri``, as written and percent-decoded: what the secrets masker should hide.

    :param uri: any value; only strings with ``://`` have secrets.
    """
    parts = _Parts.of(uri)
    if parts is None:
        return []
    found: list[str] = []
    if parts.userinfo is not None:
        user, has_password, password = parts.userinfo.partition(":")
        found += [password, unquote(password)] if has_password else [user, unquote(user)]
    for chunk in (parts.query, parts.fragment):
        for name, value in _params(chunk):
            if value and is_secret_param(name):
                found += [value, unquote_plus(value)]
    return sorted({s for s in found if s})


def request_parts(url: str) -> tuple[str, dict[str, str]]:
    """The URL to request and the headers it needs: userinfo moves into a basic-auth header, the fragment goes.

    :param url: an http(s) URL, possibly with ``user:password@``.
    """
    parts = _Parts.of(url)
    if parts is None:
        return url, {}
    headers = {}
    if parts.userinfo is not None:
        user, _, password = parts.userinfo.partition(":")
        token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    return f"{parts.scheme}://{parts.host}{parts.path}{parts.qmark}{parts.query}", headers


def mask_uri_secrets(uri: str) -> None:
    """Register the secret parts of ``uri`` with Airflow's secrets masker (task process and supervisor).

    :param uri: any string; without secrets nothing happens.
    """
    found = secrets(uri)
    if not found:
        return
    from airflow.sdk.log import mask_secret

    for secret in found:
        mask_secret(secret)


@dataclass(frozen=True)
class _Parts:
    """A URL cut where urlsplit cuts it, but keeping every byte, so it can be put back together unchanged."""

    scheme: str
    userinfo: str | None
    host: str  # host and port
    path: str
    qmark: str
    query: str
    hash: str
    fragment: str

    @classmethod
    def of(cls, uri: object) -> _Parts | None:
        """The parts of ``uri``, or None when it is not a string of the form ``scheme://...``."""
        if not isinstance(uri, str):
            return None
        rest, hash_, fragment = uri.partition("#")
        rest, qmark, query = rest.partition("?")
        scheme, sep, rest = rest.partition("://")
        if not sep or not _SCHEME.match(scheme):
            return None
        netloc, slash, path = rest.partition("/")
        userinfo, at, host = netloc.rpartition("@")
        return cls(scheme, userinfo if at else None, host, slash + path, qmark, query, hash_, fragment)


def _params(chunk: str) -> list[tuple[str, str]]:
    return [(name, value) for name, _, value in (item.partition("=") for item in chunk.split("&")) if name]


def _redact_params(chunk: str) -> str:
    if not chunk:
        return chunk
    items = []
    for item in chunk.split("&"):
        name, eq, value = item.partition("=")
        items.append(f"{name}={MASK}" if eq and value and is_secret_param(name) else item)
    return "&".join(items)
