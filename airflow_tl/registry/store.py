"""Registry layout and the operations on it (DESIGN.md, "Where things live in S3").

``<registry_uri>/<model_name>/``
  ``versions/<version>/``  a model folder (``model.safetensors``, ``model.json`` and the data manifest),
                           ``report.html``, ``plots/*.png`` and ``metrics.json``, written last: a version
                           is complete exactly when its ``metrics.json`` exists.
  ``champion.json``        the current champion, replaced by one conditional PUT.
  ``history/<time>-<version>-<decision>.json``
                           one object per gate decision, never overwritten: an append-only log.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from airflow_tl.data.manifest import MANIFEST_FILE
from airflow_tl.exceptions import AirflowTLError, InvalidArgumentError, PermanentError
from airflow_tl.models.folder import CARD_FILE, WEIGHTS_FILE, read_card
from airflow_tl.storage.s3 import S3Store
from airflow_tl.uris import S3URI, parse_s3_uri

log = logging.getLogger(__name__)

CHAMPION_FILE = "champion.json"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
FORMAT_VERSION = 1
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHORT_NAME = re.compile(r"^v([1-9][0-9]{0,8})$")


class RegistryError(AirflowTLError):
    """The registry cannot do what was asked without breaking a version or the champion (a retry may help)."""


class ImmutableVersionError(RegistryError, PermanentError):
    """A version that may be serving would have to be rewritten with other weights."""


def version_number(version: str) -> int | None:
    """``7`` for ``"v7"`` (``registry.naming`` allocates those); None for another name (an older id, a user's own)."""
    match = _SHORT_NAME.match(version)
    return int(match.group(1)) if match else None


def sort_versions(versions: list[str]) -> list[str]:
    """Oldest first: names of other forms (ids from before short names, a user's own) by name, then v1, v2, ..."""
    return sorted(versions, key=lambda v: (0, 0, v) if version_number(v) is None else (1, version_number(v), ""))


@dataclass(frozen=True)
class Champion:
    version: str
    pointer: dict[str, Any]


@dataclass(frozen=True)
class ChampionState:
    """What ``champion.json`` says now: the champion (None if there is no usable one) and the ETag to
    replace it conditionally; ``problem`` explains a pointer that exists but cannot be used."""

    champion: Champion | None
    etag: str | None
    problem: str | None = None


class Registry:
    """One model's registry: ``<registry_uri>/<model_name>``."""

    def __init__(self, store: S3Store, registry_uri: str, model_name: str) -> None:
        if not isinstance(model_name, str) or not _MODEL_NAME.match(model_name):
            raise InvalidArgumentError(
                f"Argument model_name must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter or "
                f"digit). Provided value: {model_name!r}."
            )
        self.store = store
        self.model_name = model_name
        self.root: S3URI = parse_s3_uri(registry_uri, what="registry_uri").join(model_name)

    @property
    def uri(self) -> str:
        return str(self.root)

    def version_uri(self, version: str) -> str:
        return str(self.root.join("versions", version))

    # --- versions -------------------------------------------------------------------------------

    def is_complete(self, version: str) -> bool:
        return self.store.exists(self.root.join("versions", version, METRICS_FILE))

    def read_metrics(self, version: str) -> dict[str, Any]:
        return json.loads(self.store.get_bytes(self.root.join("versions", version, METRICS_FILE)))

    def write_version(
        self,
        version: str,
        *,
        model_uri: str,
        metrics: dict[str, Any],
        report_html: bytes,
        plots: dict[str, bytes],
        is_champion: bool = False,
    ) -> bool:
        """Write a complete version from a trained model folder; returns False when it was already complete
        with these very weights (a retried task), True when written.

        ``metrics.json`` goes first out and last in, so a reader never takes a half-written version for a
        complete one. A complete version holding other weights is rewritten only if it is not the champion:
        versions are immutable once they may be serving.
        """
        folder = self.root.join("versions", version)
        card = read_card(self.store, model_uri)
        if self.is_complete(version):
            existing = self.read_metrics(version).get("model_sha256")
            if existing == card.weights_sha256:
                log.info("Version %s is already complete with these weights; keeping it", folder)
                return False
            if is_champion:
                raise ImmutableVersionError(
                    f"Version {folder} is the champion and already holds other weights (sha256 {existing[:12]}); "
                    f"it cannot be replaced by {model_uri} (sha256 {card.weights_sha256[:12]})."
                )
            log.warning("Version %s holds other weights from an earlier try; rewriting it", folder)
        self.store.delete(folder.join(METRICS_FILE))
        source = parse_s3_uri(model_uri, what="model_uri")
        self.store.delete(folder.join(CARD_FILE))
        self.store.copy(source.join(WEIGHTS_FILE), folder.join(WEIGHTS_FILE))
        if card.lineage.get("data_manifest_sha256"):
            self.store.copy(source.join(MANIFEST_FILE), folder.join(MANIFEST_FILE))
        else:  # a model from before manifests: no stale manifest of an earlier try may vouch for it
            self.store.delete(folder.join(MANIFEST_FILE))
        self.store.copy(source.join(CARD_FILE), folder.join(CARD_FILE))
        for name, data in sorted(plots.items()):
            self.store.put_bytes(folder.join("plots", name), data, content_type="image/png")
        self.store.put_bytes(folder.join(REPORT_FILE), report_html, content_type="text/html; charset=utf-8")
        document = {
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "version": version,
            "model_uri": str(folder),
            "model_sha256": card.weights_sha256,
            "source_model_uri": model_uri,
            "written_at": _now(),
            **metrics,
        }
        self.store.put_bytes(folder.join(METRICS_FILE), _json(document), content_type="application/json")
        log.info("Registered version %s (sha256 %s)", folder, card.weights_sha256[:12])
        return True

    def versions(self) -> list[str]:
        """Complete versions, oldest first (``sort_versions``)."""
        prefix = self.root.join("versions").folder_key
        found = []
        for obj in self.store.list(self.root.join("versions")):
            parts = obj.key[len(prefix) :].split("/")
            if len(parts) == 2 and parts[1] == METRICS_FILE:
                found.append(parts[0])
        return sort_versions(found)

    # --- champion -------------------------------------------------------------------------------

    def champion(self) -> ChampionState:
        """The current champion. A pointer that is unreadable or names a version that is not complete counts
        as no champion (with a warning), so a damaged registry can still get a new champion."""
        uri = self.root.join(CHAMPION_FILE)
        found = self.store.get_with_etag(uri)
        if found is None:
            return ChampionState(None, None)
        raw, etag = found
        try:
            pointer = json.loads(raw)
            version = pointer["version"]
            if not isinstance(version, str) or not version:
                raise TypeError("version is not a non-empty string")
        except (ValueError, KeyError, TypeError) as err:
            problem = f"{uri} is not a valid champion pointer ({err}); treating the registry as having no champion"
            log.warning(problem)
            return ChampionState(None, etag, problem)
        if not self.is_complete(version):
            problem = (
                f"{uri} points at version {version!r}, which is missing or incomplete "
                f"({self.version_uri(version)}/{METRICS_FILE} does not exist); treating the registry as having "
                "no champion"
            )
            log.warning(problem)
            return ChampionState(None, etag, problem)
        return ChampionState(Champion(version, pointer), etag)

    def replace_champion(self, pointer: dict[str, Any], *, etag: str | None) -> bool:
        """Point ``champion.json`` at a complete version in one PUT, only if it is still at ``etag``.

        Returns False when another run replaced it first; the caller re-reads and decides again.
        """
        version = pointer["version"]
        if not self.is_complete(version):
            raise RegistryError(f"Refusing to make {self.version_uri(version)} the champion: it is not complete.")
        return self.store.put_if(
            self.root.join(CHAMPION_FILE), _json(pointer), etag=etag, content_type="application/json"
        )

    # --- history --------------------------------------------------------------------------------

    def record(self, event: dict[str, Any]) -> str:
        """Append one decision to the history; returns its URI. Keys sort by time and are never reused."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        decision = "promoted" if event.get("promoted") else "kept"
        uri = self.root.join("history", f"{stamp}-{event['version']}-{decision}.json")
        document = {"format_version": FORMAT_VERSION, "model_name": self.model_name, "recorded_at": _now(), **event}
        if not self.store.put_if(uri, _json(document), etag=None, content_type="application/json"):
            raise RegistryError(f"History entry {uri} already exists; history entries are never overwritten.")
        return str(uri)

    def history(self) -> list[dict[str, Any]]:
        """Every recorded decision, oldest first."""
        return [json.loads(self.store.get_bytes(o.uri)) for o in self.store.list(self.root.join("history"))]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=2, sort_keys=True).encode()
