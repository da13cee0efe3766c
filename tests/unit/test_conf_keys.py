"""A run's conf may only name the DAG's Params: the message names each stray key and the Param it is close to."""

from __future__ import annotations

import pytest

from airflow_tl.exceptions import InvalidArgumentError, PermanentError
from airflow_tl.operators.conf import check_conf, unknown_conf_error

PARAMS = ["batch_size", "dataset_uri", "epochs", "freeze_layers", "learning_rate", "seed"]


def test_params_only_pass():
    assert unknown_conf_error({"epochs": 3, "seed": 1}, PARAMS, "tl_x") is None
    assert unknown_conf_error({}, PARAMS, "tl_x") is None and unknown_conf_error(None, PARAMS, "tl_x") is None
    check_conf({"epochs": 3}, PARAMS, "tl_x")


def test_stray_keys_are_named_with_the_closest_param_and_every_valid_one():
    message = unknown_conf_error({"epoch": 3, "num_processes": 2, "lr": 0.1, "seed": 0}, PARAMS, "tl_partial_freeze")
    assert message.startswith("The conf of this run of tl_partial_freeze has keys that are not Params of the DAG: ")
    assert "'epoch' (did you mean 'epochs'?)" in message
    assert "'lr'" in message and "'num_processes'" in message and "'num_processes' (did" not in message
    assert "'seed'" not in message.split("Valid Params")[0]
    assert message.endswith("Valid Params: batch_size, dataset_uri, epochs, freeze_layers, learning_rate, seed.")


def test_the_error_is_permanent():
    with pytest.raises(InvalidArgumentError, match=r"'freeze_layer' \(did you mean 'freeze_layers'\?\)") as err:
        check_conf({"freeze_layer": 2}, PARAMS, "tl_x")
    assert isinstance(err.value, PermanentError)
