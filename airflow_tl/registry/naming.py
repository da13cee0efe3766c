"""Short version names a person can say and type: ``v1``, ``v2``, ... one per DAG run (and candidate).

Two objects per version, both written with S3's If-None-Match, so two runs can never get the same name:

``<model>/allocations/<number, 9 digits>.json``
    claims the number. Zero-padded, so a listing returns them in order and the last one is the highest.
``<model>/runs/<sha256 of dag_id, run_id, candidate>.json``
    maps the run to its version, so every try of one run (a retried evaluation) gets the version its first
    try was given.

Both hold the same document: the version and the run that made it. A number whose run entry was never
written (the task died in between, or another try of the run won) stays claimed and unused: numbers are
skipped, never reused, so a version name never changes meaning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any

from airflow_tl.exceptions import InvalidArgumentError, PermanentError
from airflow_tl.registry.store import Registry, RegistryError, version_number

log = logging.getLogger(__name__)


class DamagedRunEntryError(RegistryError, PermanentError):
    """A run's entry exists but does not name a version: the registry was modified by hand."""


ALLOCATIONS = "allocations"
RUNS = "runs"
_OWN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MAX_ATTEMPTS = 50  # concurrent runs taking the next numbers first; each lost race costs one PUT


def check_own_name(version: str) -> None:
    """A name given by the user must be a valid folder name and must not take a number ``allocate_version`` gives."""
    if not isinstance(version, str) or not _OWN_NAME.match(version) or version_number(version) is not None:
        raise InvalidArgumentError(
            "Argument version must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit, and "
            f"not of the form v<number>, which is kept for allocated names. Provided value: {version!r}."
        )


def run_version(registry: Registry, *, dag_id: str, run_id: str, candidate: str | None = None) -> str | None:
    """The version already allocated to this run (and candidate), or None."""
    uri = registry.root.join(RUNS, _run_key(dag_id, run_id, candidate))
    found = registry.store.get_with_etag(uri)
    return None if found is None else _version_of(found[0], uri)


def allocate_version(registry: Registry, *, dag_id: str, run_id: str, candidate: str | None = None) -> str:
    """The run's version: the one an earlier try was given, or the next free ``v<n>``, claimed atomically.

    ``candidate`` tells apart several versions of one run (a tournament's contenders).
    """
    existing = run_version(registry, dag_id=dag_id, run_id=run_id, candidate=candidate)
    if existing is not None:
        log.info("Run %s of %s already has version %s; keeping it", run_id, dag_id, existing)
        return existing
    number = _highest_claimed(registry) + 1
    for _ in range(_MAX_ATTEMPTS):
        document = _document(f"v{number}", dag_id, run_id, candidate)
        if registry.store.put_if(
            registry.root.join(ALLOCATIONS, f"{number:09d}.json"), document, etag=None, content_type="application/json"
        ):
            break
        number += 1
    else:
        raise RegistryError(
            f"Could not claim a version number in {registry.uri} after {_MAX_ATTEMPTS} tries: other runs kept taking "
            "the next one. A retry will try again."
        )
    run_uri = registry.root.join(RUNS, _run_key(dag_id, run_id, candidate))
    if registry.store.put_if(run_uri, document, etag=None, content_type="application/json"):
        log.info("Allocated version v%d of %s to run %s of %s", number, registry.uri, run_id, dag_id)
        return f"v{number}"
    # Another try of this very run got there first (with another number): its version is the run's.
    found = registry.store.get_with_etag(run_uri)
    if found is None:
        raise RegistryError(f"{run_uri} was refused as existing and then not found; a retry will try again.")
    version = _version_of(found[0], run_uri)
    log.warning("Run %s of %s was given %s by a concurrent try; v%d stays unused", run_id, dag_id, version, number)
    return version


def allocation(registry: Registry, version: str) -> dict[str, Any] | None:
    """The run that was given ``version`` (dag_id, run_id, candidate), or None for a name not allocated here."""
    number = version_number(version)
    if number is None:
        return None
    found = registry.store.get_with_etag(registry.root.join(ALLOCATIONS, f"{number:09d}.json"))
    return None if found is None else json.loads(found[0])


def _highest_claimed(registry: Registry) -> int:
    prefix = registry.root.join(ALLOCATIONS).folder_key
    numbers = [0]
    for obj in registry.store.list(registry.root.join(ALLOCATIONS)):
        name = obj.key[len(prefix) :]
        if re.fullmatch(r"[0-9]{9}\.json", name):
            numbers.append(int(name[:9]))
    return max(numbers)


def _run_key(dag_id: str, run_id: str, candidate: str | None) -> str:
    return hashlib.sha256(json.dumps([dag_id, run_id, candidate]).encode()).hexdigest() + ".json"


def _document(version: str, dag_id: str, run_id: str, candidate: str | None) -> bytes:
    # No timestamp: two tries of one run racing for the same number write identical bytes, and S3Store.put_if
    # counts that as both having written it, which is right, since the run then has one version.
    document = {"version": version, "dag_id": dag_id, "run_id": run_id, "candidate": candidate}
    return json.dumps(document, sort_keys=True).encode()


def _version_of(raw: bytes, uri) -> str:
    try:
        version = json.loads(raw)["version"]
    except (ValueError, KeyError, TypeError) as err:
        raise DamagedRunEntryError(f"Run entry {uri} is not valid ({err}); it was not written by airflow-tl.") from err
    if not isinstance(version, str) or version_number(version) is None:
        raise DamagedRunEntryError(f"Run entry {uri} names {version!r}, not a version like 'v1'.")
    return version
