"""The stable split: each image's split decided by a hash of its key and the seed, never by its neighbours.

Shuffling a list moves images between splits whenever the list changes, so a champion could be scored
on images it trained on after the dataset grew. Here an image's split depends only on (seed, its key
relative to the dataset): adding or removing other images or classes leaves it where it was.

The one exception keeps small classes usable: a class whose hashes put no image in val (or test) gets
its lowest-hash training image moved there. That choice depends on the class's other images, so it may
change when the class grows; docs/data.md says what that costs and the gate's manifests absorb it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from airflow_tl.exceptions import InvalidArgumentError

DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
# Below this many images a class cannot spare one for val and one for test and still train.
MIN_TO_SPLIT = 3


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    ok = len(fractions) == 3 and all(isinstance(f, int | float) and f >= 0 for f in fractions)
    if not ok or abs(sum(fractions) - 1) > 1e-6 or fractions[0] <= 0:
        raise InvalidArgumentError(
            "Argument split_fractions must be three non-negative numbers (train > 0) summing to 1. "
            f"Provided value: {tuple(fractions)!r}."
        )
    return (float(fractions[0]), float(fractions[1]), float(fractions[2]))


def position(rel: str, seed: int) -> float:
    """Where an image falls in [0, 1): uniform over keys, fixed for a key and seed."""
    digest = hashlib.sha256(f"airflow-tl-split\n{seed}\n{rel}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def natural_split(u: float, fractions: tuple[float, float, float]) -> str:
    _, val, test = fractions
    if u < val:
        return "val"
    if u < val + test:
        return "test"
    return "train"


def assign_splits(
    classes: Iterable[tuple[str, Sequence[str]]],
    *,
    seed: int,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> dict[str, str]:
    """``{rel: split}`` for every image of every ``(class name, relative keys)``.

    Classes of MIN_TO_SPLIT or more images always get at least one val and one test image; smaller
    classes train on everything they have.
    """
    fractions = check_fractions(fractions)
    result: dict[str, str] = {}
    for _, rels in classes:
        if len(rels) < MIN_TO_SPLIT:
            result |= dict.fromkeys(rels, "train")
            continue
        ranked = sorted((position(rel, seed), rel) for rel in rels)
        splits = {rel: natural_split(u, fractions) for u, rel in ranked}
        for wanted, share in (("val", fractions[1]), ("test", fractions[2])):
            if share > 0 and wanted not in splits.values():
                splits[_donor(ranked, splits, lowest=True)] = wanted
        if "train" not in splits.values():
            splits[_donor(ranked, splits, lowest=False)] = "train"
        result |= splits
    return result


def _donor(ranked: list[tuple[float, str]], splits: dict[str, str], *, lowest: bool) -> str:
    """The image to move into a split the hashes left empty: a training image when there is one to spare
    (lowest hash first: the one closest to falling there by itself), else one from a split with several."""
    counts = {name: list(splits.values()).count(name) for name in set(splits.values())}
    order = ranked if lowest else list(reversed(ranked))
    spare = [rel for _, rel in order if counts[splits[rel]] > 1]
    return next((rel for rel in spare if splits[rel] == "train"), spare[0])
