"""TrainConfig validation and fingerprint; parameter groups, optimizers and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.models.architectures import block_of, build_model, describe_blocks, head_prefixes
from airflow_tl.models.freezing import freeze_first
from airflow_tl.training.config import TrainConfig
from airflow_tl.training.optim import build_optimizer, cosine_with_warmup, param_groups

# --- TrainConfig ------------------------------------------------------------------------------------------------


def test_defaults_are_valid():
    config = TrainConfig()
    assert config.optimizer == "adamw" and config.freeze_layers == 0 and config.init == "pretrained"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0), ("epochs", -3), ("epochs", 2.5), ("epochs", True), ("epochs", "10"),
        ("batch_size", -1), ("batch_size", 0), ("batch_size", None),
        ("learning_rate", 0), ("learning_rate", -1e-3), ("learning_rate", math.nan), ("learning_rate", math.inf),
        ("learning_rate", "0.1"), ("learning_rate", True),
        ("weight_decay", -0.1),
        ("momentum", 1.5), ("momentum", -0.1),
        ("warmup_epochs", -1),
        ("label_smoothing", 1.01),
        ("layer_decay", 1.5), ("layer_decay", 0), ("layer_decay", -0.5),
        ("patience", 0), ("patience", -2), ("patience", 1.5),
        ("seed", 1.5), ("seed", "0"), ("seed", True),
    ],
)  # fmt: skip
def test_bad_values_name_the_field(field, value):
    with pytest.raises(InvalidArgumentError) as err:
        TrainConfig(**{field: value})
    assert str(err.value).startswith(f"Argument {field} ")
    assert f"Provided value: {value!r}." in str(err.value)


def test_bad_optimizer_lists_the_valid_ones():
    with pytest.raises(InvalidArgumentError) as err:
        TrainConfig(optimizer="adam")
    assert str(err.value) == "Argument optimizer accepts only 'adamw' and 'sgd'. Provided value: 'adam'."


@pytest.mark.parametrize(("given", "stored"), [("AdamW", "adamw"), ("SGD", "sgd"), ("sgd", "sgd")])
def test_optimizer_names_are_case_insensitive(given, stored):
    assert TrainConfig(optimizer=given).optimizer == stored


def test_bad_init_lists_the_valid_ones():
    with pytest.raises(InvalidArgumentError) as err:
        TrainConfig(init="x")
    assert str(err.value) == "Argument init accepts only 'pretrained' and 'random'. Provided value: 'x'."


@pytest.mark.parametrize("value", [-1, "-1", "", " ", "2.5", "layer 3", "layer3;", 1.0, True, None, [3]])
def test_bad_freeze_layers(value):
    with pytest.raises(InvalidArgumentError) as err:
        TrainConfig(freeze_layers=value)
    assert str(err.value) == (
        "Argument freeze_layers accepts only a block count (0 or more), a block name or 'all'. "
        f"Provided value: {value!r}."
    )


@pytest.mark.parametrize(
    ("value", "kept"), [(3, 3), ("3", 3), (" 02 ", 2), ("all", "all"), ("layer3", "layer3"), ("Mixed_5b", "Mixed_5b")]
)
def test_freeze_layers_takes_a_count_or_a_name_checked_later_against_the_blocks(value, kept):
    # Which names exist depends on the architecture: models/freezing.py checks them against the model's blocks.
    assert TrainConfig(freeze_layers=value).freeze_layers == kept


@pytest.mark.parametrize(
    "kwargs",
    [
        {"freeze_layers": "all"}, {"freeze_layers": 3}, {"layer_decay": 1.0}, {"layer_decay": 0.5},
        {"patience": None}, {"patience": 1}, {"learning_rate": 1}, {"momentum": 0}, {"warmup_epochs": 0},
        {"init": "random"}, {"epochs": 1, "batch_size": 1},
    ],
)  # fmt: skip
def test_good_values(kwargs):
    config = TrainConfig(**kwargs)
    for key, value in kwargs.items():
        assert getattr(config, key) == value


def test_fingerprint_is_stable_and_sensitive():
    base = TrainConfig(epochs=5, seed=1)
    assert base.fingerprint() == TrainConfig(epochs=5, seed=1).fingerprint()
    assert base.fingerprint(dataset="a", model="m") == TrainConfig(seed=1, epochs=5).fingerprint(model="m", dataset="a")
    assert TrainConfig(optimizer="SGD").fingerprint() == TrainConfig(optimizer="sgd").fingerprint()
    assert len(base.fingerprint()) == 64 and int(base.fingerprint(), 16) >= 0

    others = [
        TrainConfig(epochs=6, seed=1),
        TrainConfig(epochs=5, seed=2),
        TrainConfig(epochs=5, seed=1, learning_rate=2e-3),
        TrainConfig(epochs=5, seed=1, freeze_layers="all"),
        TrainConfig(epochs=5, seed=1, augment=True),
    ]
    prints = {base.fingerprint()} | {c.fingerprint() for c in others}
    assert len(prints) == len(others) + 1
    assert base.fingerprint(dataset="a") != base.fingerprint(dataset="b") != base.fingerprint()


def test_to_dict_round_trips():
    config = TrainConfig(epochs=3, optimizer="sgd", layer_decay=0.7, freeze_layers="all")
    assert TrainConfig(**config.to_dict()) == config


# --- param_groups -----------------------------------------------------------------------------------------------

LR = 0.01


@pytest.fixture(scope="module")
def blocks():
    return describe_blocks("resnet18")


@pytest.fixture(scope="module")
def head():
    return list(head_prefixes("resnet18"))


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18", 3)


def grouped(groups: list[dict]) -> dict[int, dict]:
    """Each parameter's group, by parameter id; fails if a parameter is in two groups."""
    owner: dict[int, dict] = {}
    for group in groups:
        for param in group["params"]:
            assert id(param) not in owner
            owner[id(param)] = group
    return owner


