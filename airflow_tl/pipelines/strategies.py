"""The four transfer strategies as data: what each trains, which quadrant it serves, and its defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from airflow_tl.exceptions import InvalidArgumentError


@dataclass(frozen=True)
class Strategy:
    name: str
    title: str
    data: str  # size of the target data set this fits: "small" or "large"
    similarity: str  # similarity of the target data to the pretraining data: "high" or "low"
    trains: str
    why: str
    freeze_layers: int | str | None  # None: a Param decides (partial_freeze)
    init: str  # "pretrained" or "random"
    uses_features: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    options: tuple[str, ...] = ()  # Params only this strategy has, besides freeze_layers and architecture

    @property
    def dag_id(self) -> str:
        return f"tl_{self.name}"


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            name="feature_extraction",
            title="Feature extraction",
            data="small",
            similarity="high",
            trains="only a new linear head, on cached features of the frozen pretrained network",
            why=(
                "With few labelled images, training more than a head overfits; when the new images resemble the "
                "pretraining data, the pretrained features already separate the classes. The backbone runs once "
                "per image (cached in S3), and the head is fitted on the cached features to convergence in seconds."
            ),
            freeze_layers="all",
            init="pretrained",
            uses_features=True,
            defaults={"epochs": 30, "learning_rate": 3e-3, "batch_size": 64},
        ),
        Strategy(
            name="partial_freeze",
            title="Partial freeze",
            data="small",
            similarity="low",
            trains="the last n-k blocks and a new head; the first k blocks stay frozen",
            why=(
                "Early blocks hold generic features (edges, blobs) that transfer to almost any images; later blocks "
                "are specific to the pretraining classes. With little data that differs from the pretraining data, "
                "keep the generic blocks frozen and retrain the specific ones."
            ),
            freeze_layers=None,
            init="pretrained",
            defaults={"epochs": 8, "learning_rate": 1e-3, "batch_size": 64, "freeze_layers": 3},
        ),
        Strategy(
            name="full_finetune",
            title="Full fine-tune",
            data="large",
            similarity="high",
            trains="every block and a new head, starting from the pretrained weights",
            why=(
                "With plenty of data close to the pretraining data, every layer can adapt without overfitting, and "
                "starting from pretrained weights converges faster and better than random ones. A lower learning "
                "rate keeps the pretrained features from being washed out early."
            ),
            freeze_layers=0,
            init="pretrained",
            defaults={"epochs": 8, "learning_rate": 5e-4, "batch_size": 64, "lp_ft": False},
            options=("lp_ft",),
        ),
        Strategy(
            name="from_scratch",
            title="From scratch",
            data="large",
            similarity="low",
            trains="every block of the same architecture, from random initialisation",
            why=(
                "With plenty of data unlike the pretraining data, pretrained features help little and can bias the "
                "network; the architecture is still a proven one. Needs the most data and epochs of the four."
            ),
            freeze_layers=0,
            init="random",
            # No source: random weights of a torchvision architecture at its own input size.
            defaults={
                "epochs": 8,
                "learning_rate": 1e-3,
                "batch_size": 64,
                "architecture": "resnet18",
                "pretrained_uri": None,
            },
        ),
    )
}


def get_strategy(name: str) -> Strategy:
    """The strategy called ``name``, or an error listing the valid ones."""
    if name not in STRATEGIES:
        names = [f"'{n}'" for n in STRATEGIES]
        raise InvalidArgumentError(
            f"Argument strategy accepts only {', '.join(names[:-1])} and {names[-1]}. Provided value: {name!r}."
        )
    return STRATEGIES[name]
