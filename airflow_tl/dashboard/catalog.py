"""What the ops dashboard shows, read from the registries in S3: plain Python, no Airflow, no web.

Every model of a registry with its champion and the trend of its gate metric; a model's versions, newest
first; the champion's history; two versions side by side. A registry that cannot be read, or a champion
pointer that names a missing version, comes back as a ``problem`` naming the URI, never as an exception, so
one broken registry or model does not hide the others.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_tl.data.manifest import read_manifest
from airflow_tl.exceptions import AirflowTLError
from airflow_tl.models.folder import read_card
from airflow_tl.registry.naming import allocation
from airflow_tl.registry.store import REPORT_FILE, Registry
from airflow_tl.storage.s3 import S3Store

log = logging.getLogger(__name__)

DEFAULT_METRIC = "accuracy"  # the trend's metric for a model that has no champion to name its gate's


@dataclass
class ModelSummary:
    registry_uri: str
    name: str
    uri: str
    versions: int = 0
    champion: dict[str, Any] | None = None  # version, metric, score, promoted_at, dag_id, run_id, strategy
    problem: str | None = None
    metric: str = DEFAULT_METRIC
    trend: list[dict[str, Any]] = field(default_factory=list)  # oldest first: version, score, promoted
    dag_ids: list[str] = field(default_factory=list)  # the DAGs that wrote its versions or its champion

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RegistryListing:
    uri: str
    models: list[ModelSummary]
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "problem": self.problem, "models": [m.to_dict() for m in self.models]}


def list_registry(store: S3Store, registry_uri: str) -> RegistryListing:
    """Every model under ``registry_uri`` (a folder holding ``versions/`` or ``champion.json``)."""
    try:
        names = store.list_folders(registry_uri)
    except (AirflowTLError, ValueError) as err:
        log.warning("Registry %s cannot be read: %s", registry_uri, err)
        return RegistryListing(registry_uri, [], f"{registry_uri} cannot be read: {err}")
    models = [summarise_model(store, registry_uri, name) for name in names]
    return RegistryListing(registry_uri, [m for m in models if m is not None])


@dataclass
class ModelView:
    """Everything a model's pages show, from one read of the registry: the summary, the versions newest first
    with the gate's last decision on each, and the history newest first."""

    summary: ModelSummary
    rows: list[dict[str, Any]]
    history: list[dict[str, Any]]


def summarise_model(store: S3Store, registry_uri: str, name: str) -> ModelSummary | None:
    """One model's champion, versions and gate-metric trend; None when ``name`` is not a model's folder."""
    read = _read(store, registry_uri, name)
    return None if read is None else read[0]


def read_model(store: S3Store, registry_uri: str, name: str) -> ModelView | None:
    """The summary, the versions with their decisions, and the history; None when ``name`` is not a model."""
    read = _read(store, registry_uri, name)
    if read is None:
        return None
    summary, registry, documents, champion = read
    history = registry.history()  # oldest first: the last decision on a version is the one that stands
    decisions = {event.get("version"): event for event in history}
    served = {event.get("version") for event in history if event.get("promoted")}
    rows = []
    for row in reversed(documents):
        event = decisions.get(row["version"])
        row["decision"] = ("promoted" if event["promoted"] else "kept") if event else "not gated"
        row["reason"] = event.get("reason") if event else None
        row["is_champion"] = row["version"] == champion
        row["was_champion"] = row["version"] in served
        rows.append(row)
    return ModelView(summary, rows, list(reversed(history)))


def version_rows(store: S3Store, registry_uri: str, name: str) -> list[dict[str, Any]]:
    """Every complete version, newest first, with what the Model page's table shows and the gate's decision."""
    view = read_model(store, registry_uri, name)
    return [] if view is None else view.rows


def _read(store: S3Store, registry_uri: str, name: str):
    """(summary, registry, every version's document oldest first, the champion's version), or None."""
    try:
        registry = Registry(store, registry_uri, name)
    except AirflowTLError:
        return None  # a folder whose name no model can have
    summary = ModelSummary(registry_uri, name, registry.uri)
    documents: list[dict[str, Any]] = []
    champion = None
    try:
        versions = registry.versions()
        state = registry.champion()
        if not versions and state.etag is None:
            return None  # not a model: neither a version nor a champion pointer
        summary.versions = len(versions)
        summary.problem = state.problem
        documents = [_version_document(registry, v) for v in versions]
        if state.champion is not None:
            champion = state.champion.version
            summary.champion = _champion(state.champion.pointer)
            summary.metric = state.champion.pointer.get("metric") or DEFAULT_METRIC
        summary.trend = [_trend_point(row, summary.metric, summary.champion) for row in documents]
        summary.dag_ids = sorted({row["dag_id"] for row in documents if row.get("dag_id")} | _champion_dag(summary))
    except (AirflowTLError, ValueError) as err:
        log.warning("Model %s cannot be read: %s", registry.uri, err)
        summary.problem = f"{registry.uri} cannot be read: {err}"
    return summary, registry, documents, champion


