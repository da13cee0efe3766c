"""The evaluation gate: a new version replaces the champion only when it is better, and every decision is logged.

Concurrent runs are safe: the champion is read with its ETag and replaced with a conditional PUT. A run
that loses the race re-reads the new champion, scores it and decides again, so the pointer never moves
to a version that did not beat whatever it replaced.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from airflow_tl.evaluation.metrics import HIGHER_IS_BETTER, better, check_metric, passes_min_score
from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.registry.store import Champion, Registry, RegistryError

log = logging.getLogger(__name__)

ScoreChampion = Callable[[Champion], "float | None"]


@dataclass(frozen=True)
class Gate:
    """``metric`` must beat the champion's by ``min_improvement`` (in its own direction) and reach ``min_score``."""

    metric: str = "accuracy"
    min_improvement: float = 0.0
    min_score: float | None = None

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


@dataclass
class Decision:
    version: str
    promoted: bool
    reason: str
    metric: str
    score: float
    champion_before: str | None
    champion_score: float | None
    history_uri: str | None = None

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def decide(gate: Gate, score: float, champion: Champion | None, champion_score: float | None) -> tuple[bool, str]:
    """Whether ``score`` should become the champion, and why, in words for the log and the history."""
    direction = "higher" if HIGHER_IS_BETTER[gate.metric] else "lower"
    if not passes_min_score(gate.metric, score, gate.min_score):
        bound = "at least" if HIGHER_IS_BETTER[gate.metric] else "at most"
        return False, f"{gate.metric} {score:.4f} misses min_score: it must be {bound} {gate.min_score}"
    if champion is None:
        return True, "there is no champion yet"
    if champion_score is None:
        return True, (
            f"champion {champion.version} cannot be scored on this test split (its classes differ), so it does not "
            "stand in the way"
        )
    margin = f"by at least {gate.min_improvement}" if gate.min_improvement else "at all"
    if better(gate.metric, score, champion_score, gate.min_improvement):
        return True, (
            f"{gate.metric} {score:.4f} beats champion {champion.version}'s {champion_score:.4f} on the same test "
            f"split ({direction} is better, needed {margin})"
        )
    return False, (
        f"{gate.metric} {score:.4f} does not beat champion {champion.version}'s {champion_score:.4f} {margin} on the "
        f"same test split ({direction} is better)"
    )


def promote_if_better(
    registry: Registry,
    *,
    version: str,
    score: float,
    gate: Gate,
    score_champion: ScoreChampion,
    context: dict[str, Any],
    attempts: int = 5,
) -> Decision:
    """Run the gate for a complete ``version`` and promote it if it passes; record the decision in the history.

    ``score_champion`` scores a champion on the candidate's test split (None: not comparable). ``context``
    (dag_id, run_id, metrics summary, ...) goes into the champion pointer and the history entry.
    """
    for attempt in range(1, attempts + 1):
        state = registry.champion()
        champion = state.champion
        if champion is not None and champion.version == version:
            return _already_champion(registry, version, score, gate, champion, context)
        champion_score = score_champion(champion) if champion is not None else None
        promoted, reason = decide(gate, score, champion, champion_score)
        if promoted:
            pointer = {
                "format_version": 1,
                "model_name": registry.model_name,
                "version": version,
                "model_uri": registry.version_uri(version),
                "metric": gate.metric,
                "score": score,
                "previous": champion.version if champion else None,
                "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
                **context,
            }
            if not registry.replace_champion(pointer, etag=state.etag):
                log.warning(
                    "%s/champion.json changed while this run was deciding (attempt %d of %d); deciding again against "
                    "the new champion",
                    registry.uri, attempt, attempts,
                )  # fmt: skip
                continue
        decision = Decision(
            version, promoted, reason, gate.metric, score, champion.version if champion else None, champion_score
        )
        event = {**decision.summary(), "gate": asdict(gate), "problem": state.problem, **context}
        decision.history_uri = registry.record(event)
        log.info("%s %s: %s", "Promoted" if promoted else "Kept the champion; not promoting", version, reason)
        return decision
    raise RegistryError(
        f"{registry.uri}/champion.json changed {attempts} times while this run was deciding; giving up so that "
        "a retry decides against a settled champion."
    )


def _already_champion(
    registry: Registry, version: str, score: float, gate: Gate, champion: Champion, context: dict[str, Any]
) -> Decision:
    """A retry after its own promotion: nothing to replace; make sure the history has the promotion."""
    recorded = next(
        (e for e in registry.history() if e.get("version") == version and e.get("promoted")),
        None,
    )
    reason = "already the champion (promoted by an earlier try of this run)"
    decision = Decision(version, True, reason, gate.metric, score, champion.pointer.get("previous"), None)
    if recorded is None:
        event = {**decision.summary(), "gate": asdict(gate), "problem": None, **context}
        decision.history_uri = registry.record(event)
    log.info("Version %s is %s", version, reason)
    return decision


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
