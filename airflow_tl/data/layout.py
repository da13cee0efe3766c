"""Which layout a dataset listing is in, decided from its keys alone and never guessed silently.

Two layouts (DESIGN.md): ``<prefix>/{train,val,test}/<class>/<image>`` ("splits") and
``<prefix>/<class>/<image>`` ("classes"). ``layout="auto"`` takes the first when the top-level folders
are exactly ``train``/``val``/``test`` and the second when none of them looks like a split. Anything in
between (a class folder beside ``train/``, a ``Train/`` or ``validation/`` folder) is refused with the
names and the fix, because treating split folders as classes trains a model on the wrong labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from airflow_tl.exceptions import InvalidArgumentError

SPLITS = ("train", "val", "test")
LAYOUTS = ("auto", "splits", "classes")
# Folder names people give splits. Only the exact lower-case names in SPLITS are read as splits; these
# (in any case) are refused by "auto" so a "Train/" or "validation/" folder never becomes a class.
SPLIT_LIKE = {
    "train": "train",
    "training": "train",
    "trn": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "validate": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
    "tst": "test",
    "eval": "test",
    "evaluation": "test",
    "holdout": "test",
}


class LayoutError(ValueError):
    """The keys do not fit the layout; the message says which keys and how to fix them."""


@dataclass(frozen=True, slots=True)
class Placed:
    """Where one image belongs: its class folder and, in the splits layout, its split."""

    rel: str
    class_name: str
    split: str | None  # None: to be split by hash


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise InvalidArgumentError(
            f"Argument layout accepts only 'auto', 'splits' and 'classes'. Provided value: {layout!r}."
        )
    return layout


def place(rels: Sequence[str], layout: str = "auto") -> tuple[str, list[Placed]]:
    """The layout (``"splits"`` or ``"classes"``) of image keys relative to the dataset, and each image's place.

    Raises LayoutError naming the offending keys or folders. One pass per step, nothing held per key but the
    result: a listing may hold millions of keys.
    """
    check_layout(layout)
    if layout == "auto":
        layout = _detect(rels)
    if layout == "splits":
        return layout, _place_splits(rels)
    return layout, _place_classes(rels)


def _detect(rels: Sequence[str]) -> str:
    tops: set[str] = set()
    loose: list[str] = []
    for rel in rels:
        top, slash, _ = rel.partition("/")
        if slash:
            tops.add(top)
        elif len(loose) <= 10:  # enough to name five and to say there are more
            loose.append(rel)
    exact = [t for t in sorted(tops) if t in SPLITS]
    look_alike = [t for t in sorted(tops) if t not in SPLITS and t.lower() in SPLIT_LIKE]
    if look_alike:
        renames = ", ".join(f"{t}/ -> {SPLIT_LIKE[t.lower()]}/" for t in look_alike)
        raise LayoutError(
            f"has folders named like splits but not exactly train/val/test: {', '.join(t + '/' for t in look_alike)}. "
            f"Rename them ({renames}), or set layout='classes' if they really are class names."
        )
    if not exact:
        return "classes"
    others = [t for t in sorted(tops) if t not in SPLITS]
    if others or loose:
        shown = [t + "/" for t in others[:5]] + loose[:5]
        raise LayoutError(
            f"mixes split folders ({', '.join(t + '/' for t in exact)}) with other folders or images "
            f"({', '.join(shown)}{', ...' if len(others) + len(loose) > 10 else ''}). Put every image under "
            "train/<class>/, val/<class>/ or test/<class>/, or set layout='classes' if these folders are all classes."
        )
    return "splits"


def _place_splits(rels: Sequence[str]) -> list[Placed]:
    wrong = [rel for rel in rels if rel.count("/") < 2 or rel.partition("/")[0] not in SPLITS]
    if wrong:
        raise LayoutError(
            f"has images outside <split>/<class>/ folders (split one of train, val, test), e.g. {', '.join(wrong[:5])}."
        )
    names: dict[str, str] = {}  # one string per class, not one per image
    placed = []
    for rel in rels:
        split, name, _ = rel.split("/", 2)
        placed.append(Placed(rel, names.setdefault(name, name), SPLITS[SPLITS.index(split)]))
    return placed


def _place_classes(rels: Sequence[str]) -> list[Placed]:
    loose = [rel for rel in rels if "/" not in rel]
    if loose:
        raise LayoutError(f"has images outside class folders, e.g. {', '.join(loose[:5])}; expected <class>/<image>.")
    # Subfolders inside a class folder (dates, batches) belong to that class.
    names: dict[str, str] = {}
    return [Placed(rel, names.setdefault(name := rel.partition("/")[0], name), None) for rel in rels]
