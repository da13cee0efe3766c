"""Classification metrics against hand-computed cases and scikit-learn, and the promotion gate's comparisons."""

from __future__ import annotations

import json
import math

import pytest
import torch

from airflow_tl.evaluation.metrics import (
    HIGHER_IS_BETTER,
    Metrics,
    better,
    compute_metrics,
    expected_calibration_error,
    passes_min_score,
)
from airflow_tl.exceptions import InvalidArgumentError

NAMES = ["cat", "dog", "fox"]


def one_hotish(preds: list[int], confidence: float = 0.8, c: int = 3) -> torch.Tensor:
    """Rows that put ``confidence`` on the predicted class and spread the rest evenly."""
    probs = torch.full((len(preds), c), (1 - confidence) / (c - 1), dtype=torch.float64)
    probs[torch.arange(len(preds)), torch.tensor(preds)] = confidence
    return probs


@pytest.fixture
def small() -> Metrics:
    # true:  cat cat dog dog fox fox
    # pred:  cat dog dog dog cat fox
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    return compute_metrics(one_hotish([0, 1, 1, 1, 0, 2]), labels, NAMES)


def test_hand_computed_case(small: Metrics) -> None:
    assert small.n == 6
    assert small.accuracy == pytest.approx(4 / 6)
    assert small.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert small.per_class["cat"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert small.per_class["dog"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert small.per_class["fox"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert small.macro_f1 == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert small.class_names == NAMES
    assert isinstance(small.per_class["cat"]["support"], int)


def test_log_loss_is_mean_negative_log_of_true_class(small: Metrics) -> None:
    # Four rows put 0.8 on the true class, two put 0.1 on it.
    assert small.log_loss == pytest.approx(-(4 * math.log(0.8) + 2 * math.log(0.1)) / 6)


def test_log_loss_clips_zero_probability() -> None:
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    metrics = compute_metrics(probs, torch.tensor([1, 1]), ["a", "b"])
    assert metrics.log_loss == pytest.approx(-math.log(1e-15) / 2)


def test_never_predicted_and_unsupported_classes_score_zero_and_leave_the_macro_average() -> None:
    # Class "c" never occurs and is never predicted; class "b" occurs but is never predicted.
    probs = one_hotish([0, 0, 0], c=3)
    metrics = compute_metrics(probs, torch.tensor([0, 0, 1]), ["a", "b", "c"])
    assert metrics.per_class["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert metrics.per_class["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    f1_a = 2 * (2 / 3) * 1.0 / (2 / 3 + 1.0)
    assert metrics.macro_f1 == pytest.approx((f1_a + 0.0) / 2)


def test_calibration_error_is_zero_when_confidence_matches_accuracy() -> None:
    # 10 rows at confidence 0.8 of which 8 are right, 5 at 0.6 of which 3 are right.
    preds = [0] * 10 + [1] * 5
    labels = [0] * 8 + [1] * 2 + [1] * 3 + [0] * 2
    probs = torch.cat([one_hotish(preds[:10], 0.8), one_hotish(preds[10:], 0.6)])
    metrics = compute_metrics(probs, torch.tensor(labels), NAMES)
    assert metrics.calibration_error == pytest.approx(0.0, abs=1e-12)


def test_calibration_error_of_an_over_confident_model() -> None:
    # Confidence 0.9 on every row but only half are right: ECE = |0.5 - 0.9| = 0.4.
    probs = one_hotish([0, 0, 0, 0], 0.9)
    metrics = compute_metrics(probs, torch.tensor([0, 0, 1, 2]), NAMES)
    assert metrics.calibration_error == pytest.approx(0.4)


def test_calibration_error_weights_bins_by_size() -> None:
    # 3 rows at 0.95 all right (gap 0.05), 1 row at 0.5 wrong (gap 0.5): (3 * 0.05 + 0.5) / 4.
    probs = torch.cat([one_hotish([0, 0, 0], 0.95), torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)])
    ece = expected_calibration_error(probs, torch.tensor([0, 0, 0, 1]))
    assert ece == pytest.approx((3 * 0.05 + 0.5) / 4)


def test_calibration_bins_include_their_upper_edge() -> None:
    # A confidence of exactly 1/3 = 5/15 belongs to the bin (4/15, 5/15], together with 0.3:
    # one bin with accuracy 0.5 and mean confidence (1/3 + 0.3) / 2.
    probs = torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0.0], [0.3, 0.25, 0.25, 0.2]], dtype=torch.float64)
    ece = expected_calibration_error(probs, torch.tensor([0, 1]))
    assert ece == pytest.approx(abs(0.5 - (1 / 3 + 0.3) / 2))


