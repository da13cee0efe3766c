"""The 2x2 matrix as code: where each axis splits, which score decides, and the reason it gives."""

from __future__ import annotations

import pytest

from airflow_tl.assess.advice import Thresholds, advise, similarity_axis, size_axis
from airflow_tl.exceptions import InvalidArgumentError

THRESHOLDS = Thresholds(
    large_images_per_class=50,
    similarity={"leep_relative": 0.3, "logme_gain": 0.0, "probe_skill": 0.8},
    similarity_scores=("leep_relative", "logme_gain"),
)


@pytest.mark.parametrize(
    ("per_class", "leep_relative", "quadrant", "strategy"),
    [
        (10, 0.6, "small_high", "feature_extraction"),
        (10, 0.1, "small_low", "partial_freeze"),
        (200, 0.6, "large_high", "full_finetune"),
        (200, 0.1, "large_low", "from_scratch"),
        (50, 0.3, "large_high", "full_finetune"),  # both thresholds are inclusive
        (49, 0.29, "small_low", "partial_freeze"),
    ],
)
def test_each_quadrant_recommends_the_lectures_strategy(per_class, leep_relative, quadrant, strategy):
    size = size_axis({"a": per_class, "b": per_class}, THRESHOLDS)
    similarity = similarity_axis({"leep_relative": leep_relative, "logme_gain": -5.0}, THRESHOLDS, [])
    assert advise(size, similarity, THRESHOLDS)[:2] == (quadrant, strategy)


def test_the_reason_names_both_numbers_their_thresholds_and_the_strategy():
    size = size_axis({"cat": 8, "dog": 12}, THRESHOLDS)
    similarity = similarity_axis({"leep_relative": 0.45, "logme_gain": 1.0}, THRESHOLDS, [])
    _, strategy, reason = advise(size, similarity, THRESHOLDS)
    assert reason == (
        "10 training images per class is small (below 50) and leep_relative 0.450 is at or above 0.3 (high "
        "similarity), so feature_extraction fits: it trains only a new linear head, on cached features of the "
        "frozen pretrained network."
    )


def test_size_reports_the_smallest_class_and_the_balance():
    size = size_axis({"a": 90, "b": 10, "c": 50}, THRESHOLDS)
    assert (size.images_per_class, size.smallest_class, size.smallest_class_images) == (50.0, "b", 10)
    assert size.balance == pytest.approx(10 / 90) and size.level == "large"


def test_without_leep_the_next_preferred_score_decides_and_the_note_is_kept():
    notes = ["LEEP skipped: the source has random weights"]
    similarity = similarity_axis({"leep_relative": None, "logme_gain": 0.4}, THRESHOLDS, notes)
    assert (similarity.decided_by, similarity.level, similarity.notes) == ("logme_gain", "high", notes)


def test_no_measurable_score_is_an_error_saying_why():
    with pytest.raises(
        InvalidArgumentError, match="None of the similarity scores leep_relative, logme_gain .*random weights"
    ):
        similarity_axis({"leep_relative": None, "logme_gain": float("nan")}, THRESHOLDS, ["random weights"])


def test_thresholds_refuse_unknown_scores_and_missing_thresholds():
    with pytest.raises(
        InvalidArgumentError, match="accept only leep_relative, logme_gain, probe_skill. Provided value: leep"
    ):
        Thresholds(50, {"leep": 0.1}, ("leep",))
    with pytest.raises(InvalidArgumentError, match="No similarity threshold for logme_gain"):
        Thresholds(50, {"leep_relative": 0.1}, ("leep_relative", "logme_gain"))


def test_thresholds_come_from_the_settings(monkeypatch):
    monkeypatch.setenv("AIRFLOW__AIRFLOW_TL__ASSESS_LARGE_IMAGES_PER_CLASS", "120")
    monkeypatch.setenv("AIRFLOW__AIRFLOW_TL__ASSESS_SIMILARITY_SCORES", "probe_skill")
    monkeypatch.setenv("AIRFLOW__AIRFLOW_TL__ASSESS_PROBE_SKILL_THRESHOLD", "0.75")
    thresholds = Thresholds.from_settings()
    assert thresholds.large_images_per_class == 120 and thresholds.similarity_scores == ("probe_skill",)
    assert thresholds.similarity["probe_skill"] == 0.75


def test_a_threshold_that_is_not_a_number_names_the_setting(monkeypatch):
    monkeypatch.setenv("AIRFLOW__AIRFLOW_TL__ASSESS_LOGME_GAIN_THRESHOLD", "high")
    with pytest.raises(
        InvalidArgumentError, match=r"\[airflow_tl\] assess_logme_gain_threshold must be a finite number"
    ):
        Thresholds.from_settings()
