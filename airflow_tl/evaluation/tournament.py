"""A tournament: strategies trained side by side on one dataset, ranked on the same test images, the best gated.

Each contender was evaluated into a registry version of its own without touching the champion. Here they are
ranked by the gate metric, the winner goes through the gate against the current champion (the same comparison
on images neither has seen as any evaluation), and one report lists every contender, failed ones with their
error. The tournament fails only when no contender finished.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

from airflow_tl.data.dataset import DatasetChangedError
from airflow_tl.evaluation.metrics import HIGHER_IS_BETTER
from airflow_tl.evaluation.report import STYLE
from airflow_tl.evaluation.task import gate_registered
from airflow_tl.exceptions import PermanentError
from airflow_tl.registry.promotion import Decision, Gate
from airflow_tl.storage.s3 import S3Store

log = logging.getLogger(__name__)

TOURNAMENT_FILE = "tournament.json"
REPORT_FILE = "tournament.html"


class NoContenderFinishedError(PermanentError):
    """Every contender of a tournament failed: there is nothing to compare or promote."""


@dataclass
class Contender:
    strategy: str
    version: str | None = None
    model_uri: str | None = None
    metrics: dict[str, float] | None = None
    trainable_params: int | None = None
    train_seconds: float | None = None
    dataset_fingerprint: str | None = None
    error: str | None = None  # why it did not finish

    @property
    def finished(self) -> bool:
        return self.error is None and self.metrics is not None

    @classmethod
    def from_xcoms(
        cls, strategy: str, train: dict | None, evaluate: dict | None, error: str | None = None
    ) -> Contender:
        """A contender from its train and evaluate tasks' XComs (None for a task that did not succeed)."""
        if not evaluate:
            return cls(strategy, error=error or "did not finish (no error was recorded; see its task logs)")
        return cls(
            strategy,
            version=evaluate["version"],
            model_uri=evaluate["model_uri"],
            metrics=evaluate["metrics"],
            trainable_params=(train or {}).get("trainable_params"),
            train_seconds=(train or {}).get("train_seconds"),
            dataset_fingerprint=evaluate.get("dataset_fingerprint"),
        )


@dataclass
class TournamentResult:
    contenders: list[Contender]  # finished ones best first, then the failed ones
    winner: Contender
    decision: Decision
    metric: str
    advised: str | None
    advice_won: bool | None

    def summary(self) -> dict[str, Any]:
        return {
            "winner": self.winner.strategy,
            "version": self.winner.version,
            "metric": self.metric,
            "score": self.winner.metrics[self.metric],
            "promoted": self.decision.promoted,
            "reason": self.decision.reason,
            "advised": self.advised,
            "advice_won": self.advice_won,
            "finished": [c.strategy for c in self.contenders if c.finished],
            "failed": {c.strategy: c.error for c in self.contenders if not c.finished},
        }


def rank(contenders: list[Contender], metric: str) -> list[Contender]:
    """Finished contenders best first by ``metric``; ties go to fewer trainable parameters, then to the name."""
    sign = -1 if HIGHER_IS_BETTER[metric] else 1
    finished = [c for c in contenders if c.finished]
    return sorted(finished, key=lambda c: (sign * c.metrics[metric], c.trainable_params or 0, c.strategy))


