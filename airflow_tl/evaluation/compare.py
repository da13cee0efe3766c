"""Candidate against champion on the same test images, none of which either model trained or validated on.

The candidate's test split comes from the current listing; the champion's data manifest says which images it
trained and validated on, and those are left out. Both models are then scored on exactly the rows both
predicted. A champion without a manifest (made before manifests existed) is compared on the candidate's
test images, and the comparison says that its training images could not be excluded.
"""

from __future__ import annotations

import logging

from airflow_tl.data.dataset import ImageDataset
from airflow_tl.data.manifest import read_manifest
from airflow_tl.devices import Placement
from airflow_tl.evaluation.metrics import compute_metrics
from airflow_tl.evaluation.predict import Predictions, predict
from airflow_tl.models.folder import read_card
from airflow_tl.registry.promotion import Comparison, Gate
from airflow_tl.registry.store import Champion, Registry
from airflow_tl.storage.s3 import S3Store

log = logging.getLogger(__name__)


def compare_with_champion(
    store: S3Store,
    registry: Registry,
    champion: Champion,
    *,
    candidate: Predictions,
    dataset: ImageDataset,
    gate: Gate,
    batch_size: int = 64,
    threads: int = 8,
    place: Placement | None = None,
) -> Comparison:
    """Score ``champion`` and the candidate's ``predictions`` on the test images both may be judged on."""
    uri = registry.version_uri(champion.version)
    card = read_card(store, uri)
    if card.class_names != candidate.class_names:
        note = f"champion {champion.version} predicts {card.class_names}, the candidate {candidate.class_names}"
        log.warning("Classes changed: %s", note)
        return Comparison(len(candidate.keys), None, None, classes_differ=True, note=note)

    manifest = read_manifest(store, uri, sha256=card.lineage.get("data_manifest_sha256"))
    seen = manifest.keys("train", "val") if manifest is not None else set()
    unseen = {key for key in candidate.keys if key not in seen}
    note = None
    if manifest is None:
        note = (
            f"champion {champion.version} has no data manifest (made before manifests existed), so its training "
            "images could not be excluded"
        )
        log.warning("Comparing on all %d candidate test images: %s", len(unseen), note)
    excluded = len(candidate.keys) - len(unseen)
    if not unseen:
        return Comparison(0, None, None, excluded=excluded, note=note)

    theirs = predict(
        store, uri, dataset.only(unseen), batch_size=batch_size, threads=threads, skip_corrupt=True, place=place
    )
    both = set(theirs.keys)
    ours = candidate.only(both)
    score = _score(ours, gate)
    champion_score = _score(theirs.only(both), gate)
    log.info(
        "On %d test images neither model trained or validated on (%d left out as the champion's): candidate %s %.4f, "
        "champion %s %.4f",
        len(both), excluded, gate.metric, score, champion.version, champion_score,
    )  # fmt: skip
    return Comparison(len(both), score, champion_score, excluded=excluded, note=note)


def _score(predictions: Predictions, gate: Gate) -> float:
    metrics = compute_metrics(predictions.probs, predictions.labels, predictions.class_names)
    return metrics.summary()[gate.metric]
