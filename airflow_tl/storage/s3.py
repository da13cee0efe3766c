"""A small S3 facade over a boto3 client, translating S3 errors into ones that name the URI.

Plain Python: hand it any boto3 S3 client. Inside Airflow, ``airflow_tl.hooks.s3.s3_store``
builds one from an AWS connection (endpoint, credentials, retries).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from botocore.exceptions import ClientError

from airflow_tl.exceptions import AirflowTLError, ObjectNotFoundError
from airflow_tl.uris import S3URI, parse_s3_uri

_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
# A conditional write lost to another writer: 412 for a failed If-Match / If-None-Match, 409 when S3 saw
# two conditional writes to the same key at once.
_CONDITION_FAILED = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    key: str
    size: int
    etag: str
    last_modified: float  # POSIX seconds


def _as_uri(uri: str | S3URI) -> S3URI:
    return uri if isinstance(uri, S3URI) else parse_s3_uri(uri)


class S3Store:
    """Reads and writes objects addressed by ``s3://`` URIs."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @contextmanager
    def _errors(self, uri: S3URI, action: str) -> Iterator[None]:
        try:
            yield
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                raise ObjectNotFoundError(f"Bucket {uri.bucket!r} does not exist (while {action} {uri}).") from err
            if code in _MISSING_KEY:
                raise ObjectNotFoundError(f"No object at {uri} (while {action}).") from err
            raise AirflowTLError(f"S3 error {code or 'unknown'} while {action} {uri}: {err}") from err

    def get_bytes(self, uri: str | S3URI) -> bytes:
        loc = _as_uri(uri)
        with self._errors(loc, "reading"):
            return self.client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()

    def put_bytes(self, uri: str | S3URI, data: bytes, content_type: str = "application/octet-stream") -> None:
        loc = _as_uri(uri)
        with self._errors(loc, "writing"):
            self.client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data, ContentType=content_type)

    def get_with_etag(self, uri: str | S3URI) -> tuple[bytes, str] | None:
        """The object's bytes and ETag (for a later ``put_if``), or None when there is no such object."""
        loc = _as_uri(uri)
        try:
            response = self.client.get_object(Bucket=loc.bucket, Key=loc.key)
        except ClientError as err:
            if str(err.response.get("Error", {}).get("Code", "")) in _MISSING_KEY:
                return None
            with self._errors(loc, "reading"):
                raise
        return response["Body"].read(), response["ETag"].strip('"')

    def put_if(
        self, uri: str | S3URI, data: bytes, *, etag: str | None, content_type: str = "application/octet-stream"
    ) -> bool:
        """Write only if the object is unchanged: still at ``etag``, or still absent when ``etag`` is None.

        One conditional PUT (S3's If-Match / If-None-Match), so a concurrent writer can never be overwritten
        unseen. Returns False when the condition failed: someone else wrote first.
        """
        loc = _as_uri(uri)
        condition = {"IfMatch": f'"{etag}"'} if etag is not None else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data, ContentType=content_type, **condition)
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            status = str(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in _CONDITION_FAILED or status in _CONDITION_FAILED:
                return False
            with self._errors(loc, "writing"):
                raise
        return True

    def copy(self, source: str | S3URI, target: str | S3URI) -> None:
        """Server-side copy (multipart for large objects): the bytes never pass through this worker."""
        src, dst = _as_uri(source), _as_uri(target)
        with self._errors(src, f"copying to {dst}"):
            self.client.copy({"Bucket": src.bucket, "Key": src.key}, dst.bucket, dst.key)

    def upload_file(self, path: str, uri: str | S3URI) -> None:
        """Upload a local file; large files go up in parallel multipart chunks."""
        loc = _as_uri(uri)
        with self._errors(loc, "writing"):
            self.client.upload_file(path, loc.bucket, loc.key)

    def download_to(self, uri: str | S3URI, fileobj: IO[bytes]) -> str:
        """Stream an object into ``fileobj`` and return the sha256 of what was written."""
        loc = _as_uri(uri)
        digest = hashlib.sha256()
        with self._errors(loc, "reading"):
            body = self.client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"]
            for chunk in iter(lambda: body.read(_CHUNK), b""):
                digest.update(chunk)
                fileobj.write(chunk)
        fileobj.flush()
        return digest.hexdigest()

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
            self.client.head_object(Bucket=loc.bucket, Key=loc.key)
            return True
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_KEY:
                return False
            with self._errors(loc, "checking"):
                raise

    def list(self, uri: str | S3URI) -> list[ObjectInfo]:
        """Every object under a folder URI, sorted by key. A missing bucket is an error; an empty folder is not."""
        loc = _as_uri(uri)
        prefix = loc.folder_key
        found: list[ObjectInfo] = []
        with self._errors(loc, "listing"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    found.append(
                        ObjectInfo(
                            f"s3://{loc.bucket}/{obj['Key']}",
                            obj["Key"],
                            obj["Size"],
                            obj["ETag"].strip('"'),
                            obj["LastModified"].timestamp(),
                        )
                    )
        return sorted(found, key=lambda o: o.key)

    def delete(self, uri: str | S3URI) -> None:
        loc = _as_uri(uri)
        with self._errors(loc, "deleting"):
            self.client.delete_object(Bucket=loc.bucket, Key=loc.key)

    def delete_folder(self, uri: str | S3URI) -> int:
        """Delete every object under a folder URI; returns how many were deleted."""
        loc = _as_uri(uri)
        keys = [o.key for o in self.list(loc)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            with self._errors(loc, "deleting"):
                self.client.delete_objects(Bucket=loc.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def ensure_bucket(self, bucket: str) -> None:
        """Create a bucket if it does not exist (used by the demo and tests, never by the pipelines)."""
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError:
            self.client.create_bucket(Bucket=bucket)
