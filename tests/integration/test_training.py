"""Training for real on the demo transfer task: freezing is exact, learning is real, bad input is refused."""

from __future__ import annotations

import pytest
import torch

from airflow_tl.data.dataset import DatasetError, list_dataset
from airflow_tl.data.loader import CorruptImagesError
from airflow_tl.evaluation.predict import predict
from airflow_tl.exceptions import IncompatibleWeightsError
from airflow_tl.features.extract import extract_features, load_split, read_features_index
from airflow_tl.models.architectures import build_model
from airflow_tl.models.folder import load_model_folder
from airflow_tl.training.config import TrainConfig
from airflow_tl.training.task import train
from tests.helpers import copy_dataset, keys_under, publish_model, target_subset


@pytest.fixture(scope="module")
def few_shot(demo, local_s3):
    """Digits 5–9 with only 10 training images per class: the small-data regime."""
    return target_subset(demo, "digits-5-9-10shot", per_class_train=10)


def test_frozen_blocks_are_bitwise_unchanged_and_the_rest_learns(store, bucket, demo, few_shot):
    source, _ = load_model_folder(store, demo.source_model)
    config = TrainConfig(epochs=2, batch_size=16, learning_rate=3e-3, freeze_layers=3, patience=None)
    result = train(
        store,
        model_uri=demo.source_model,
        config=config,
        output_uri=f"s3://{bucket}/m",
        checkpoint_uri=None,
        dataset_uri=few_shot,
    )
    trained, card = load_model_folder(store, f"s3://{bucket}/m")
    frozen = [k for k in source if k.startswith(("conv1.", "bn1.", "layer1.", "layer2."))]
    trainable = [k for k in source if k.startswith(("layer3.", "layer4.")) and k.endswith(("weight", "bias"))]
    assert any(k.endswith("running_mean") for k in frozen) and any(k.endswith("num_batches_tracked") for k in frozen)
    unchanged = [k for k in frozen if torch.equal(trained[k], source[k])]
    assert unchanged == frozen  # parameters and BatchNorm statistics of frozen blocks
    assert all(not torch.equal(trained[k], source[k]) for k in trainable)
    assert trained["fc.weight"].shape == (5, 512) and card.class_names == list("56789")
    assert card.training["frozen_blocks"] == ["stem", "layer1", "layer2"]
    frozen_params = sum(p.numel() for k, p in source.items() if k in frozen and k.endswith(("weight", "bias")))
    assert result.trainable_params == result.total_params - frozen_params


def test_small_data_transfer_beats_training_from_scratch(store, bucket, demo, few_shot):
    """With 10 images per class, reusing the digits-0–4 network beats learning 5–9 from nothing."""
    dataset = list_dataset(store, few_shot)
    features = extract_features(store, model_uri=demo.source_model, dataset=dataset, features_root=f"s3://{bucket}/f")
    runs = {
        "feature_extraction": (TrainConfig(freeze_layers="all"), {"features_uri": features.uri}),  # no epochs
        # The same budget for both image strategies: 8 epochs at the usual fine-tuning rate.
        "partial_freeze": (
            TrainConfig(epochs=8, batch_size=16, learning_rate=1e-3, freeze_layers=3, patience=None),
            {"dataset_uri": few_shot},
        ),
        "from_scratch": (
            TrainConfig(epochs=8, batch_size=16, learning_rate=1e-3, init="random", patience=None),
            {"dataset_uri": few_shot},
        ),
    }
    accuracy = {}
    for name, (config, source) in runs.items():
        result = train(
            store,
            model_uri=demo.source_model,
            config=config,
            output_uri=f"s3://{bucket}/{name}",
            checkpoint_uri=None,
            **source,
        )
        accuracy[name] = result.fit.best["val_accuracy"]
    print("validation accuracy after transfer, 10 images per class:", accuracy)
    assert all(a > 0.4 for a in accuracy.values()), accuracy  # chance is 0.2 with five classes
    assert accuracy["feature_extraction"] > accuracy["from_scratch"] + 0.05, accuracy
    assert accuracy["partial_freeze"] > accuracy["from_scratch"] + 0.05, accuracy


def test_a_head_on_features_is_fitted_to_convergence_whatever_the_epochs(store, bucket, demo, few_shot):
    """The epoch loop's settings do not apply to a head fitted on features: same features, same head."""
    dataset = list_dataset(store, few_shot)
    features = extract_features(store, model_uri=demo.source_model, dataset=dataset, features_root=f"s3://{bucket}/f")
    configs = {
        "short": TrainConfig(freeze_layers="all", epochs=1, learning_rate=1e-5, patience=1, seed=3),
        "long": TrainConfig(freeze_layers="all", epochs=50, learning_rate=1e-1, batch_size=4),
    }
    results = {
        name: train(
            store,
            model_uri=demo.source_model,
            config=config,
            output_uri=f"s3://{bucket}/{name}",
            checkpoint_uri=f"s3://{bucket}/ck-{name}",
            features_uri=features.uri,
        )
        for name, config in configs.items()
    }
    (short, card), (long, _) = (load_model_folder(store, f"s3://{bucket}/{name}") for name in configs)
    assert short.keys() == long.keys() and all(torch.equal(short[k], long[k]) for k in short)
    source, _ = load_model_folder(store, demo.source_model)
    assert all(torch.equal(short[k], source[k]) for k in source if not k.startswith("fc."))

    training = card.training
    assert training["method"] == "lbfgs" and training["converged"] and training["iterations"] > 0
    assert training["l2"] in [c["l2"] for c in training["candidates"]] and len(training["candidates"]) >= 2
    assert training["freeze_layers"] == "all" and training["seed"] == 3 and training["trainable_params"] == 5 * 513
    assert not {"epochs", "learning_rate", "batch_size", "patience", "optimizer"} & set(training)
    assert [row["l2"] for row in card.history if row["chosen"]] == [training["l2"]]
    assert card.metrics["val_accuracy"] > 0.6  # five classes, ten training images each: chance is 0.2

    summary = results["short"].summary()
    assert summary["epochs_run"] == summary["best_epoch"] == 1 and not summary["stopped_early"]
    assert summary["method"] == "lbfgs" and summary["l2"] == training["l2"]
    assert summary["iterations"] == training["iterations"] and summary["val_accuracy"] == card.metrics["val_accuracy"]
    assert keys_under(store, f"s3://{bucket}/ck-short") == []  # a fit of seconds writes no checkpoints