@pytest.mark.parametrize("k", [0, 2, 5])
def test_param_groups_leave_out_frozen_parameters(blocks, head, k):
    model = resnet18()
    frozen = freeze_first(model, blocks, k)
    owner = grouped(param_groups(model, blocks, head, TrainConfig(learning_rate=LR)))

    for name, param in model.named_parameters():
        is_frozen = any(name == p or name.startswith(p + ".") for p in frozen)
        assert (id(param) in owner) == (not is_frozen), name
    assert len(owner) == sum(p.requires_grad for p in model.parameters())
    if k == 5:
        assert {n for n, p in model.named_parameters() if id(p) in owner} == {"fc.weight", "fc.bias"}


def test_no_weight_decay_on_one_dimensional_parameters(blocks, head):
    model = resnet18()
    groups = param_groups(model, blocks, head, TrainConfig(learning_rate=LR, weight_decay=0.05))
    owner = grouped(groups)
    for name, param in model.named_parameters():
        expected = 0.0 if param.ndim <= 1 else 0.05
        assert owner[id(param)]["weight_decay"] == expected, name
    for group in groups:  # a group never mixes decayed and undecayed parameters
        assert len({p.ndim > 1 for p in group["params"]}) == 1


def test_without_layer_decay_every_group_has_the_full_rate(blocks, head):
    groups = param_groups(resnet18(), blocks, head, TrainConfig(learning_rate=LR))
    assert {g["lr"] for g in groups} == {LR}


