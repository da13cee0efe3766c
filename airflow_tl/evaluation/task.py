"""One evaluation, start to finish: the plain-Python core of EvaluateOperator.

Score the trained model on the test split, write a complete registry version (model folder, plots,
report, then ``metrics.json``), score the champion on the same split, and promote through the gate.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from airflow_tl.data.dataset import list_dataset
from airflow_tl.evaluation.metrics import Metrics, compute_metrics
from airflow_tl.evaluation.predict import predict, unknown_classes
from airflow_tl.evaluation.report import render_plots, render_report
from airflow_tl.models.folder import read_card
from airflow_tl.registry.promotion import Decision, Gate, promote_if_better
from airflow_tl.registry.store import REPORT_FILE, Champion, Registry
from airflow_tl.storage.s3 import S3Store

log = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    version: str
    version_uri: str
    metrics: Metrics
    decision: Decision | None
    written: bool
    skipped_corrupt: int

    def summary(self) -> dict[str, Any]:
        """The XCom: small, JSON-able."""
        decision = self.decision
        return {
            "version": self.version,
            "model_uri": self.version_uri,
            "report_uri": f"{self.version_uri}/{REPORT_FILE}",
            "metrics": self.metrics.summary(),
            "promoted": bool(decision and decision.promoted),
            "reason": decision.reason if decision else "promotion disabled (promote=False)",
            "champion_before": decision.champion_before if decision else None,
            "champion_score": decision.champion_score if decision else None,
            "written": self.written,
            "skipped_corrupt": self.skipped_corrupt,
        }


def evaluate_and_register(
    store: S3Store,
    *,
    model_uri: str,
    dataset_uri: str,
    registry_uri: str,
    model_name: str,
    version: str,
    gate: Gate,
    promote: bool = True,
    seed: int = 0,
    batch_size: int = 64,
    threads: int = 8,
    skip_corrupt: bool = False,
    context: dict[str, Any] | None = None,
) -> EvaluationResult:
    """``context`` (dag_id, run_id, strategy, ...) is recorded in the version, the pointer and the history."""
    context = dict(context or {})
    registry = Registry(store, registry_uri, model_name)
    dataset = list_dataset(store, dataset_uri, seed=seed, for_training=False)
    card = read_card(store, model_uri)
    started = time.monotonic()
    predictions = predict(store, model_uri, dataset, batch_size=batch_size, threads=threads, skip_corrupt=skip_corrupt)
    metrics = compute_metrics(predictions.probs, predictions.labels, predictions.class_names)
    log.info(
        "Test split of %s: %s (%.1fs)",
        dataset.uri,
        ", ".join(f"{k} {v}" for k, v in metrics.summary().items()),
        time.monotonic() - started,
    )

    scores: dict[str, float | None] = {}

    def score_champion(champion: Champion) -> float | None:
        """The champion's gate metric on this very test split, computed once per champion."""
        if champion.version not in scores:
            scores[champion.version] = _score(store, registry, champion, dataset, card.class_names, gate, batch_size)
        return scores[champion.version]

    state = registry.champion()
    before = state.champion
    before_score = score_champion(before) if before is not None else None
    facts = {
        "model": f"{model_name} version {version}",
        "registry": registry.version_uri(version),
        "trained from": str(card.lineage.get("parent", "")),
        "dataset": dataset.uri,
        "test images": str(metrics.n),
        "gate": f"{gate.metric}, min_improvement {gate.min_improvement}, min_score {gate.min_score}",
        "champion at evaluation": _describe_champion(before, before_score, gate, state.problem),
        **{k: str(v) for k, v in context.items()},
    }
    plots = render_plots(card.history, metrics)
    report = render_report(title=f"{model_name} · {version}", metrics=metrics, plots=plots, facts=facts)
    document = {
        "metrics": metrics.to_dict(),
        "summary": metrics.summary(),
        "dataset_uri": dataset.uri,
        "dataset_fingerprint": dataset.fingerprint(),
        "split": "test",
        "gate": asdict(gate),
        "champion_at_evaluation": {"version": before.version if before else None, "score": before_score},
        "training": card.training,
        "context": context,
    }
    written = registry.write_version(
        version,
        model_uri=model_uri,
        metrics=document,
        report_html=report,
        plots=plots,
        is_champion=before is not None and before.version == version,
    )
    decision = None
    if promote:
        decision = promote_if_better(
            registry,
            version=version,
            score=metrics.summary()[gate.metric],
            gate=gate,
            score_champion=score_champion,
            context={**context, "metrics": metrics.summary()},
        )
    return EvaluationResult(
        version, registry.version_uri(version), metrics, decision, written, len(predictions.skipped_corrupt)
    )


def _score(store, registry: Registry, champion: Champion, dataset, classes: list[str], gate: Gate, batch_size: int):
    uri = registry.version_uri(champion.version)
    champion_classes = read_card(store, uri).class_names
    if champion_classes != classes or unknown_classes(dataset, "test", champion_classes):
        log.warning(
            "Champion %s predicts %s, the candidate %s: they cannot be compared on the same test split",
            champion.version, champion_classes, classes,
        )  # fmt: skip
        return None
    predictions = predict(store, uri, dataset, batch_size=batch_size, skip_corrupt=True)
    score = compute_metrics(predictions.probs, predictions.labels, predictions.class_names).summary()[gate.metric]
    log.info("Champion %s scores %s %.4f on the same test split", champion.version, gate.metric, score)
    return score


def _describe_champion(champion: Champion | None, score: float | None, gate: Gate, problem: str | None) -> str:
    if champion is None:
        return f"none ({problem})" if problem else "none"
    if score is None:
        return f"{champion.version} (not comparable: different classes)"
    return f"{champion.version}, {gate.metric} {score:.4f} on this test split"
