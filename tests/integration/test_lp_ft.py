"""LP-FT on real data: the probe fits the new head before anything else trains, and its fit is recorded."""

from __future__ import annotations

import pytest
import torch

from airflow_tl.data.dataset import list_dataset
from airflow_tl.data.loader import ImageStream
from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.models.architectures import build_model, load_weights
from airflow_tl.models.folder import load_model_folder, read_card
from airflow_tl.training.config import TrainConfig
from airflow_tl.training.lp_ft import linear_probe_head
from airflow_tl.training.task import train
from tests.helpers import target_subset


@pytest.fixture(scope="module")
def few_shot(demo, local_s3):
    return target_subset(demo, "digits-5-9-10shot", per_class_train=10)


def test_the_probe_alone_already_classifies_the_target_and_leaves_the_backbone_untouched(store, demo, few_shot):
    weights, card = load_model_folder(store, demo.source_model)
    model = build_model(card.architecture, 5)
    load_weights(model, card.architecture, weights, source=demo.source_model, skip_head=True)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    dataset = list_dataset(store, few_shot)
    stream = ImageStream(store, dataset, card.input, batch_size=32)
    record = linear_probe_head(model, card.architecture, stream, num_classes=5, seed=0, class_names=dataset.class_names)
    assert record["val_accuracy"] > 0.6 and record["converged"]  # chance is 0.2
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())

    # The head now does what the probe measured, on the validation images.
    model.eval()
    correct = seen = 0
    with torch.inference_mode():
        for batch in stream.batches("val"):
            correct += (model(batch.x).argmax(1) == batch.y).sum().item()
            seen += len(batch.y)
    assert correct / seen == pytest.approx(record["val_accuracy"], abs=1e-6)


def test_lp_ft_training_records_the_probe_and_refuses_random_weights(store, bucket, demo, few_shot):
    config = TrainConfig(epochs=1, batch_size=16, learning_rate=5e-4, lp_ft=True)
    result = train(
        store, model_uri=demo.source_model, config=config, output_uri=f"s3://{bucket}/m", checkpoint_uri=None,
        dataset_uri=few_shot,
    )  # fmt: skip
    card = read_card(store, result.model_uri)
    assert card.training["lp_ft"] is True and set(card.training["linear_probe"]) == {
        "l2", "val_accuracy", "val_loss", "converged", "seconds",
    }  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="lp_ft probes pretrained features; with init='random'"):
        train(
            store, model_uri=demo.source_model, config=TrainConfig(epochs=1, init="random", lp_ft=True),
            output_uri=f"s3://{bucket}/r", checkpoint_uri=None, dataset_uri=few_shot,
        )  # fmt: skip
