"""A small S3 facade over a boto3 client, translating S3 errors into ones that name the URI.

Plain Python: hand it any boto3 S3 client. Inside Airflow, ``airflow_tl.hooks.s3.s3_store``
builds one from an AWS connection (endpoint, credentials, retries).

Three layers of retry, each for what the one below cannot see (docs/reliability.md, "S3 faults"):
botocore retries a request that failed (5xx, throttling, a connection that broke before the
response); this class repeats a whole operation whose response broke off mid-body, which botocore
does not retry; Airflow retries the task when an ``AirflowTLError`` still comes out. Not-found,
access denied and other refusals no retry can change are ``PermanentError``s.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, TypeVar

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    FlexibleChecksumError,
    IncompleteReadError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ResponseStreamingError,
)
from botocore.exceptions import ReadTimeoutError as BodyReadTimeoutError
from urllib3.exceptions import ProtocolError
from urllib3.exceptions import ReadTimeoutError as RawReadTimeoutError

from airflow_tl.exceptions import AccessDeniedError, AirflowTLError, ObjectNotFoundError, PermanentError
from airflow_tl.uris import S3URI, parse_s3_uri

log = logging.getLogger(__name__)

T = TypeVar("T")

# Files above this go up as multipart uploads streamed from disk, in parts of MULTIPART_CHUNKSIZE; below it,
# one PUT. The same threshold makes server-side copies multipart.
MULTIPART_THRESHOLD = 100 * 1024 * 1024
MULTIPART_CHUNKSIZE = 16 * 1024 * 1024
TRANSFER = TransferConfig(
    multipart_threshold=MULTIPART_THRESHOLD,
    multipart_chunksize=MULTIPART_CHUNKSIZE,
    max_concurrency=4,
    preferred_transfer_client="classic",
)
# How often one operation is tried when its response breaks off mid-body, and the back-off between tries.
ATTEMPTS = 5
BACKOFF_S = 0.25
MAX_BACKOFF_S = 8.0

_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
_DENIED = {
    "AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
    "AccountProblem", "InvalidToken",
}  # fmt: skip
# 4xx answers that a later try can get past: the client's own retries were spent, Airflow's may not be.
# ExpiredToken: a new try builds a new client with fresh credentials. NoSuchUpload: a multipart upload that was
# aborted under us; uploading again starts a new one.
_TRANSIENT_4XX = {
    "RequestTimeout", "SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "TooManyRequestsException",
    "RequestLimitExceeded", "OperationAborted", "ExpiredToken", "ExpiredTokenException", "RequestTimeTooSkewed",
    "NoSuchUpload",
}  # fmt: skip
# A conditional write lost to another writer: 412 for a failed If-Match / If-None-Match, 409 when S3 saw
# two conditional writes to the same key at once.
_CONDITION_FAILED = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
# A response that broke off after its status line. botocore retries a non-streaming answer (a listing) whose
# body broke off, but not a streaming one (GetObject): neither its body nor the body of its error answer.
_BROKEN_BODY = (ResponseStreamingError, IncompleteReadError, FlexibleChecksumError, ProtocolError, RawReadTimeoutError)
_CHUNK = 1024 * 1024


class S3RequestError(PermanentError):
    """S3 refused a request in a way that trying again cannot change (a 4xx other than not-found or access)."""


class BrokenResponseError(AirflowTLError):
    """An S3 response broke off mid-body (reset, timeout, short read); S3Store raises it once all attempts did."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object of a listing. Slots and no stored URI: a listing of millions holds millions of these."""

    bucket: str
    key: str
    size: int
    etag: str
    last_modified: float  # POSIX seconds

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def _as_uri(uri: str | S3URI) -> S3URI:
    return uri if isinstance(uri, S3URI) else parse_s3_uri(uri)


def classify_client_error(err: ClientError, uri: S3URI, action: str) -> AirflowTLError:
    """The airflow-tl error for an S3 error answer, naming the URI and what was being done."""
    code = str(err.response.get("Error", {}).get("Code", "")) or "unknown"
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "NoSuchBucket":
        return ObjectNotFoundError(f"Bucket {uri.bucket!r} does not exist (while {action} {uri}).")
    if code in _MISSING_KEY:
        return ObjectNotFoundError(f"No object at {uri} (while {action}).")
    if code in _DENIED:
        return AccessDeniedError(
            f"Access denied ({code}) while {action} {uri}: the connection's credentials may not do this; "
            "retrying with the same ones cannot help."
        )
    if code in _TRANSIENT_4XX or not isinstance(status, int) or status >= 500 or status == 429:
        return AirflowTLError(
            f"S3 error {code} (HTTP {status}) while {action} {uri}, after the client's retries: {err}"
        )
    if 400 <= status < 500:
        return S3RequestError(f"S3 refused {action} {uri}: {code} (HTTP {status}): {err}")
    return AirflowTLError(f"S3 error {code} (HTTP {status}) while {action} {uri}: {err}")