def test_summary_and_to_dict_are_json_able(small: Metrics) -> None:
    summary = small.summary()
    assert set(summary) == {"n", "accuracy", "macro_f1", "log_loss", "calibration_error"}
    assert summary["accuracy"] == 0.6667
    assert summary["n"] == 6
    data = json.loads(json.dumps(small.to_dict()))
    assert data["confusion"] == small.confusion
    assert data["per_class"]["dog"]["f1"] == pytest.approx(0.8)
    assert Metrics(**data) == small


def test_accepts_float32_and_non_contiguous_inputs() -> None:
    probs = one_hotish([0, 1, 2, 0]).float().t().contiguous().t()
    metrics = compute_metrics(probs, torch.tensor([0, 1, 2, 1]), NAMES)
    assert metrics.accuracy == pytest.approx(0.75)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_scikit_learn_on_random_data(seed: int) -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(seed)
    n, c = 200, 7
    probs = torch.softmax(torch.randn(n, c, generator=generator, dtype=torch.float64) * 2, 1)
    # Labels from 0..c-2 only, so one class can be predicted without support.
    labels = torch.randint(0, c - 1, (n,), generator=generator)
    metrics = compute_metrics(probs, labels, [f"class {i}" for i in range(c)])
    preds = probs.argmax(1).numpy()
    present = sorted(set(labels.tolist()) | set(preds.tolist()))
    assert metrics.accuracy == pytest.approx(sklearn_metrics.accuracy_score(labels, preds))
    expected_f1 = sklearn_metrics.f1_score(labels, preds, average="macro", labels=present, zero_division=0)
    assert metrics.macro_f1 == pytest.approx(expected_f1)
    assert metrics.log_loss == pytest.approx(sklearn_metrics.log_loss(labels, probs.numpy(), labels=range(c)))
    assert metrics.confusion == sklearn_metrics.confusion_matrix(labels, preds, labels=range(c)).tolist()
    report = sklearn_metrics.classification_report(
        labels, preds, labels=range(c), target_names=metrics.class_names, output_dict=True, zero_division=0
    )
    for name, stats in metrics.per_class.items():
        assert stats["precision"] == pytest.approx(report[name]["precision"])
        assert stats["recall"] == pytest.approx(report[name]["recall"])
        assert stats["f1"] == pytest.approx(report[name]["f1-score"])
        assert stats["support"] == report[name]["support"]


GOOD_PROBS = one_hotish([0, 1])
GOOD_LABELS = torch.tensor([0, 1])


