"""The evaluation gate: a new version replaces the champion only when it is better, and every decision is logged.

Better means: on the same test images, none of which either model trained or validated on (the data
manifests say which), by the gate metric, and on enough of them (``min_test_images``). A candidate whose
classes differ from the champion's cannot be compared at all; ``on_class_change`` says what happens then.

Concurrent runs are safe: the champion is read with its ETag and replaced with a conditional PUT. A run
that loses the race re-reads the new champion, compares against it and decides again, so the pointer never
moves to a version that did not beat whatever it replaced.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from airflow_tl.evaluation.metrics import HIGHER_IS_BETTER, better, check_metric, passes_min_score
from airflow_tl.exceptions import InvalidArgumentError, PermanentError
from airflow_tl.registry.store import Champion, Registry, RegistryError

log = logging.getLogger(__name__)

ON_CLASS_CHANGE = ("keep", "promote", "fail")


class ClassChangeError(PermanentError):
    """The candidate's classes differ from the champion's and ``on_class_change='fail'``."""


@dataclass(frozen=True)
class Gate:
    """``metric`` must beat the champion's by ``min_improvement`` (in its own direction), reach ``min_score``, and
    be measured on at least ``min_test_images`` images; ``on_class_change`` decides when classes differ."""

    metric: str = "accuracy"
    min_improvement: float = 0.0
    min_score: float | None = None
    min_test_images: int = 50
    on_class_change: str = "keep"

    def __post_init__(self) -> None:
        check_metric(self.metric)
        if not _number(self.min_improvement) or self.min_improvement < 0:
            raise InvalidArgumentError(
                f"Argument min_improvement must be a number >= 0. Provided value: {self.min_improvement!r}."
            )
        if self.min_score is not None and not _number(self.min_score):
            raise InvalidArgumentError(
                f"Argument min_score must be a number or None. Provided value: {self.min_score!r}."
            )
        count = self.min_test_images
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise InvalidArgumentError(
                f"Argument min_test_images must be a positive integer. Provided value: {count!r}."
            )
        if self.on_class_change not in ON_CLASS_CHANGE:
            raise InvalidArgumentError(
                "Argument on_class_change accepts only 'keep', 'promote' and 'fail'. "
                f"Provided value: {self.on_class_change!r}."
            )


@dataclass(frozen=True)
class Comparison:
    """The candidate against one champion, on the test images both may be judged on."""

    images: int  # test images scored by both, none of which either trained or validated on
    score: float | None  # the candidate's gate metric on them (None when there are none)
    champion_score: float | None  # the champion's, on the same images; None when not comparable
    excluded: int = 0  # candidate test images left out because the champion trained or validated on them
    classes_differ: bool = False
    note: str | None = None  # e.g. the champion has no data manifest

    def summary(self) -> dict[str, Any]:
        return asdict(self)


Compare = Callable[[Champion], Comparison]


@dataclass
class Decision:
    version: str
    promoted: bool
    reason: str
    metric: str
    score: float
    champion_before: str | None
    champion_score: float | None
    images_compared: int
    comparison: dict[str, Any] | None = None
    history_uri: str | None = None

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def decide(gate: Gate, score: float, images: int, champion: Champion | None, comparison: Comparison | None):
    """Whether the candidate should become the champion, and why, in words for the log and the history.

    ``score`` and ``images`` are the candidate's own test split; ``comparison`` is against ``champion``.
    Returns ``(promoted, reason)``; raises ClassChangeError for ``on_class_change='fail'``.
    """
    if not passes_min_score(gate.metric, score, gate.min_score):
        bound = "at least" if HIGHER_IS_BETTER[gate.metric] else "at most"
        return False, f"{gate.metric} {score:.4f} misses min_score: it must be {bound} {gate.min_score}"
    if champion is None:
        return _enough(gate, images, "test images") or (True, "there is no champion yet")
    if comparison is None:
        raise ValueError("a champion needs a comparison")
    if comparison.classes_differ:
        return _class_change(gate, champion, comparison, images)
    unseen = "test images that neither model trained or validated on"
    too_few = _enough(gate, comparison.images, unseen)
    if too_few:
        return too_few
    direction = "higher" if HIGHER_IS_BETTER[gate.metric] else "lower"
    margin = f"by at least {gate.min_improvement}" if gate.min_improvement else "at all"
    where = f"the same {comparison.images} {unseen}" + (f"; {comparison.note}" if comparison.note else "")
    if better(gate.metric, comparison.score, comparison.champion_score, gate.min_improvement):
        verdict = f"beats champion {champion.version}'s {comparison.champion_score:.4f}"
        return (
            True,
            f"{gate.metric} {comparison.score:.4f} {verdict} on {where} ({direction} is better, needed {margin})",
        )
    verdict = f"does not beat champion {champion.version}'s {comparison.champion_score:.4f} {margin}"
    return False, f"{gate.metric} {comparison.score:.4f} {verdict} on {where} ({direction} is better)"


def _enough(gate: Gate, images: int, what: str) -> tuple[bool, str] | None:
    if images >= gate.min_test_images:
        return None
    return False, (
        f"only {images} {what}, fewer than min_test_images={gate.min_test_images}: too few to trust a promotion; "
        "add test images or lower min_test_images"
    )


def _class_change(gate: Gate, champion: Champion, comparison: Comparison, images: int) -> tuple[bool, str]:
    what = f"the classes changed ({comparison.note}): the candidate cannot be compared with champion {champion.version}"
    if gate.on_class_change == "fail":
        raise ClassChangeError(f"Not promoting: {what}; on_class_change='fail'.")
    if gate.on_class_change == "keep":
        return False, f"{what}; on_class_change='keep' keeps the champion until a run sets it to 'promote'"
    return _enough(gate, images, "test images") or (True, f"{what}; on_class_change='promote' promotes it")


def promote_if_better(
    registry: Registry,
    *,
    version: str,
    score: float,
    images: int,
    gate: Gate,
    compare: Compare,
    context: dict[str, Any],
    attempts: int = 5,
) -> Decision:
    """Run the gate for a complete ``version`` and promote it if it passes; record the decision in the history.

    ``score`` and ``images`` are the candidate's gate metric and image count on its whole test split;
    ``compare`` scores it against a champion (see Comparison). ``context`` (dag_id, run_id, metrics summary,
    ...) goes into the champion pointer and the history entry.
    """
    for attempt in range(1, attempts + 1):
        state = registry.champion()
        champion = state.champion
        if champion is not None and champion.version == version:
            return _already_champion(registry, version, score, images, gate, champion, context)
        comparison = compare(champion) if champion is not None else None
        try:
            promoted, reason = decide(gate, score, images, champion, comparison)
        except ClassChangeError as err:
            decision = _decision(version, False, str(err), gate, score, images, champion, comparison)
            _record(registry, decision, gate, state.problem, context)
            raise
        if promoted:
            pointer = {
                "format_version": 1,
                "model_name": registry.model_name,
                "version": version,
                "model_uri": registry.version_uri(version),
                "metric": gate.metric,
                "score": score,
                "previous": champion.version if champion else None,
                "promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **context,
            }
            if not registry.replace_champion(pointer, etag=state.etag):
                log.warning(
                    "%s/champion.json changed while this run was deciding (attempt %d of %d); deciding again against "
                    "the new champion",
                    registry.uri, attempt, attempts,
                )  # fmt: skip
                continue
        decision = _decision(version, promoted, reason, gate, score, images, champion, comparison)
        _record(registry, decision, gate, state.problem, context)
        log.info("%s %s: %s", "Promoted" if promoted else "Kept the champion; not promoting", version, reason)
        return decision
    raise RegistryError(
        f"{registry.uri}/champion.json changed {attempts} times while this run was deciding; giving up so that "
        "a retry decides against a settled champion."
    )


def _decision(version, promoted, reason, gate, score, images, champion, comparison) -> Decision:
    return Decision(
        version,
        promoted,
        reason,
        gate.metric,
        score,
        champion.version if champion else None,
        comparison.champion_score if comparison else None,
        comparison.images if comparison else images,
        comparison.summary() if comparison else None,
    )


def _record(registry: Registry, decision: Decision, gate: Gate, problem: str | None, context: dict) -> None:
    event = {**decision.summary(), "gate": asdict(gate), "problem": problem, **context}
    event.pop("history_uri")
    decision.history_uri = registry.record(event)


def _already_champion(
    registry: Registry, version: str, score: float, images: int, gate: Gate, champion: Champion, context: dict
) -> Decision:
    """A retry after its own promotion: nothing to replace; make sure the history has the promotion."""
    recorded = next(
        (e for e in registry.history() if e.get("version") == version and e.get("promoted")),
        None,
    )
    reason = "already the champion (promoted by an earlier try of this run)"
    decision = Decision(version, True, reason, gate.metric, score, champion.pointer.get("previous"), None, images)
    if recorded is None:
        _record(registry, decision, gate, None, context)
    log.info("Version %s is %s", version, reason)
    return decision


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