def _bucket_missing(err: ObjectNotFoundError) -> bool:
    """Whether not-found was said of the bucket rather than the key: an error, not an absent object."""
    cause = err.__cause__
    return isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") == "NoSuchBucket"


@contextmanager
def _errors(uri: S3URI, action: str) -> Iterator[None]:
    try:
        yield
    except ClientError as err:
        raise classify_client_error(err, uri, action) from err
    except _BROKEN_BODY as err:
        raise BrokenResponseError(f"The response broke off mid-body while {action} {uri}: {err}") from err
    except (NoCredentialsError, PartialCredentialsError) as err:
        raise AccessDeniedError(f"No usable credentials for {action} {uri}: {err}") from err
    except ParamValidationError as err:
        raise S3RequestError(f"Invalid request while {action} {uri}: {err}") from err
    except BotoCoreError as err:  # connection errors, timeouts: botocore has retried them already
        raise AirflowTLError(f"S3 request failed while {action} {uri}, after the client's retries: {err}") from err


def _chunks(body: Any, uri: S3URI) -> Iterator[bytes]:
    """A streaming body in chunks. A read timeout here is mid-body, past botocore's retries."""
    with body:
        while True:
            try:
                chunk = body.read(_CHUNK)
            except BodyReadTimeoutError as err:
                raise BrokenResponseError(f"The response stalled mid-body while reading {uri}: {err}") from err
            if not chunk:
                return
            yield chunk