def history_rows(store: S3Store, registry_uri: str, name: str) -> list[dict[str, Any]]:
    """The champion's timeline, newest first: promotions, rollbacks and kept-champion decisions with reasons."""
    registry = Registry(store, registry_uri, name)
    return list(reversed(registry.history()))


def compare_versions(store: S3Store, registry_uri: str, name: str, a: str, b: str) -> dict[str, Any]:
    """Two versions side by side: headline metrics, confusion matrices, and the images one has and not the other."""
    registry = Registry(store, registry_uri, name)
    sides = {}
    for version in (a, b):
        if not registry.is_complete(version):
            raise VersionNotFoundError(f"{registry.version_uri(version)} is not a complete version of {name}.")
        document = registry.read_metrics(version)
        metrics = document.get("metrics", {})
        sides[version] = {
            "summary": document.get("summary", {}),
            "confusion": metrics.get("confusion"),
            "class_names": metrics.get("class_names"),
            "dataset_uri": document.get("dataset_uri"),
            "dataset_fingerprint": document.get("dataset_fingerprint"),
        }
    return {"a": a, "b": b, "versions": sides, "data": _manifest_change(store, registry, a, b)}


class VersionNotFoundError(AirflowTLError):
    """The version asked for does not exist or is not complete."""


def _manifest_change(store: S3Store, registry: Registry, a: str, b: str) -> dict[str, Any]:
    """Per split, how many images ``b`` has that ``a`` did not (added), and the reverse (removed)."""
    manifests = {}
    for version in (a, b):
        uri = registry.version_uri(version)
        card = read_card(store, uri)
        manifests[version] = read_manifest(store, uri, sha256=card.lineage.get("data_manifest_sha256"))
    if None in manifests.values():
        missing = [v for v, m in manifests.items() if m is None]
        return {"note": f"no data manifest in {', '.join(missing)} (made before manifests were kept)", "splits": {}}
    before, after = manifests[a], manifests[b]
    splits = {}
    for split in sorted(set(before.splits) | set(after.splits)):
        old, new = dict(before.splits.get(split, [])), dict(after.splits.get(split, []))
        splits[split] = {
            "added": sorted(set(new) - set(old)),
            "removed": sorted(set(old) - set(new)),
            "changed": sorted(k for k in set(old) & set(new) if old[k] != new[k]),
            "images": len(new),
        }
    return {"note": None, "splits": splits}


def _version_document(registry: Registry, version: str) -> dict[str, Any]:
    document = registry.read_metrics(version)
    context, training = document.get("context") or {}, document.get("training") or {}
    # An evaluation records its run in the context; only a version written otherwise needs its allocation read.
    run = {} if context.get("dag_id") and context.get("run_id") else allocation(registry, version) or {}
    return {
        "version": version,
        "uri": registry.version_uri(version),
        "report_uri": f"{registry.version_uri(version)}/{REPORT_FILE}",
        "written_at": document.get("written_at"),
        "strategy": context.get("strategy"),
        "dag_id": context.get("dag_id") or run.get("dag_id"),
        "run_id": context.get("run_id") or run.get("run_id"),
        "trainable_params": training.get("trainable_params"),
        "total_params": training.get("total_params"),
        "train_seconds": training.get("train_seconds"),
        "metrics": document.get("summary") or {},
        "dataset_uri": document.get("dataset_uri"),
        "dataset_fingerprint": document.get("dataset_fingerprint"),
    }


def _champion(pointer: dict[str, Any]) -> dict[str, Any]:
    keys = ("version", "metric", "score", "promoted_at", "dag_id", "run_id", "strategy", "previous")
    return {key: pointer.get(key) for key in keys}


def _champion_dag(summary: ModelSummary) -> set[str]:
    return {summary.champion["dag_id"]} if summary.champion and summary.champion.get("dag_id") else set()


def _trend_point(row: dict[str, Any], metric: str, champion: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "version": row["version"],
        "score": row["metrics"].get(metric),
        "is_champion": bool(champion and champion["version"] == row["version"]),
    }
