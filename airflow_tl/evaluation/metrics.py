"""Classification metrics from predicted probabilities, and the comparisons the promotion gate makes.

Plain torch, no scikit-learn: the numbers go into model cards and decide promotions, so they are
computed the same way on every worker. Everything is done in float64 on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from airflow_tl.exceptions import InvalidArgumentError

HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "log_loss": False, "calibration_error": False}
LOG_LOSS_EPS = 1e-15
CALIBRATION_BINS = 15
# Loose enough for softmax computed in half precision, tight enough to catch logits passed by mistake.
ROW_SUM_TOLERANCE = 1e-2
# Differences of metrics are differences of floats: 0.85 - 0.80 must still count as an improvement of 0.05.
FLOAT_SLACK = 1e-9

PerClass = dict[str, dict[str, float | int]]


@dataclass
class Metrics:
    """How well a classifier did on a test split."""

    n: int
    accuracy: float
    macro_f1: float
    log_loss: float
    calibration_error: float
    per_class: PerClass
    confusion: list[list[int]]
    class_names: list[str]

    def summary(self) -> dict[str, Any]:
        """The headline numbers, rounded for XComs and logs."""
        return {"n": self.n, **{name: round(getattr(self, name), 4) for name in HIGHER_IS_BETTER}}

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-able."""
        return asdict(self)


def compute_metrics(probs: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> Metrics:
    """Metrics of (N, C) class probabilities against (N,) true labels.

    Macro-F1 averages F1 over the classes that occur in ``labels`` or in the predictions (scikit-learn's
    ``f1_score(average="macro", labels=present)``): a class absent from a small test split and never
    predicted says nothing about the model. Precision of a never-predicted class and recall of a class
    without support are 0.0.
    """
    _validate(probs, labels, class_names)
    probs = probs.detach().to("cpu", torch.float64)
    labels = labels.detach().to("cpu", torch.int64)
    n, c = probs.shape
    preds = probs.argmax(1)
    confusion = torch.bincount(labels * c + preds, minlength=c * c).reshape(c, c)
    per_class, f1 = _per_class(confusion, class_names)
    present = (confusion.sum(0) + confusion.sum(1)) > 0
    true_class_prob = probs.gather(1, labels[:, None]).squeeze(1).clamp(LOG_LOSS_EPS, 1.0)
    return Metrics(
        n=n,
        accuracy=(preds == labels).double().mean().item(),
        macro_f1=f1[present].mean().item(),
        log_loss=-true_class_prob.log().mean().item(),
        calibration_error=expected_calibration_error(probs, labels),
        per_class=per_class,
        confusion=confusion.tolist(),
        class_names=list(class_names),
    )


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = CALIBRATION_BINS) -> float:
    """Top-1 confidence against accuracy in equal-width bins (lo, hi], weighted by the bins' sizes."""
    confidence, preds = probs.to(torch.float64).max(1)
    correct = (preds == labels).double()
    # ceil puts a confidence of exactly k/bins in bin k-1, matching the (lo, hi] convention.
    index = (confidence * bins).ceil().long().sub(1).clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins).double()
    gap = torch.bincount(index, weights=correct - confidence, minlength=bins)
    return (gap.abs().sum() / counts.sum()).item()


def _per_class(confusion: torch.Tensor, class_names: list[str]) -> tuple[PerClass, torch.Tensor]:
    """Precision, recall, F1 and support of every class, and the F1 vector for averaging."""
    confusion = confusion.double()
    tp = confusion.diag()
    predicted, support = confusion.sum(0), confusion.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, tp / support.clamp(min=1), 0.0)
    denominator = precision + recall
    f1 = torch.where(denominator > 0, 2 * precision * recall / denominator.clamp(min=1e-300), 0.0)
    per_class = {
        name: {
            "precision": precision[i].item(),
            "recall": recall[i].item(),
            "f1": f1[i].item(),
            "support": int(support[i].item()),
        }
        for i, name in enumerate(class_names)
    }
    return per_class, f1


def _validate(probs: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> None:
    """Refuse inputs that would give silently wrong numbers."""
    if probs.ndim != 2:
        raise InvalidArgumentError(f"probs must have shape (N, C); got shape {tuple(probs.shape)}")
    if labels.ndim != 1:
        raise InvalidArgumentError(f"labels must have shape (N,); got shape {tuple(labels.shape)}")
    n, c = probs.shape
    if n == 0:
        raise InvalidArgumentError("cannot compute metrics of an empty test set (0 samples)")
    if len(labels) != n:
        raise InvalidArgumentError(f"probs has {n} rows but labels has {len(labels)} entries")
    if c != len(class_names):
        raise InvalidArgumentError(f"probs has {c} columns but there are {len(class_names)} class names")
    if len(set(class_names)) != len(class_names):
        raise InvalidArgumentError(f"class names must be unique; got {class_names}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InvalidArgumentError(f"labels must be integers; got dtype {labels.dtype}")
    if not probs.is_floating_point():
        raise InvalidArgumentError(f"probs must be floating point; got dtype {probs.dtype}")
    low, high = labels.min().item(), labels.max().item()
    if low < 0 or high >= c:
        bad = low if low < 0 else high
        raise InvalidArgumentError(f"label {bad} is out of range for {c} classes (expected 0..{c - 1})")
    probs = probs.detach().to(torch.float64)
    if not torch.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
        raise InvalidArgumentError("probs must be finite probabilities in [0, 1]; were logits passed instead?")
    worst = (probs.sum(1) - 1).abs().max().item()
    if worst > ROW_SUM_TOLERANCE:
        raise InvalidArgumentError(f"rows of probs must sum to 1; one is off by {worst:.3g}")


def check_metric(metric: str) -> str:
    """Return ``metric`` if it is one the gate knows, else fail listing the valid ones."""
    if metric not in HIGHER_IS_BETTER:
        names = [f"'{name}'" for name in HIGHER_IS_BETTER]
        raise InvalidArgumentError(
            f"Argument gate_metric accepts only {', '.join(names[:-1])} and {names[-1]}. Provided value: '{metric}'."
        )
    return metric


def better(metric: str, candidate: float, reference: float, min_improvement: float = 0.0) -> bool:
    """Whether ``candidate`` beats ``reference`` in ``metric``'s direction by at least ``min_improvement``.

    A tie is not a win, so with ``min_improvement=0`` the candidate must be strictly better. NaN never wins.
    """
    check_metric(metric)
    if not min_improvement >= 0:
        raise InvalidArgumentError(f"min_improvement must be >= 0; got {min_improvement}")
    improvement = candidate - reference if HIGHER_IS_BETTER[metric] else reference - candidate
    if math.isnan(improvement):
        return False
    return improvement > FLOAT_SLACK and improvement >= min_improvement - FLOAT_SLACK


def passes_min_score(metric: str, value: float, min_score: float | None) -> bool:
    """Whether ``value`` reaches ``min_score`` (at least it, or at most it for lower-is-better metrics)."""
    check_metric(metric)
    if min_score is None:
        return True
    return value >= min_score if HIGHER_IS_BETTER[metric] else value <= min_score
