"""Downloading weights over HTTP(S), streamed to disk, hashed as they arrive, retried when transient."""

from __future__ import annotations

import hashlib
import logging
import time
import urllib.error
import urllib.request
from typing import IO

from airflow_tl import __version__
from airflow_tl.exceptions import AirflowTLError, IntegrityError, ObjectNotFoundError

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
_REPORT_EVERY = 64 * 1024 * 1024


def download(url: str, dest: IO[bytes], *, timeout: float = 60.0, attempts: int = 4) -> str:
    """Stream ``url`` into ``dest``; returns the sha256 of the bytes. Retries connection errors and 5xx."""
    for attempt in range(1, attempts + 1):
        dest.seek(0)
        dest.truncate()
        try:
            return _download_once(url, dest, timeout)
        except urllib.error.HTTPError as err:
            if err.code in (401, 403, 404, 410):
                raise ObjectNotFoundError(f"Cannot download {url}: HTTP {err.code} {err.reason}.") from err
            if err.code < 500 and err.code != 429 or attempt == attempts:
                raise AirflowTLError(f"Cannot download {url}: HTTP {err.code} {err.reason}.") from err
            reason = f"HTTP {err.code}"
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            if attempt == attempts:
                raise AirflowTLError(f"Cannot download {url}: {getattr(err, 'reason', err)}.") from err
            reason = str(getattr(err, "reason", err))
        delay = 2.0 ** (attempt - 1)
        log.warning("Download of %s failed (%s); retry %d/%d in %.0fs", url, reason, attempt, attempts - 1, delay)
        time.sleep(delay)
    raise AssertionError("unreachable")


def _download_once(url: str, dest: IO[bytes], timeout: float) -> str:
    request = urllib.request.Request(url, headers={"User-Agent": f"airflow-tl/{__version__}"})
    digest = hashlib.sha256()
    done, next_report, started = 0, _REPORT_EVERY, time.monotonic()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0)
        for chunk in iter(lambda: response.read(_CHUNK), b""):
            digest.update(chunk)
            dest.write(chunk)
            done += len(chunk)
            if done >= next_report:
                next_report += _REPORT_EVERY
                log.info("Downloaded %d/%s MiB of %s", done >> 20, total >> 20 if total else "?", url)
    if total and done != total:
        raise ConnectionError(f"connection closed after {done} of {total} bytes")
    dest.flush()
    log.info("Downloaded %s (%.1f MiB in %.1fs)", url, done / 2**20, time.monotonic() - started)
    return digest.hexdigest()


def check_sha256_prefix(actual: str, expected_prefix: str, *, source: str) -> None:
    if not actual.startswith(expected_prefix):
        raise IntegrityError(
            f"sha256 mismatch for {source}: its name promises a hash starting {expected_prefix}, "
            f"but the content hashes to {actual}. The file is corrupt or not what was published."
        )
