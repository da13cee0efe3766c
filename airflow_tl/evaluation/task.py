"""One evaluation, start to finish: the plain-Python core of EvaluateOperator.

Check that the dataset is the one the model was trained on, score the model on the test split, write a
complete registry version (model folder with its data manifest, plots, report, then ``metrics.json``),
compare it with the champion on test images neither has seen, and promote through the gate.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from airflow_tl.data.dataset import check_unchanged, list_dataset
from airflow_tl.data.manifest import read_manifest
from airflow_tl.devices import placement
from airflow_tl.evaluation.compare import compare_with_champion
from airflow_tl.evaluation.metrics import Metrics, compute_metrics
from airflow_tl.evaluation.predict import predict
from airflow_tl.evaluation.report import render_plots, render_report
from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.models.folder import read_card
from airflow_tl.registry.naming import allocate_version
from airflow_tl.registry.promotion import Comparison, Decision, Gate, promote_if_better
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
    dataset_fingerprint: str

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
            "images_compared": decision.images_compared if decision else None,
            "written": self.written,
            "dataset_fingerprint": self.dataset_fingerprint,
            "skipped_corrupt": self.skipped_corrupt,
        }


def evaluate_and_register(
    store: S3Store,
    *,
    model_uri: str,
    dataset_uri: str,
    registry_uri: str,
    model_name: str,
    version: str | None,
    gate: Gate,
    promote: bool = True,
    seed: int = 0,
    layout: str = "auto",
    batch_size: int = 64,
    threads: int = 8,
    skip_corrupt: bool = False,
    context: dict[str, Any] | None = None,
    candidate: str | None = None,
    device: str = "auto",
) -> EvaluationResult:
    """``context`` (dag_id, run_id, strategy, ...) is recorded in the version, the pointer and the history.

    ``version=None`` takes the run's short name (``registry.naming``), by ``context``'s dag_id and run_id and
    ``candidate``: only once the model has been scored, so an evaluation that fails claims no name.
    """
    context = dict(context or {})
    if version is None and not (context.get("dag_id") and context.get("run_id")):
        raise InvalidArgumentError(
            "Argument version is needed outside a DAG run: a version is named after the run's dag_id and run_id, and "
            f"the context has neither. Provided context: {context!r}."
        )
    place = placement(device)
    registry = Registry(store, registry_uri, model_name)
    card, dataset = _test_listing(store, model_uri, dataset_uri, seed, layout)
    started = time.monotonic()
    predictions = predict(
        store, model_uri, dataset, batch_size=batch_size, threads=threads, skip_corrupt=skip_corrupt, place=place
    )
    metrics = compute_metrics(predictions.probs, predictions.labels, predictions.class_names)
    log.info(
        "Test split of %s: %s (%.1fs)",
        dataset.uri,
        ", ".join(f"{k} {v}" for k, v in metrics.summary().items()),
        time.monotonic() - started,
    )
    if version is None:
        version = allocate_version(registry, dag_id=context["dag_id"], run_id=context["run_id"], candidate=candidate)

    compare = _comparer(store, registry, predictions, dataset, gate, batch_size, threads, place)
    state = registry.champion()
    before = state.champion
    at_evaluation = compare(before) if before is not None else None
    facts = {
        "model": f"{model_name} version {version}",
        "registry": registry.version_uri(version),
        "trained from": str(card.lineage.get("parent", "")),
        "dataset": dataset.uri,
        "test images": str(metrics.n),
        "gate": (
            f"{gate.metric}, min_improvement {gate.min_improvement}, min_score {gate.min_score}, "
            f"min_test_images {gate.min_test_images}, on_class_change {gate.on_class_change}"
        ),
        "champion at evaluation": _describe_champion(before, at_evaluation, gate, state.problem),
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
        "champion_at_evaluation": {
            "version": before.version if before else None,
            "score": at_evaluation.champion_score if at_evaluation else None,
            # How many test images the comparison used, and how many the champion's manifest ruled out.
            "comparison": at_evaluation.summary() if at_evaluation else None,
        },
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
    decision = _promote(registry, version, metrics, gate, compare, context) if promote else None
    return EvaluationResult(
        version, registry.version_uri(version), metrics, decision, written, len(predictions.skipped_corrupt),
        dataset.fingerprint(),
    )  # fmt: skip


def gate_registered(
    store: S3Store,
    *,
    registry_uri: str,
    model_name: str,
    version: str,
    dataset_uri: str,
    gate: Gate,
    seed: int = 0,
    layout: str = "auto",
    batch_size: int = 64,
    threads: int = 8,
    context: dict[str, Any] | None = None,
    device: str = "auto",
) -> Decision:
    """Run the gate for a version already registered with ``promote=False`` (a tournament's winner).

    The version is scored again on the test split of the listing it was trained on, so the comparison with the
    champion leaves out the same images an ``evaluate_and_register`` with ``promote=True`` would have.
    """
    registry = Registry(store, registry_uri, model_name)
    uri = registry.version_uri(version)
    place = placement(device)
    _, dataset = _test_listing(store, uri, dataset_uri, seed, layout)
    predictions = predict(store, uri, dataset, batch_size=batch_size, threads=threads, skip_corrupt=True, place=place)
    metrics = compute_metrics(predictions.probs, predictions.labels, predictions.class_names)
    compare = _comparer(store, registry, predictions, dataset, gate, batch_size, threads, place)
    return _promote(registry, version, metrics, gate, compare, context or {})


def _test_listing(store: S3Store, model_uri: str, dataset_uri: str, seed: int, layout: str):
    """The model's card and the dataset's listing, checked to be the one the model was trained on."""
    card = read_card(store, model_uri)
    trained_on = read_manifest(store, model_uri, sha256=card.lineage.get("data_manifest_sha256"))
    dataset = list_dataset(store, dataset_uri, seed=seed, layout=layout, for_training=False)
    if trained_on is not None and trained_on.dataset_uri == dataset.uri:
        check_unchanged(dataset, trained_on, since=f"the training of {model_uri}")
    return card, dataset


def _promote(registry, version, metrics, gate, compare, context) -> Decision:
    """The gate on the candidate's whole test split (``metrics``), with ``compare`` against the champion."""
    return promote_if_better(
        registry,
        version=version,
        score=metrics.summary()[gate.metric],
        images=metrics.n,
        gate=gate,
        compare=compare,
        context={**context, "metrics": metrics.summary()},
    )


def _comparer(store, registry, predictions, dataset, gate, batch_size, threads, place):
    """``compare(champion)``: the candidate against a champion on images neither has seen, once per champion."""
    comparisons: dict[str, Comparison] = {}

    def compare(champion: Champion) -> Comparison:
        if champion.version not in comparisons:
            comparisons[champion.version] = compare_with_champion(
                store, registry, champion, candidate=predictions, dataset=dataset, gate=gate,
                batch_size=batch_size, threads=threads, place=place,
            )  # fmt: skip
        return comparisons[champion.version]

    return compare


def _describe_champion(
    champion: Champion | None, comparison: Comparison | None, gate: Gate, problem: str | None
) -> str:
    if champion is None:
        return f"none ({problem})" if problem else "none"
    if comparison is None or comparison.classes_differ:
        return f"{champion.version} (not comparable: {comparison.note if comparison else 'no comparison'})"
    if comparison.champion_score is None:
        return f"{champion.version} (no test images that neither model trained or validated on)"
    text = (
        f"{champion.version}: {gate.metric} {comparison.champion_score:.4f} against this model's "
        f"{comparison.score:.4f} on {comparison.images} test images neither trained or validated on "
        f"({comparison.excluded} left out as the champion's)"
    )
    return text + (f"; {comparison.note}" if comparison.note else "")
