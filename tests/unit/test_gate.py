"""The gate's decisions in words: min_score, min_test_images, class changes and the fair comparison."""

from __future__ import annotations

import pytest

from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.registry.promotion import ClassChangeError, Comparison, Gate, decide
from airflow_tl.registry.store import Champion

CHAMPION = Champion("v1", {"version": "v1"})


def test_no_champion_promotes_when_the_test_split_is_large_enough():
    assert decide(Gate(), 0.9, 120, None, None) == (True, "there is no champion yet")


def test_too_few_test_images_keeps_even_without_a_champion():
    promoted, reason = decide(Gate(min_test_images=50), 0.99, 49, None, None)
    assert not promoted
    assert "only 49 test images, fewer than min_test_images=50" in reason


def test_the_comparison_counts_only_images_neither_model_has_seen():
    comparison = Comparison(images=30, score=0.95, champion_score=0.80, excluded=90)
    promoted, reason = decide(Gate(min_test_images=50), 0.95, 120, CHAMPION, comparison)
    assert not promoted
    assert "only 30 test images that neither model trained or validated on, fewer than min_test_images=50" in reason


def test_a_better_candidate_on_unseen_images_is_promoted_and_the_reason_says_on_how_many():
    comparison = Comparison(images=80, score=0.90, champion_score=0.85, excluded=40)
    promoted, reason = decide(Gate(), 0.91, 120, CHAMPION, comparison)
    assert promoted
    assert reason == (
        "accuracy 0.9000 beats champion v1's 0.8500 on the same 80 test images that neither model trained or "
        "validated on (higher is better, needed at all)"
    )


def test_the_gate_judges_the_comparison_not_the_candidates_own_split():
    # Better on its whole split, worse on the images neither model has seen: kept.
    comparison = Comparison(images=80, score=0.80, champion_score=0.85)
    promoted, reason = decide(Gate(), 0.99, 120, CHAMPION, comparison)
    assert not promoted and "does not beat champion v1's 0.8500 at all" in reason


def test_lower_is_better_metrics_and_min_improvement():
    gate = Gate("log_loss", min_improvement=0.1)
    assert decide(gate, 0.3, 100, CHAMPION, Comparison(100, 0.30, 0.45))[0]
    promoted, reason = decide(gate, 0.3, 100, CHAMPION, Comparison(100, 0.40, 0.45))
    assert not promoted and "by at least 0.1" in reason and "lower is better" in reason


def test_a_champion_without_manifest_is_compared_and_the_reason_says_what_could_not_be_excluded():
    note = (
        "champion v1 has no data manifest (made before manifests existed), so its training images could not be excluded"
    )
    promoted, reason = decide(Gate(), 0.9, 100, CHAMPION, Comparison(100, 0.9, 0.8, note=note))
    assert promoted and reason.endswith(f"validated on; {note} (higher is better, needed at all)")


def test_min_score_comes_first():
    promoted, reason = decide(Gate(min_score=0.95), 0.9, 100, None, None)
    assert not promoted and reason == "accuracy 0.9000 misses min_score: it must be at least 0.95"


CHANGED = Comparison(
    100, None, None, classes_differ=True, note="champion v1 predicts ['a', 'b'], the candidate ['a', 'b', 'c']"
)


def test_changed_classes_keep_the_champion_by_default_and_say_why():
    promoted, reason = decide(Gate(), 0.9, 100, CHAMPION, CHANGED)
    assert not promoted
    assert "the classes changed (champion v1 predicts ['a', 'b'], the candidate ['a', 'b', 'c'])" in reason
    assert "on_class_change='keep' keeps the champion" in reason


def test_changed_classes_promote_when_asked_but_not_on_too_few_images():
    promoted, reason = decide(Gate(on_class_change="promote"), 0.9, 100, CHAMPION, CHANGED)
    assert promoted and "on_class_change='promote' promotes it" in reason
    assert not decide(Gate(on_class_change="promote"), 0.9, 10, CHAMPION, CHANGED)[0]


def test_changed_classes_fail_when_asked():
    with pytest.raises(ClassChangeError, match="the classes changed .*on_class_change='fail'"):
        decide(Gate(on_class_change="fail"), 0.9, 100, CHAMPION, CHANGED)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_test_images": 0}, "Argument min_test_images must be a positive integer. Provided value: 0"),
        ({"min_test_images": 2.5}, "Argument min_test_images must be a positive integer"),
        ({"on_class_change": "ignore"}, "accepts only 'keep', 'promote' and 'fail'. Provided value: 'ignore'"),
    ],
)
def test_gate_settings_are_checked(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        Gate(**kwargs)
