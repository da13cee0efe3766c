"""The assessment's bounded sample and the probe's held-out split: bounded, class-proportional, seeded, stable."""

from __future__ import annotations

import pytest
import torch

from airflow_tl.assess.probe import held_out_split, skill
from airflow_tl.assess.task import _sample_rows, _train_counts, sample_keys
from airflow_tl.data.dataset import DatasetError, ImageDataset, ImageItem
from airflow_tl.exceptions import InvalidArgumentError


def dataset(per_class: dict[str, int], split: str = "train") -> ImageDataset:
    names = sorted(per_class)
    items = [
        ImageItem(f"{name}/{i:05d}.png", f"e{i}", 10, names.index(name), split)
        for name in names
        for i in range(per_class[name])
    ]
    return ImageDataset("s3://b/d", "b", names, items, "classes")


def by_class(keys: set[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in keys:
        counts[key.split("/")[0]] = counts.get(key.split("/")[0], 0) + 1
    return counts


def test_a_small_training_split_is_taken_whole():
    data = dataset({"a": 30, "b": 5})
    assert sample_keys(data, 2000, seed=0) == {i.key for i in data.items}


def test_a_large_one_is_cut_to_max_images_in_proportion_but_never_below_two_per_class():
    keys = sample_keys(dataset({"a": 9000, "b": 900, "c": 3}), 1000, seed=0)
    counts = by_class(keys)
    assert len(keys) == 1000 and counts["c"] == 2
    assert 900 <= counts["a"] <= 910 and 88 <= counts["b"] <= 91


def test_the_sample_is_seeded_and_stays_put_as_images_are_added():
    first = sample_keys(dataset({"a": 5000, "b": 5000}), 500, seed=1)
    assert first == sample_keys(dataset({"a": 5000, "b": 5000}), 500, seed=1)
    assert first != sample_keys(dataset({"a": 5000, "b": 5000}), 500, seed=2)
    grown = sample_keys(dataset({"a": 5500, "b": 5500}), 500, seed=1)
    assert len(first & grown) >= 400  # hash order: new images only displace the old ones they outrank


def test_max_images_too_small_for_two_of_every_class_names_the_minimum():
    with pytest.raises(InvalidArgumentError, match="max_images=5 cannot sample 2 images of each of the 3 classes"):
        sample_keys(dataset({"a": 100, "b": 100, "c": 100}), 5, seed=0)


def test_a_class_with_fewer_than_two_training_images_is_refused_by_name():
    with pytest.raises(DatasetError, match=r"at least 2 training images each, and these have fewer: 'cat' \(1\)"):
        _train_counts(dataset({"cat": 1, "dog": 40}))


def test_cached_rows_are_sampled_the_same_way():
    labels = torch.tensor([0] * 900 + [1] * 100)
    rows = _sample_rows(labels, 100, seed=0)
    assert len(rows) == 100 and rows.unique().numel() == 100
    assert (labels[rows] == 1).sum().item() == 10
    assert torch.equal(_sample_rows(labels, 5000, seed=0), torch.arange(1000))


def test_the_probe_holds_out_a_share_of_every_class_and_fits_on_the_rest():
    labels = torch.tensor([0] * 10 + [1] * 2 + [2] * 3)
    fit, held = held_out_split(labels, seed=0)
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(15))
    assert [(labels[held] == c).sum().item() for c in range(3)] == [3, 1, 1]
    assert all((labels[fit] == c).any() for c in range(3))


def test_skill_is_zero_at_chance_and_one_when_perfect():
    assert skill(0.25, 4) == 0.0 and skill(1.0, 4) == 1.0 and skill(0.0, 2) == -1.0
