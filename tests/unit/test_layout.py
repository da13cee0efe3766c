"""Layout detection: train/val/test folders or class folders, and every ambiguous case refused by name."""

from __future__ import annotations

import pytest

from airflow_tl.data.layout import LayoutError, check_layout, place
from airflow_tl.exceptions import InvalidArgumentError


def rels(*folders: str, per: int = 2) -> list[str]:
    return [f"{folder}/{i}.png" for folder in folders for i in range(per)]


def test_split_folders_are_the_splits_layout():
    layout, placed = place(rels("train/cat", "train/dog", "val/cat", "test/dog"))
    assert layout == "splits"
    assert {(p.split, p.class_name) for p in placed} == {
        ("train", "cat"),
        ("train", "dog"),
        ("val", "cat"),
        ("test", "dog"),
    }


def test_class_folders_are_the_classes_layout_with_nested_subfolders_kept_in_their_class():
    layout, placed = place(["cat/2024-01/a.png", "cat/b.png", "dog/c.png"])
    assert layout == "classes"
    assert [(p.class_name, p.split) for p in placed] == [("cat", None), ("cat", None), ("dog", None)]


@pytest.mark.parametrize("extra", ["cat/1.png", "stray.png"])
def test_auto_refuses_split_folders_mixed_with_class_folders_or_loose_images(extra):
    with pytest.raises(LayoutError) as err:
        place([*rels("train/cat", "val/cat", "train/dog", "val/dog"), extra])
    message = str(err.value)
    assert "mixes split folders (train/, val/)" in message
    assert extra.split("/")[0] in message
    assert "layout='classes'" in message


@pytest.mark.parametrize(
    ("folders", "named"),
    [
        (("Train/cat", "Train/dog", "Val/cat"), ["Train/", "Val/"]),
        (("train/cat", "validation/cat", "test/cat"), ["validation/"]),
        (("train/cat", "valid/dog", "Test/dog"), ["Test/", "valid/"]),
        (("TRAINING/a", "TESTING/a"), ["TESTING/", "TRAINING/"]),
    ],
)
def test_auto_refuses_folders_named_like_splits_in_any_case(folders, named):
    with pytest.raises(LayoutError) as err:
        place(rels(*folders))
    message = str(err.value)
    assert "named like splits but not exactly train/val/test" in message
    for name in named:
        assert name in message
        assert f"{name} -> " in message  # says what to rename it to
    assert "layout='classes'" in message


def test_an_explicit_classes_layout_takes_split_like_names_as_classes():
    layout, placed = place(rels("train", "dev", "valid"), "classes")
    assert layout == "classes"
    assert sorted({p.class_name for p in placed}) == ["dev", "train", "valid"]


def test_an_explicit_splits_layout_names_images_outside_split_folders():
    with pytest.raises(LayoutError, match=r"outside <split>/<class>/ folders.*Train/cat/0.png"):
        place([*rels("train/cat", "val/cat"), "Train/cat/0.png"], "splits")
    with pytest.raises(LayoutError, match="train/0.png"):
        place([*rels("train/cat", "val/cat"), "train/0.png"], "splits")


def test_loose_images_in_the_classes_layout_are_named():
    with pytest.raises(LayoutError, match=r"outside class folders, e.g. stray.png"):
        place([*rels("cat", "dog"), "stray.png"])


def test_unknown_layout_lists_the_valid_ones():
    with pytest.raises(
        InvalidArgumentError, match="accepts only 'auto', 'splits' and 'classes'. Provided value: 'flat'"
    ):
        check_layout("flat")