def test_layer_decay_scales_rates_by_depth(blocks, head):
    d = 0.5
    model = resnet18()
    freeze_first(model, blocks, 1)
    owner = grouped(param_groups(model, blocks, head, TrainConfig(learning_rate=LR, layer_decay=d)))
    n = len(blocks)
    depths_seen = set()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        index = block_of(name, blocks, head)
        if name.startswith("fc."):
            assert index is None
            assert owner[id(param)]["lr"] == LR, name  # the head trains at the full rate
        else:
            assert index is not None and index >= 1
            assert owner[id(param)]["lr"] == pytest.approx(LR * d ** (n - index)), name
        depths_seen.add(index)
    assert depths_seen == {None, 1, 2, 3, 4}
    # layer4 (the last block) at lr*d, layer1 at lr*d**4: early blocks move least
    assert owner[id(model.layer4[0].conv1.weight)]["lr"] == pytest.approx(LR * d)
    assert owner[id(model.layer1[0].conv1.weight)]["lr"] == pytest.approx(LR * d**4)


# --- build_optimizer --------------------------------------------------------------------------------------------


def test_build_optimizer_sgd(blocks, head):
    model = resnet18()
    config = TrainConfig(optimizer="sgd", learning_rate=LR, momentum=0.8, layer_decay=0.5)
    groups = param_groups(model, blocks, head, config)
    optimizer = build_optimizer(groups, config)
    assert type(optimizer) is torch.optim.SGD
    assert len(optimizer.param_groups) == len(groups)
    for group, source in zip(optimizer.param_groups, groups, strict=True):
        assert group["momentum"] == 0.8 and group["nesterov"] is True
        assert group["lr"] == source["lr"] and group["weight_decay"] == source["weight_decay"]


def test_build_optimizer_sgd_without_momentum(blocks, head):
    config = TrainConfig(optimizer="sgd", momentum=0.0)
    optimizer = build_optimizer(param_groups(resnet18(), blocks, head, config), config)
    assert type(optimizer) is torch.optim.SGD
    assert all(g["momentum"] == 0.0 and g["nesterov"] is False for g in optimizer.param_groups)


def test_build_optimizer_adamw(blocks, head):
    config = TrainConfig(optimizer="adamw", learning_rate=LR, weight_decay=0.02)
    groups = param_groups(resnet18(), blocks, head, config)
    optimizer = build_optimizer(groups, config)
    assert type(optimizer) is torch.optim.AdamW
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.02}
    assert {g["lr"] for g in optimizer.param_groups} == {LR}


# --- cosine_with_warmup -----------------------------------------------------------------------------------------


def lrs_over(steps: int, *, warmup: int, total: int, base: tuple[float, ...] = (0.1, 0.02)) -> list[list[float]]:
    params = [nn.Parameter(torch.zeros(1)) for _ in base]
    optimizer = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, base, strict=True)], lr=1.0)
    scheduler = cosine_with_warmup(optimizer, warmup_steps=warmup, total_steps=total)
    rates = [[g["lr"] for g in optimizer.param_groups]]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        rates.append([g["lr"] for g in optimizer.param_groups])
    return rates


def test_cosine_with_warmup_ramps_then_decays_to_zero():
    warmup, total = 4, 20
    rates = lrs_over(total + 3, warmup=warmup, total=total)
    for group, base in enumerate((0.1, 0.02)):
        lr = [r[group] for r in rates]
        # linear warm-up: equal increments up to the group's own rate
        assert lr[:warmup] == pytest.approx([base * (s + 1) / warmup for s in range(warmup)])
        assert max(lr) == pytest.approx(base) and lr[warmup] == pytest.approx(base)
        decay = lr[warmup : total + 1]
        assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))  # never rises again
        midpoint = warmup + (total - warmup) // 2
        assert lr[midpoint] == pytest.approx(base / 2)  # cosine: half way down at half the decay
        assert lr[total] == pytest.approx(0.0, abs=1e-12)
        assert all(x == pytest.approx(0.0, abs=1e-12) for x in lr[total:])  # and it stays there


def test_cosine_without_warmup_steps_starts_at_full_rate():
    rates = lrs_over(10, warmup=1, total=10, base=(0.5,))
    assert rates[0] == [pytest.approx(0.5)] and rates[1] == [pytest.approx(0.5)]
    assert rates[10] == [pytest.approx(0.0, abs=1e-12)]
