"""Ranking a tournament's contenders: by the gate metric in its direction, failed ones listed with their error."""

from __future__ import annotations

from airflow_tl.evaluation.tournament import Contender, rank, render_tournament


def contender(name, accuracy, log_loss, params=1000):
    return Contender(
        name, f"v-{name}", f"s3://b/{name}", {"accuracy": accuracy, "log_loss": log_loss}, params, 1.0, "fp"
    )


def test_rank_follows_the_metrics_direction():
    field = [contender("a", 0.90, 0.30), contender("b", 0.95, 0.40), contender("c", 0.80, 0.20)]
    assert [c.strategy for c in rank(field, "accuracy")] == ["b", "a", "c"]
    assert [c.strategy for c in rank(field, "log_loss")] == ["c", "a", "b"]


def test_a_tie_goes_to_the_contender_with_fewer_trainable_parameters():
    field = [contender("full", 0.9, 0.3, params=11_000_000), contender("head", 0.9, 0.3, params=2_565)]
    assert [c.strategy for c in rank(field, "accuracy")] == ["head", "full"]


def test_failed_contenders_are_not_ranked_and_keep_their_error():
    failed = Contender.from_xcoms("partial_freeze", None, None, "partial_freeze.train: InvalidArgumentError: boom")
    silent = Contender.from_xcoms("from_scratch", {"train_seconds": 3.0}, None)
    field = [contender("a", 0.9, 0.3), failed, silent]
    assert [c.strategy for c in rank(field, "accuracy")] == ["a"]
    assert failed.error == "partial_freeze.train: InvalidArgumentError: boom"
    assert silent.error.startswith("did not finish (no error was recorded")


def test_a_finished_contender_takes_its_numbers_from_the_xcoms():
    c = Contender.from_xcoms(
        "feature_extraction",
        {"trainable_params": 2565, "train_seconds": 1.5},
        {"version": "v1", "model_uri": "s3://b/v1", "metrics": {"accuracy": 0.9}, "dataset_fingerprint": "f"},
    )
    assert c.finished and (c.trainable_params, c.train_seconds, c.version, c.dataset_fingerprint) == (
        2565, 1.5, "v1", "f",
    )  # fmt: skip


def test_the_report_escapes_errors_and_names_the_winner():
    from airflow_tl.evaluation.tournament import TournamentResult
    from airflow_tl.registry.promotion import Decision

    win = contender("full_finetune", 0.95, 0.2)
    failed = Contender("partial_freeze", error="<script>alert(1)</script>")
    decision = Decision("v-full_finetune", True, "there is no champion yet", "accuracy", 0.95, None, None, 100)
    result = TournamentResult([win, failed], win, decision, "accuracy", "feature_extraction", False)
    page = render_tournament(result, {"reason": "10 images per class is small"}).decode()
    assert "<script>" not in page and "failed: &lt;script&gt;" in page
    assert "full_finetune wins on accuracy" in page and "winner; promoted" in page
    assert "The advisor picked feature_extraction, which did not win." in page
