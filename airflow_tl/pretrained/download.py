"""Downloading weights over HTTP(S), streamed to disk, hashed as they arrive, retried when transient.

Credentials in the URL (``user:password@``) are sent as a basic-auth header that never follows a redirect
to another URL, and the URL appears in logs and errors only redacted. Plain ``http://`` is refused unless
``[airflow_tl] allow_http`` is set, for the first request and for every redirect.
"""

from __future__ import annotations

import hashlib
import logging
import time
import urllib.error
import urllib.request
from typing import IO

from airflow_tl import __version__
from airflow_tl.access import check_transport
from airflow_tl.exceptions import AirflowTLError, IntegrityError, ObjectNotFoundError
from airflow_tl.redaction import redact, request_parts
from airflow_tl.uris import HubURL

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
_REPORT_EVERY = 64 * 1024 * 1024


def download(url: str, dest: IO[bytes], *, timeout: float = 60.0, attempts: int = 4) -> str:
    """Stream ``url`` into ``dest``; returns the sha256 of the bytes. Retries connection errors and 5xx.

    :param url: the http(s) URL, credentials and ``#fragment`` allowed (neither is sent as part of the URL).
    :param dest: a writable binary file; truncated before every attempt.
    :param timeout: seconds without progress before an attempt fails.
    :param attempts: tries in all.
    """
    check_transport(url)
    shown = redact(url)
    for attempt in range(1, attempts + 1):
        dest.seek(0)
        dest.truncate()
        try:
            return _download_once(url, shown, dest, timeout)
        except urllib.error.HTTPError as err:
            if err.code in (401, 403, 404, 410):
                raise ObjectNotFoundError(f"Cannot download {shown}: HTTP {err.code} {err.reason}.") from err
            if err.code < 500 and err.code != 429 or attempt == attempts:
                raise AirflowTLError(f"Cannot download {shown}: HTTP {err.code} {err.reason}.") from err
            reason = f"HTTP {err.code}"
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            if attempt == attempts:
                raise AirflowTLError(f"Cannot download {shown}: {getattr(err, 'reason', err)}.") from err
            reason = str(getattr(err, "reason", err))
        delay = 2.0 ** (attempt - 1)
        log.warning("Download of %s failed (%s); retry %d/%d in %.0fs", shown, reason, attempt, attempts - 1, delay)
        time.sleep(delay)
    raise AssertionError("unreachable")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but not from https:// down to a plain http:// that ``allow_http`` does not allow."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 (urllib's signature)
        check_transport(newurl, what="Redirect target")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _download_once(url: str, shown: str, dest: IO[bytes], timeout: float) -> str:
    target, auth = request_parts(url)
    request = urllib.request.Request(target, headers={"User-Agent": f"airflow-tl/{__version__}"})
    for name, value in auth.items():
        request.add_unredirected_header(name, value)  # urllib would otherwise send it on to any redirect target
    digest = hashlib.sha256()
    done, next_report, started = 0, _REPORT_EVERY, time.monotonic()
    with urllib.request.build_opener(_CheckedRedirects).open(request, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0)
        for chunk in iter(lambda: response.read(_CHUNK), b""):
            digest.update(chunk)
            dest.write(chunk)
            done += len(chunk)
            if done >= next_report:
                next_report += _REPORT_EVERY
                log.info("Downloaded %d/%s MiB of %s", done >> 20, total >> 20 if total else "?", shown)
    if total and done != total:
        raise ConnectionError(f"connection closed after {done} of {total} bytes")
    dest.flush()
    log.info("Downloaded %s (%.1f MiB in %.1fs)", shown, done / 2**20, time.monotonic() - started)
    return digest.hexdigest()


def check_sha256(actual: str, hub: HubURL) -> None:
    """Refuse content whose sha256 is not the one pinned by ``#sha256=`` or does not start as its name promises.

    :param actual: sha256 of the downloaded bytes, as hex.
    :param hub: the parsed URL, with what it expects.
    """
    if hub.sha256 and actual != hub.sha256:
        promise = f"its #sha256= pins {hub.sha256}"
    elif hub.sha256_prefix and not actual.startswith(hub.sha256_prefix):
        promise = f"its name promises a hash starting {hub.sha256_prefix}"
    else:
        return
    raise IntegrityError(
        f"sha256 mismatch for {redact(hub.url)}: {promise}, but the content hashes to {actual}. "
        "The file is corrupt or not what was published."
    )