class S3Store:
    """Reads and writes objects addressed by ``s3://`` URIs.

    :param client: a boto3 S3 client (its own retry settings apply to each request).
    :param attempts: how often one operation is tried when its response breaks off mid-body.
    """

    def __init__(self, client: Any, *, attempts: int = ATTEMPTS) -> None:
        self.client = client
        self.attempts = attempts
        self._jitter = random.Random()  # never the global RNG: training seeds and checkpoints that one

    def _retrying(self, uri: S3URI, action: str, operation: Callable[[], T]) -> T:
        """Run ``operation`` (a whole request, body included), again when its response broke off mid-body."""
        for attempt in range(1, self.attempts + 1):
            try:
                with _errors(uri, action):
                    return operation()
            except BrokenResponseError as err:
                if attempt == self.attempts:
                    raise BrokenResponseError(
                        f"Gave up {action} {uri}: the response broke off mid-body in all {attempt} attempts "
                        f"(last: {err.__cause__ or err})."
                    ) from err
                delay = min(BACKOFF_S * 2 ** (attempt - 1), MAX_BACKOFF_S) * self._jitter.uniform(0.5, 1.0)
                log.warning("%s; trying again in %.2f s (attempt %d of %d)", err, delay, attempt + 1, self.attempts)
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _get(self, loc: S3URI) -> dict[str, Any]:
        return self.client.get_object(Bucket=loc.bucket, Key=loc.key)

    def get_bytes(self, uri: str | S3URI) -> bytes:
        loc = _as_uri(uri)
        return self._retrying(loc, "reading", lambda: b"".join(_chunks(self._get(loc)["Body"], loc)))

    def put_bytes(self, uri: str | S3URI, data: bytes, content_type: str = "application/octet-stream") -> None:
        loc = _as_uri(uri)
        self._retrying(
            loc,
            "writing",
            lambda: self.client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data, ContentType=content_type),
        )

    def get_with_etag(self, uri: str | S3URI) -> tuple[bytes, str] | None:
        """The object's bytes and ETag (for a later ``put_if``), or None when there is no such object."""
        loc = _as_uri(uri)

        def read() -> tuple[bytes, str]:
            response = self._get(loc)
            return b"".join(_chunks(response["Body"], loc)), response["ETag"].strip('"')

        try:
            return self._retrying(loc, "reading", read)
        except ObjectNotFoundError as err:
            if _bucket_missing(err):
                raise
            return None

    def put_if(
        self, uri: str | S3URI, data: bytes, *, etag: str | None, content_type: str = "application/octet-stream"
    ) -> bool:
        """Write only if the object is unchanged: still at ``etag``, or still absent when ``etag`` is None.

        One conditional PUT (S3's If-Match / If-None-Match), so a concurrent writer can never be overwritten
        unseen. Returns False when the condition failed: someone else wrote first. A refusal while the object
        holds exactly ``data`` counts as written: that is what a retried PUT sees when its first attempt
        landed and only the response was lost.
        """
        loc = _as_uri(uri)
        condition = {"IfMatch": f'"{etag}"'} if etag is not None else {"IfNoneMatch": "*"}

        def put() -> bool:
            try:
                self.client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data, ContentType=content_type, **condition)
            except ClientError as err:
                code = str(err.response.get("Error", {}).get("Code", ""))
                status = str(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
                if code in _CONDITION_FAILED or status in _CONDITION_FAILED:
                    return False
                raise
            return True

        if self._retrying(loc, "writing", put):
            return True
        current = self.get_with_etag(loc)
        if current is not None and current[0] == data:
            log.info("%s already holds exactly what this conditional write wrote: an earlier attempt landed", loc)
            return True
        return False

    def copy(self, source: str | S3URI, target: str | S3URI) -> None:
        """Server-side copy (multipart above ``MULTIPART_THRESHOLD``): the bytes never pass through this worker."""
        src, dst = _as_uri(source), _as_uri(target)
        self._retrying(
            src,
            f"copying to {dst}",
            lambda: self.client.copy({"Bucket": src.bucket, "Key": src.key}, dst.bucket, dst.key, Config=TRANSFER),
        )
        self._abort_orphaned_uploads(dst)

    def upload_file(self, path: str, uri: str | S3URI) -> None:
        """Upload a local file, streamed from disk: one PUT, or a multipart upload above ``MULTIPART_THRESHOLD``."""
        loc = _as_uri(uri)

        def upload() -> None:
            # The transfer manager itself, not client.upload_file, which hides the S3 error code in a string.
            with create_transfer_manager(self.client, TRANSFER) as manager:
                manager.upload(path, loc.bucket, loc.key).result()

        self._retrying(loc, "writing", upload)
        if os.path.getsize(path) >= MULTIPART_THRESHOLD:
            self._abort_orphaned_uploads(loc)

    def _abort_orphaned_uploads(self, loc: S3URI) -> None:
        """Abort multipart uploads of ``loc`` still open after ours completed.

        A CreateMultipartUpload whose answer was lost is retried by botocore and leaves the first upload open,
        holding storage (billed) until aborted; so does a try killed mid-upload. Best effort: listing uploads
        needs its own permission, and the object itself is complete either way.
        """
        try:
            found = self.client.list_multipart_uploads(Bucket=loc.bucket, Prefix=loc.key).get("Uploads", [])
            for upload in (u for u in found if u["Key"] == loc.key):
                self._abort(loc, upload["UploadId"])
        except (ClientError, BotoCoreError, *_BROKEN_BODY) as err:
            log.warning("Could not check %s for multipart uploads left open: %s", loc, err)

    def _abort(self, loc: S3URI, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=loc.bucket, Key=loc.key, UploadId=upload_id)
        except ClientError as err:
            # An abort whose answer was lost is retried by botocore, and the retry finds the upload gone.
            if err.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise
        log.info("Aborted a multipart upload of %s left open by a lost answer or an earlier try", loc)

    def upload_written(self, uri: str | S3URI, write: Callable[[str], None]) -> str:
        """Let ``write`` create a temporary local file, upload it as ``upload_file`` does, and return its sha256.

        Large results (checkpoints, feature shards) go from disk to S3 in parts, never as one more copy in memory.
        """
        fd, path = tempfile.mkstemp(prefix="airflow-tl-")
        os.close(fd)
        try:
            write(path)
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(_CHUNK), b""):
                    digest.update(chunk)
            self.upload_file(path, uri)
            return digest.hexdigest()
        finally:
            os.unlink(path)

    def download_to(self, uri: str | S3URI, fileobj: IO[bytes]) -> str:
        """Stream an object into a seekable ``fileobj`` and return the sha256 of what was written.

        A try whose response broke off is thrown away: the file is cut back to where it started and hashed anew.
        """
        loc = _as_uri(uri)
        start = fileobj.tell()

        def download() -> str:
            fileobj.seek(start)
            fileobj.truncate()
            digest = hashlib.sha256()
            for chunk in _chunks(self._get(loc)["Body"], loc):
                digest.update(chunk)
                fileobj.write(chunk)
            fileobj.flush()
            return digest.hexdigest()

        return self._retrying(loc, "reading", download)

    @contextmanager
    def downloaded(self, uri: str | S3URI) -> Iterator[tuple[str, str]]:
        """Download an object to a temporary file; yields ``(path, sha256)`` and removes the file after."""
        fd, path = tempfile.mkstemp(prefix="airflow-tl-")
        try:
            with os.fdopen(fd, "wb") as fh:
                sha = self.download_to(uri, fh)
            yield path, sha
        finally:
            os.unlink(path)

    def exists(self, uri: str | S3URI) -> bool:
        loc = _as_uri(uri)
        try:
            self._retrying(loc, "checking", lambda: self.client.head_object(Bucket=loc.bucket, Key=loc.key))
        except ObjectNotFoundError as err:
            if _bucket_missing(err):
                raise
            return False
        return True

    def list(self, uri: str | S3URI, *, threads: int = 1) -> list[ObjectInfo]:
        """Every object under a folder URI, sorted by key. A missing bucket is an error; an empty folder is not.

        With ``threads`` > 1 the folders under ``uri`` are listed concurrently: the pages of one prefix can only
        be read one after another (each names the next), while S3 serves different prefixes in parallel. The
        folders are those directly under ``uri``, or one level further down when there are fewer than
        ``threads`` of them (``train/``, ``val/``, ``test/``).
        """
        loc = _as_uri(uri)
        if threads <= 1:
            found = self._retrying(loc, "listing", lambda: self._pages(loc, delimiter=False)[0])
        else:
            found = self._list_concurrently(loc, threads)
        return sorted(found, key=lambda o: o.key)

    def _pages(self, loc: S3URI, *, delimiter: bool) -> tuple[list[ObjectInfo], list[S3URI]]:
        """The objects under ``loc`` (only those directly in it with ``delimiter``) and its subfolders."""
        found, folders = [], []
        extra = {"Delimiter": "/"} if delimiter else {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=loc.bucket, Prefix=loc.folder_key, **extra):
            for obj in page.get("Contents", []):
                found.append(
                    ObjectInfo(
                        loc.bucket,
                        obj["Key"],
                        obj["Size"],
                        obj["ETag"].strip('"'),
                        obj["LastModified"].timestamp(),
                    )
                )
            folders += [S3URI(loc.bucket, p["Prefix"]) for p in page.get("CommonPrefixes", [])]
        return found, folders

    def _list_concurrently(self, loc: S3URI, threads: int) -> list[ObjectInfo]:
        def level(folder: S3URI) -> tuple[list[ObjectInfo], list[S3URI]]:
            return self._retrying(folder, "listing", lambda: self._pages(folder, delimiter=True))

        def everything(folder: S3URI) -> list[ObjectInfo]:
            return self._retrying(folder, "listing", lambda: self._pages(folder, delimiter=False)[0])

        found, folders = level(loc)
        with ThreadPoolExecutor(threads, thread_name_prefix="airflow-tl-list") as pool:
            if 0 < len(folders) < threads:
                deeper: list[S3URI] = []
                for objects, subfolders in pool.map(level, folders):
                    found += objects
                    deeper += subfolders
                folders = deeper
            for objects in pool.map(everything, folders):
                found += objects
        return found

    def list_folders(self, uri: str | S3URI) -> list[str]:
        """Names of the folders directly under a folder URI, sorted: one LIST per 1,000 of them, however many
        objects each holds. A missing bucket is an error; an empty folder is not."""
        loc = _as_uri(uri)

        def folders() -> list[str]:
            found = []
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=loc.bucket, Prefix=loc.folder_key, Delimiter="/"
            )
            for page in pages:
                found += [p["Prefix"][len(loc.folder_key) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
            return found

        return sorted(self._retrying(loc, "listing", folders))

    def delete(self, uri: str | S3URI) -> None:
        loc = _as_uri(uri)
        self._retrying(loc, "deleting", lambda: self.client.delete_object(Bucket=loc.bucket, Key=loc.key))

    def delete_folder(self, uri: str | S3URI) -> int:
        """Delete every object under a folder URI; returns how many were deleted."""
        loc = _as_uri(uri)
        keys = [o.key for o in self.list(loc)]
        for start in range(0, len(keys), 1000):
            batch = {"Objects": [{"Key": k} for k in keys[start : start + 1000]], "Quiet": True}
            self._retrying(loc, "deleting", lambda b=batch: self.client.delete_objects(Bucket=loc.bucket, Delete=b))
        return len(keys)

    def ensure_bucket(self, bucket: str) -> None:
        """Create a bucket if it does not exist (used by the demo and tests, never by the pipelines)."""
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError:
            self.client.create_bucket(Bucket=bucket)
