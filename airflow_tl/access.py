"""What DAG Params and operator arguments may point at, and over which transport weights may travel.

Whoever can trigger a DAG chooses its URIs, and the worker reads and writes them with its own credentials.
``[airflow_tl] allowed_uri_prefixes`` is how the people who run Airflow bound that: every URI argument is
checked against it before anything is read or written. A prefix is a folder, never a string prefix:
``s3://data`` admits ``s3://data/x`` but not ``s3://data-evil/x``; a scheme alone (``torchvision://``) admits
every URI of that scheme. URIs are compared without credentials, query or fragment, with the scheme and host
in lower case and default ports dropped; a ``..`` path segment is refused outright while prefixes are set,
because a server or proxy may resolve it to somewhere outside the prefix.

``[airflow_tl] allow_http`` decides whether weights may come over plain ``http://``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from airflow_tl import settings
from airflow_tl.exceptions import InvalidURIError
from airflow_tl.redaction import redact

_DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


@dataclass(frozen=True)
class Location:
    """A URI reduced to what the prefix check compares: scheme, authority and path."""

    scheme: str
    authority: str
    path: str

    def within(self, prefix: Location) -> bool:
        """Whether this location is ``prefix`` itself or lies below it (a scheme-only prefix admits its scheme)."""
        if self.scheme != prefix.scheme:
            return False
        if not prefix.authority and not prefix.path:
            return True
        folder = f"{prefix.authority}{prefix.path}".rstrip("/")
        mine = f"{self.authority}{self.path}"
        return mine.rstrip("/") == folder or mine.startswith(folder + "/")


def location(uri: str) -> Location | None:
    """``uri`` as a Location, or None when it is not a URI or cannot be compared safely.

    :param uri: the URI to reduce.
    """
    if not isinstance(uri, str) or not _SCHEME.match(uri):
        return None
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme in _DEFAULT_PORTS:  # DNS names ignore case; an S3 bucket or an architecture name does not
        host = parts.hostname or ""  # lower case, without userinfo or port
        host = f"[{host}]" if ":" in host else host
        authority = host + (f":{port}" if port is not None and port != _DEFAULT_PORTS[scheme] else "")
        path = unquote(parts.path)  # servers decode %2F and %2E before resolving a path
    else:
        authority, path = parts.netloc.rpartition("@")[2], parts.path  # S3 keys are literal
    if _has_parent_segment(path):
        return None
    return Location(scheme, authority, path)


def allowed_prefixes() -> list[str]:
    """``[airflow_tl] allowed_uri_prefixes`` as a list; empty means any URI is allowed."""
    return settings.get_list("allowed_uri_prefixes")


def is_allowed(uri: str, prefixes: Sequence[str]) -> bool:
    """Whether ``uri`` lies within one of ``prefixes`` (any URI, when there are none).

    :param uri: the URI to check.
    :param prefixes: allowed prefixes, as in ``[airflow_tl] allowed_uri_prefixes``.
    """
    if not prefixes:
        return True
    place = location(uri)
    return place is not None and any(
        (allowed := location(prefix)) is not None and place.within(allowed) for prefix in prefixes
    )


def check_allowed(name: str, uri: str | None, prefixes: Sequence[str] | None = None) -> None:
    """Refuse ``uri`` unless it lies within an allowed prefix; None (an argument not given) passes.

    :param name: the argument the URI was given as, for the message.
    :param uri: the URI to check.
    :param prefixes: allowed prefixes; default: ``[airflow_tl] allowed_uri_prefixes``.
    """
    prefixes = allowed_prefixes() if prefixes is None else list(prefixes)
    if uri is None or is_allowed(uri, prefixes):
        return
    segments = " (without '..' path segments)" if isinstance(uri, str) and _has_parent_segment(unquote(uri)) else ""
    raise InvalidURIError(
        f"Argument {name} accepts only URIs under {', '.join(prefixes)}{segments}, as [{settings.SECTION}] "
        f"allowed_uri_prefixes says. Provided value: {redact(uri)!r}."
    )


def check_transport(url: str, *, what: str = "Pretrained URL") -> None:
    """Refuse a plain ``http://`` URL unless ``[airflow_tl] allow_http`` is set; other schemes pass.

    :param url: the URL about to be requested.
    :param what: what the URL is, for the message.
    """
    if urlsplit(url).scheme.lower() != "http" or settings.get_bool("allow_http"):
        return
    raise InvalidURIError(
        f"{what} {redact(url)!r} uses plain http://, which is refused: what it sends can be read and altered on "
        f"the way, credentials included. Use https://, or set [{settings.SECTION}] allow_http = True "
        "(AIRFLOW__AIRFLOW_TL__ALLOW_HTTP=True) to allow it."
    )


def _has_parent_segment(path: str) -> bool:
    return ".." in re.split(r"[/\\?#]", path)