def run_tournament(
    store: S3Store,
    *,
    contenders: list[Contender],
    registry_uri: str,
    model_name: str,
    dataset_uri: str,
    gate: Gate,
    advice: dict[str, Any] | None = None,
    seed: int = 0,
    layout: str = "auto",
    batch_size: int = 64,
    threads: int = 8,
    context: dict[str, Any] | None = None,
    output_uri: str | None = None,
    device: str = "auto",
) -> TournamentResult:
    """Rank ``contenders``, gate the winner, write the report under ``output_uri``."""
    ranked = rank(contenders, gate.metric)
    failed = [c for c in contenders if not c.finished]
    for contender in failed:
        log.warning("Contender %s did not finish: %s", contender.strategy, contender.error)
    if not ranked:
        listed = "; ".join(f"{c.strategy}: {c.error}" for c in failed)
        raise NoContenderFinishedError(f"Every contender of the tournament failed, so nothing was compared: {listed}")
    fingerprints = {c.dataset_fingerprint for c in ranked}
    if len(fingerprints) > 1:
        raise DatasetChangedError(
            f"The contenders were tested on different listings of {dataset_uri}: the dataset changed during the "
            "tournament, so their scores are not comparable. Run it again once the data is stable."
        )
    winner = ranked[0]
    advised = (advice or {}).get("strategy")
    log.info(
        "Tournament on %s by %s: %s",
        dataset_uri, gate.metric, ", ".join(f"{c.strategy} {c.metrics[gate.metric]:.4f}" for c in ranked),
    )  # fmt: skip
    decision = gate_registered(
        store, registry_uri=registry_uri, model_name=model_name, version=winner.version, dataset_uri=dataset_uri,
        gate=gate, seed=seed, layout=layout, batch_size=batch_size, threads=threads, device=device,
        context={**(context or {}), "strategy": winner.strategy, "tournament": [c.strategy for c in ranked]},
    )  # fmt: skip
    advice_won = None if advised is None else _ties(ranked, advised, gate.metric)
    result = TournamentResult([*ranked, *failed], winner, decision, gate.metric, advised, advice_won)
    if output_uri:
        _write(store, output_uri, result, advice)
    return result


def _ties(ranked: list[Contender], strategy: str, metric: str) -> bool | None:
    """Whether ``strategy`` scored as well as the winner (None when it did not run or did not finish)."""
    mine = next((c for c in ranked if c.strategy == strategy), None)
    return None if mine is None else mine.metrics[metric] == ranked[0].metrics[metric]


def _write(store: S3Store, output_uri: str, result: TournamentResult, advice: dict[str, Any] | None) -> None:
    base = output_uri.rstrip("/")
    document = {
        **result.summary(),
        "contenders": [asdict(c) for c in result.contenders],
        "decision": result.decision.summary(),
        "advice": advice,
    }
    store.put_bytes(
        f"{base}/{TOURNAMENT_FILE}", json.dumps(document, indent=2).encode(), content_type="application/json"
    )
    store.put_bytes(f"{base}/{REPORT_FILE}", render_tournament(result, advice), content_type="text/html")
    log.info("Tournament report: %s/%s", base, REPORT_FILE)


def render_tournament(result: TournamentResult, advice: dict[str, Any] | None) -> bytes:
    """One self-contained HTML page: the contenders' table, the gate's decision and the advice."""
    metrics = ("accuracy", "macro_f1", "log_loss", "calibration_error")
    head = "".join(
        f"<th>{h}</th>" for h in ("strategy", "trainable params", "training s", *metrics, "version", "result")
    )
    rows = []
    for c in result.contenders:
        if c.finished:
            won = c is result.winner
            outcome = ("winner; " + ("promoted" if result.decision.promoted else "not promoted")) if won else "-"
            cells = [
                c.strategy, f"{c.trainable_params:,}" if c.trainable_params is not None else "?",
                f"{c.train_seconds:.1f}" if c.train_seconds is not None else "?",
                *(f"{c.metrics[m]:.4f}" if m in c.metrics else "" for m in metrics), c.version or "", outcome,
            ]  # fmt: skip
        else:
            cells = [c.strategy, "", "", "", "", "", "", "", f"failed: {c.error}"]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells) + "</tr>")
    if result.advised is None:
        verdict = "No advice was given."
    elif result.advice_won is None:
        verdict = f"The advisor picked {result.advised}, which did not run to the end."
    else:
        verdict = f"The advisor picked {result.advised}, which {'won' if result.advice_won else 'did not win'}."
    reason = (advice or {}).get("reason", "")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Tournament</title><style>{STYLE}</style></head><body>
<h1>Tournament: {html.escape(result.winner.strategy)} wins on {html.escape(result.metric)}</h1>
<table><tr>{head}</tr>{"".join(rows)}</table>
<p><b>Gate:</b> {html.escape(result.decision.reason)}</p>
<p><b>Advice:</b> {html.escape(verdict)} {html.escape(reason)}</p>
</body></html>
"""
    return page.encode()