@pytest.mark.parametrize(
    ("probs", "labels", "names", "message"),
    [
        (torch.empty(0, 3), torch.empty(0, dtype=torch.int64), NAMES, "empty test set"),
        (GOOD_PROBS[0], GOOD_LABELS, NAMES, "probs must have shape (N, C); got shape (3,)"),
        (GOOD_PROBS, GOOD_LABELS[:, None], NAMES, "labels must have shape (N,); got shape (2, 1)"),
        (GOOD_PROBS, torch.tensor([0, 1, 2]), NAMES, "probs has 2 rows but labels has 3 entries"),
        (GOOD_PROBS, GOOD_LABELS, ["cat", "dog"], "probs has 3 columns but there are 2 class names"),
        (GOOD_PROBS, GOOD_LABELS, ["cat", "dog", "cat"], "class names must be unique"),
        (GOOD_PROBS, torch.tensor([0, 3]), NAMES, "label 3 is out of range for 3 classes (expected 0..2)"),
        (GOOD_PROBS, torch.tensor([-1, 0]), NAMES, "label -1 is out of range for 3 classes"),
        (GOOD_PROBS, torch.tensor([0.0, 1.0]), NAMES, "labels must be integers; got dtype torch.float32"),
        (GOOD_PROBS.long(), GOOD_LABELS, NAMES, "probs must be floating point"),
        (GOOD_PROBS * 10 - 5, GOOD_LABELS, NAMES, "were logits passed instead?"),
        (torch.full((2, 3), float("nan")), GOOD_LABELS, NAMES, "must be finite probabilities"),
        (GOOD_PROBS * 0.5, GOOD_LABELS, NAMES, "rows of probs must sum to 1; one is off by 0.5"),
    ],
)
def test_invalid_inputs_are_refused(probs: torch.Tensor, labels: torch.Tensor, names: list[str], message: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        compute_metrics(probs, labels, names)
    assert message in str(info.value)


UNKNOWN = (
    "Argument gate_metric accepts only 'accuracy', 'macro_f1', 'log_loss' and 'calibration_error'. "
    "Provided value: 'f1'."
)


@pytest.mark.parametrize(
    ("metric", "candidate", "reference", "min_improvement", "expected"),
    [
        ("accuracy", 0.81, 0.80, 0.0, True),
        ("accuracy", 0.80, 0.80, 0.0, False),  # a tie is not a win
        ("accuracy", 0.79, 0.80, 0.0, False),
        ("accuracy", 0.85, 0.80, 0.05, True),  # exactly the required improvement, despite float rounding
        ("accuracy", 0.849, 0.80, 0.05, False),
        ("macro_f1", 0.70, 0.60, 0.1, True),
        ("log_loss", 0.40, 0.50, 0.0, True),
        ("log_loss", 0.60, 0.50, 0.0, False),
        ("log_loss", 0.45, 0.50, 0.05, True),
        ("log_loss", 0.46, 0.50, 0.05, False),
        ("calibration_error", 0.02, 0.05, 0.03, True),
        ("calibration_error", 0.05, 0.02, 0.0, False),
        ("accuracy", float("nan"), 0.5, 0.0, False),
        ("log_loss", float("nan"), 0.5, 0.0, False),
    ],
)
def test_better(metric: str, candidate: float, reference: float, min_improvement: float, expected: bool) -> None:
    assert better(metric, candidate, reference, min_improvement) is expected


@pytest.mark.parametrize(
    ("metric", "value", "min_score", "expected"),
    [
        ("accuracy", 0.2, None, True),
        ("log_loss", 99.0, None, True),
        ("accuracy", 0.9, 0.9, True),
        ("accuracy", 0.89, 0.9, False),
        ("macro_f1", 0.95, 0.9, True),
        ("log_loss", 0.3, 0.3, True),
        ("log_loss", 0.31, 0.3, False),
        ("calibration_error", 0.01, 0.05, True),
        ("calibration_error", 0.06, 0.05, False),
    ],
)
def test_passes_min_score(metric: str, value: float, min_score: float | None, expected: bool) -> None:
    assert passes_min_score(metric, value, min_score) is expected


def test_unknown_metric_lists_the_valid_ones() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        better("f1", 0.9, 0.8)
    assert str(info.value) == UNKNOWN
    with pytest.raises(InvalidArgumentError) as info:
        passes_min_score("f1", 0.9, None)
    assert str(info.value) == UNKNOWN
    assert set(HIGHER_IS_BETTER) == {"accuracy", "macro_f1", "log_loss", "calibration_error"}


def test_negative_min_improvement_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="min_improvement must be >= 0; got -0.1"):
        better("accuracy", 0.9, 0.8, -0.1)