@pytest.mark.parametrize("architecture", ["squeezenet1_1", "regnet_y_400mf"])
def test_the_saved_model_computes_the_head_fitted_on_its_features(store, bucket, few_shot, architecture):
    """SqueezeNet's head is a 1x1 convolution, RegNet cannot be built on the meta device: feature extraction,
    the head's fit, the model folder and evaluation's predictions all agree on them too."""
    source = f"s3://{bucket}/zoo/{architecture}"
    publish_model(store, source, arch=architecture)  # random weights, 32 px
    dataset = list_dataset(store, few_shot)
    features = extract_features(store, model_uri=source, dataset=dataset, features_root=f"s3://{bucket}/f")
    output = f"s3://{bucket}/{architecture}"
    result = train(
        store,
        model_uri=source,
        config=TrainConfig(freeze_layers="all"),
        output_uri=output,
        checkpoint_uri=None,
        features_uri=features.uri,
    )
    x, _ = load_split(store, features.uri, read_features_index(store, features.uri), "test")
    expected = torch.softmax(x.double() @ result.head.weight.double().T + result.head.bias.double(), dim=1)
    predictions = predict(store, output, dataset)  # the folder as evaluation runs it
    assert predictions.keys == [item.key for item in dataset.split("test")]  # the features' row order
    torch.testing.assert_close(predictions.probs.double(), expected, rtol=1e-4, atol=1e-5)
    assert result.total_params == sum(p.numel() for p in build_model(architecture, 5).parameters())


def test_head_training_rejects_features_of_another_model(store, bucket, demo, few_shot):
    dataset = list_dataset(store, few_shot)
    features = extract_features(store, model_uri=demo.source_model, dataset=dataset, features_root=f"s3://{bucket}/f")
    publish_model(store, f"s3://{bucket}/other", classes=list("01234"))
    with pytest.raises(
        IncompatibleWeightsError, match=f"Features {features.uri} were extracted with {demo.source_model}"
    ):
        train(
            store,
            model_uri=f"s3://{bucket}/other",
            config=TrainConfig(freeze_layers="all"),
            output_uri=f"s3://{bucket}/out",
            checkpoint_uri=f"s3://{bucket}/ck",
            features_uri=features.uri,
        )
    assert keys_under(store, f"s3://{bucket}/out") == [] and keys_under(store, f"s3://{bucket}/ck") == []


def test_corrupt_images_fail_with_their_keys_or_are_skipped_and_counted(store, bucket, demo, few_shot):
    dataset_uri = f"s3://{bucket}/data"
    copy_dataset(store, few_shot, dataset_uri)
    store.put_bytes(f"{dataset_uri}/train/7/broken.png", b"\x89PNG\r\n\x1a\n not really")
    store.put_bytes(f"{dataset_uri}/test/9/truncated.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 30)
    dataset = list_dataset(store, dataset_uri)
    with pytest.raises(CorruptImagesError) as raised:
        extract_features(store, model_uri=demo.source_model, dataset=dataset, features_root=f"s3://{bucket}/f")
    assert f"s3://{bucket}/data/train/7/broken.png" in str(raised.value)
    assert "skip_corrupt=True" in str(raised.value)
    assert not [k for k in keys_under(store, f"s3://{bucket}/f") if k.endswith("index.json")]

    result = extract_features(
        store, model_uri=demo.source_model, dataset=dataset, features_root=f"s3://{bucket}/f", skip_corrupt=True
    )
    assert sorted(result.skipped_corrupt) == ["data/test/9/truncated.jpg", "data/train/7/broken.png"]
    assert result.summary()["skipped_corrupt"] == 2 and result.counts["train"] == 50


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"train/a/1.png", "train/b/", "val/a/2.png"}, "has empty class folders: b"),
        ({"train/a/1.png", "train/a/2.png", "val/a/3.png"}, "has a single class ('a')"),
    ],
)
def test_unusable_datasets_are_refused_before_training(store, bucket, demo, layout, message):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buffer, format="PNG")
    for key in layout:
        store.put_bytes(f"s3://{bucket}/data/{key}", b"" if key.endswith("/") else buffer.getvalue())
    with pytest.raises(
        DatasetError, match=f"Dataset s3://{bucket}/data {message}".replace("(", r"\(").replace(")", r"\)")
    ):
        train(
            store,
            model_uri=demo.source_model,
            config=TrainConfig(epochs=1),
            output_uri=f"s3://{bucket}/out",
            checkpoint_uri=f"s3://{bucket}/ck",
            dataset_uri=f"s3://{bucket}/data",
        )
    assert keys_under(store, f"s3://{bucket}/out") == [] and keys_under(store, f"s3://{bucket}/ck") == []
