"""The lecture's 2x2 matrix as code: size x similarity -> one of the four strategies, with the reason in words.

Size is the training images per class. Similarity is a transferability score of the pretrained network's frozen
features on the target data (scores.py). Which score decides, and both thresholds, are provider settings
(``[airflow_tl] assess_*``) whose defaults come from ``bench/bench_matrix.py`` (see docs/choosing.md); every
score is recorded, so a user can see how close the call was and override it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.pipelines.strategies import STRATEGIES

# What each similarity score means, in the words the advice uses.
SIMILARITY_SCORES = {
    "leep_relative": "share of the target labels' entropy that LEEP's predictor from the source model's own classes "
    "explains (0 nothing, 1 everything)",
    "logme_gain": "LogME of the frozen features minus LogME of a constant feature: per-image log Bayes factor",
    "probe_skill": "linear-probe accuracy on held-out images, from chance (0) to perfect (1)",
}


@dataclass(frozen=True)
class Thresholds:
    """Where the matrix splits: ``large_images_per_class`` and, per score, the value at which data counts as similar.

    ``similarity_scores`` lists the scores in order of preference; the first one measured decides.
    """

    large_images_per_class: int
    similarity: dict[str, float]
    similarity_scores: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.large_images_per_class, int) or self.large_images_per_class < 1:
            raise InvalidArgumentError(
                f"large_images_per_class must be a positive integer. Provided value: {self.large_images_per_class!r}."
            )
        unknown = [s for s in (*self.similarity_scores, *self.similarity) if s not in SIMILARITY_SCORES]
        if unknown or not self.similarity_scores:
            raise InvalidArgumentError(
                f"Similarity scores accept only {', '.join(SIMILARITY_SCORES)}. Provided value: "
                f"{', '.join(unknown) or 'none'}."
            )
        missing = [s for s in self.similarity_scores if s not in self.similarity]
        if missing:
            raise InvalidArgumentError(f"No similarity threshold for {', '.join(missing)}.")

    @classmethod
    def from_settings(cls) -> Thresholds:
        """The thresholds in ``[airflow_tl]`` (settings.py)."""
        from airflow_tl import settings

        return cls(
            large_images_per_class=settings.get_int("assess_large_images_per_class"),
            similarity={name: settings.get_float(f"assess_{name}_threshold") for name in SIMILARITY_SCORES},
            similarity_scores=tuple(settings.get_list("assess_similarity_scores")),
        )


@dataclass(frozen=True)
class SizeAxis:
    """How much labelled training data there is, per class."""

    images_per_class: float  # mean training images per class: what each class has to learn from
    smallest_class: str
    smallest_class_images: int
    balance: float  # smallest class / largest class, 1.0 when balanced
    level: str  # "small" or "large"


@dataclass(frozen=True)
class SimilarityAxis:
    """How well the pretrained features serve the target task: every score measured, and the one that decided."""

    scores: dict[str, float | None]
    decided_by: str
    level: str  # "high" or "low"
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Advice:
    size: SizeAxis
    similarity: SimilarityAxis
    quadrant: str  # e.g. "small_high"
    strategy: str
    reason: str
    sample: dict[str, Any] = field(default_factory=dict)  # how many images, from which split, seed, cache use

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The XCom: the pick, the quadrant, the reason and the deciding numbers."""
        return {
            "strategy": self.strategy,
            "quadrant": self.quadrant,
            "reason": self.reason,
            "images_per_class": round(self.size.images_per_class, 1),
            "size": self.size.level,
            "similarity": self.similarity.level,
            "similarity_score": self.similarity.decided_by,
            "scores": {k: (None if v is None else round(v, 4)) for k, v in self.similarity.scores.items()},
        }


def size_axis(train_counts: dict[str, int], thresholds: Thresholds) -> SizeAxis:
    """Place the training images per class against ``thresholds.large_images_per_class``."""
    counts = {name: n for name, n in train_counts.items()}
    smallest = min(counts, key=lambda name: (counts[name], name))
    mean = sum(counts.values()) / len(counts)
    level = "large" if mean >= thresholds.large_images_per_class else "small"
    return SizeAxis(mean, smallest, counts[smallest], counts[smallest] / max(counts.values()), level)


def similarity_axis(scores: dict[str, float | None], thresholds: Thresholds, notes: list[str]) -> SimilarityAxis:
    """Judge similarity by the first preferred score that was measured."""
    for name in thresholds.similarity_scores:
        value = scores.get(name)
        if value is not None and math.isfinite(value):
            level = "high" if value >= thresholds.similarity[name] else "low"
            return SimilarityAxis(dict(scores), name, level, list(notes))
    raise InvalidArgumentError(
        f"None of the similarity scores {', '.join(thresholds.similarity_scores)} could be measured "
        f"({'; '.join(notes) or 'no reason recorded'})."
    )


def advise(size: SizeAxis, similarity: SimilarityAxis, thresholds: Thresholds) -> tuple[str, str, str]:
    """(quadrant, strategy, one-sentence reason) for the two axes."""
    strategy = next(s for s in STRATEGIES.values() if s.data == size.level and s.similarity == similarity.level)
    score = similarity.scores[similarity.decided_by]
    bound = thresholds.similarity[similarity.decided_by]
    relation = "at or above" if similarity.level == "high" else "below"
    size_relation = "at or above" if size.level == "large" else "below"
    reason = (
        f"{size.images_per_class:.0f} training images per class is {size.level} ({size_relation} "
        f"{thresholds.large_images_per_class}) and {similarity.decided_by} {score:.3f} is {relation} {bound:g} "
        f"({similarity.level} similarity), so {strategy.name} fits: it trains {strategy.trains}."
    )
    return f"{size.level}_{similarity.level}", strategy.name, reason
