"""The typed, documented Params of a strategy DAG: what the trigger form shows and ``-c '{...}'`` sets."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.pipelines.strategies import STRATEGIES, Strategy
from airflow_tl.training.config import BLOCK_NAME_PATTERN, OPTIMIZERS, TrainConfig

S3_PATTERN = r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$"
SOURCE_PATTERN = r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?|torchvision://.+|https?://.+)$"
GATE_METRICS = ["accuracy", "macro_f1", "log_loss", "calibration_error"]

DEMO_BUCKET = "s3://airflow-tl-demo"
DEMO_DEFAULTS: dict[str, Any] = {
    "dataset_uri": f"{DEMO_BUCKET}/datasets/digits-5-9",
    "pretrained_uri": f"{DEMO_BUCKET}/zoo/resnet18-digits-0-4",
    "registry_uri": f"{DEMO_BUCKET}/registry",
    "work_uri": f"{DEMO_BUCKET}/work",
    "model_name": "digits-5-9",
}
# What the Params of the epoch loop mean to feature extraction, whose head is fitted by L-BFGS.
HEAD_IGNORES = {
    "epochs": "not used: the head is fitted to convergence (L-BFGS)",
    "learning_rate": "not used: L-BFGS needs no learning rate",
    "patience": "not used: the head's L2 penalty is chosen on the validation split instead of stopping early",
    "batch_size": "images per forward pass of feature extraction and evaluation; the head is fitted full-batch",
    "seed": "seed of the split; the head's fit is deterministic",
}
FREEZE_LAYERS = (
    "leading blocks to freeze, counted from the input, or the name of the last one to freeze (layer3: stem to "
    "layer3); each family's stages (ResNet: stem, layer1, ..., layer4; ViT: patch_embed, then each encoder layer; "
    "docs/architectures.md)"
)
OPTIMISER_SETTINGS = ("optimizer", "weight_decay", "warmup_epochs", "layer_decay", "label_smoothing")
# The optimiser's Params: what a fitted head (feature_extraction) does without them.
HEAD_IGNORES_OPTIMISER = "not used: the head is fitted to convergence (L-BFGS)"
# Defaults of the Params that neither the demo nor a strategy sets.
GENERAL_DEFAULTS: dict[str, Any] = {
    **{name: getattr(TrainConfig, name) for name in OPTIMISER_SETTINGS},
    "image_size": None,
    "seed": 0,
    "patience": 3,
    "augment": False,
    "skip_corrupt": False,
    "gate_metric": "accuracy",
    "min_improvement": 0.0,
    "min_score": None,
    "min_test_images": 50,
    "on_class_change": "keep",
    "layout": "auto",
    "device": "auto",
    "num_processes": 1,
}


def strategy_params(strategy: Strategy, defaults: dict[str, Any] | None = None) -> dict[str, Param]:
    """Params of ``strategy``'s DAG; ``defaults`` overrides the demo's defaults by Param name."""
    d = {**DEMO_DEFAULTS, **GENERAL_DEFAULTS, **strategy.defaults, **(defaults or {})}
    params: dict[str, Param] = {
        "dataset_uri": Param(
            d["dataset_uri"],
            type="string",
            pattern=S3_PATTERN,
            description="s3:// prefix of the images: <prefix>/{train,val,test}/<class>/<image>, or "
            "<prefix>/<class>/<image> to be split here by a hash of each key (stable as the data grows); or "
            "<prefix>/shards, their sharded form (tl_prepare_shards)",
        ),
        "layout": Param(
            d["layout"],
            enum=["auto", "splits", "classes"],
            description="how to read dataset_uri's folders: 'splits' (train/val/test/<class>/), 'classes' "
            "(<class>/, split by key hash), or 'auto', which refuses anything ambiguous such as Train/ or "
            "validation/ folders or class folders beside split folders",
        ),
    }
    if strategy.init == "random":
        params["architecture"] = Param(
            d["architecture"],
            type="string",
            minLength=1,
            description="torchvision architecture to build, e.g. resnet18",
        )
        params["pretrained_uri"] = Param(
            d["pretrained_uri"],
            type=["null", "string"],
            pattern=SOURCE_PATTERN,
            description="optional source whose architecture and preprocessing to reuse; its weights are not used",
        )
        params["image_size"] = Param(
            d["image_size"], type=["null", "integer"], minimum=8, description="input size (pixels) of the network"
        )
    else:
        params["pretrained_uri"] = Param(
            d["pretrained_uri"],
            type="string",
            pattern=SOURCE_PATTERN,
            description="pretrained weights: an s3:// model folder, torchvision://<arch>/<WEIGHTS>, or "
            "https://…/<name>-<sha256 prefix>.pth",
        )
        params["image_size"] = Param(
            d["image_size"],
            type=["null", "integer"],
            minimum=8,
            description="input size (pixels); default: the source's",
        )
    params |= {
        "registry_uri": Param(
            d["registry_uri"], type="string", pattern=S3_PATTERN, description="s3:// prefix of the model registry"
        ),
        "model_name": Param(
            d["model_name"],
            type="string",
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
            description="registry model name: versions and the champion live under <registry_uri>/<model_name>/",
        ),
        "work_uri": Param(
            d["work_uri"], type="string", pattern=S3_PATTERN, description="s3:// prefix for intermediate outputs"
        ),
        "epochs": Param(d["epochs"], type="integer", minimum=1, description="maximum training epochs"),
        "batch_size": Param(d["batch_size"], type="integer", minimum=1, description="images (or features) per step"),
        "learning_rate": Param(
            d["learning_rate"], type="number", exclusiveMinimum=0, description="peak learning rate (AdamW)"
        ),
        "patience": Param(
            d["patience"],
            type=["null", "integer"],
            minimum=1,
            description="stop after this many epochs without a better validation loss; null never stops early",
        ),
        "seed": Param(d["seed"], type="integer", description="seed of the split, initialisation and shuffling"),
        **_optimiser_params(d),
    }
    if strategy.uses_features:
        for name in OPTIMISER_SETTINGS:
            params[name].description = HEAD_IGNORES_OPTIMISER
        # Kept so that one conf serves every strategy DAG; the head is fitted to convergence (training/head.py).
        for name, why in HEAD_IGNORES.items():
            params[name].description = why
    if strategy.freeze_layers is None:
        params["freeze_layers"] = Param(
            d["freeze_layers"],
            # Both JSON types: the trigger form reads 3 as a count and layer3 as a name. Minimum and pattern each
            # constrain only their own type.
            type=["integer", "string"],
            minimum=0,
            pattern=f"^([0-9]+|{BLOCK_NAME_PATTERN})$",
            description=f"{FREEZE_LAYERS}; checked against the model's blocks before anything is downloaded",
        )
    if "lp_ft" in strategy.options:
        params["lp_ft"] = Param(
            d["lp_ft"],
            type="boolean",
            description="LP-FT: fit the new head as a linear probe on the frozen features first, then fine-tune "
            "everything from there (Kumar et al. 2022)",
        )
    params["num_processes"] = Param(
        d["num_processes"],
        type="integer",
        minimum=1,
        description=(
            "processes extracting features on the worker, each a block of the images (one GPU each on CUDA)"
            if strategy.uses_features
            else "training processes on the worker, data-parallel under torch.distributed (one GPU each on "
            "CUDA); at most the batch size and the training images"
        ),
    )
    if not strategy.uses_features:
        params["augment"] = Param(
            d["augment"],
            type="boolean",
            description="light seeded augmentation of training images (crop, rotation, brightness)",
        )
    params |= {
        "skip_corrupt": Param(
            d["skip_corrupt"], type="boolean", description="leave out images that cannot be decoded instead of failing"
        ),
        "device": device_param(d["device"]),
        "gate_metric": Param(d["gate_metric"], enum=GATE_METRICS, description="test metric the champion is judged on"),
        "min_improvement": Param(
            d["min_improvement"],
            type="number",
            minimum=0,
            description="how much better than the champion the gate metric must be",
        ),
        "min_score": Param(
            d["min_score"],
            type=["null", "number"],
            description="absolute bar the gate metric must reach to be promoted",
        ),
        "min_test_images": Param(
            d["min_test_images"],
            type="integer",
            minimum=1,
            description="fewest test images, unseen by both the candidate and the champion, that the gate "
            "promotes on; below it the champion is kept and the history says why",
        ),
        "on_class_change": Param(
            d["on_class_change"],
            enum=["keep", "promote", "fail"],
            description="when the candidate's classes differ from the champion's: 'keep' the champion (the "
            "reason is recorded), 'promote' the candidate, or 'fail' the run",
        ),
    }
    return known_params(params, defaults, strategy.name)


# Params whose default differs by strategy: in a DAG that runs several strategies, null means each one's own.
PER_STRATEGY = ("epochs", "batch_size", "learning_rate")
# When a DAG of several strategies checks freeze_layers (pipelines/multi.py says why).
MULTI_FREEZE_CHECK = {
    "auto": "checked against the model's blocks before anything is downloaded, unless strategy overrides the "
    "advice with another strategy",
    "tournament": "a count or name the model lacks fails that contender alone, at once",
}
MULTI_DEFAULTS: dict[str, Any] = {"max_images": 2000, "strategy": "auto", "strategies": list(STRATEGIES)}


def multi_strategy_params(kind: str, defaults: dict[str, Any] | None = None) -> dict[str, Param]:
    """Params of ``tl_auto`` (``kind="auto"``) or ``tl_tournament`` (``"tournament"``): every strategy's, plus
    ``max_images`` for the assessment and ``strategy`` (auto) or ``strategies`` (tournament)."""
    d = {**MULTI_DEFAULTS, **{k: None for k in PER_STRATEGY}, **(defaults or {})}
    base = {k: v for k, v in d.items() if k not in MULTI_DEFAULTS and k not in PER_STRATEGY and k != "lp_ft"}
    # partial_freeze's Params hold every image strategy's but lp_ft, which full_finetune adds.
    params = strategy_params(STRATEGIES["partial_freeze"], {**STRATEGIES["partial_freeze"].defaults, **base})
    for name in PER_STRATEGY:
        values = ", ".join(
            f"{s.name} {'not used' if s.uses_features and name != 'batch_size' else s.defaults.get(name)}"
            for s in STRATEGIES.values()
        )
        schema = {k: v for k, v in params[name].schema.items() if k != "type"}
        params[name] = Param(
            d[name],
            type=["null", params[name].schema["type"]],
            description=f"{params[name].description}; null: each strategy's own ({values})",
            **schema,
        )
    params["freeze_layers"].description = f"{FREEZE_LAYERS} (partial_freeze only; {MULTI_FREEZE_CHECK[kind]})"
    lp_ft = strategy_params(STRATEGIES["full_finetune"], {"lp_ft": d.get("lp_ft", False)})["lp_ft"]
    lp_ft.description = f"{lp_ft.description} (full_finetune only)"
    params["lp_ft"] = lp_ft
    params["max_images"] = Param(
        d["max_images"],
        type="integer",
        minimum=2,
        description="most training images the assessment runs through the network (a seeded sample)",
    )
    names = list(STRATEGIES)
    if kind == "auto":
        params["strategy"] = Param(
            d["strategy"],
            enum=["auto", *names],
            description="'auto' follows the assessment's advice; a strategy name overrides it (the advice is "
            "still measured and reported)",
        )
    else:
        params["strategies"] = Param(
            d["strategies"],
            type="array",
            items={"type": "string", "enum": names},
            minItems=1,
            uniqueItems=True,
            description=f"strategies that compete, side by side: any of {', '.join(names)}",
        )
    return known_params(params, defaults, f"tl_{kind}")


def _optimiser_params(d: dict[str, Any]) -> dict[str, Param]:
    """How the epoch loop steps: TrainConfig's knobs, as typed Params with TrainConfig's ranges and defaults."""
    return {
        "optimizer": Param(
            d["optimizer"],
            enum=list(OPTIMIZERS),
            description="'adamw' (decoupled weight decay) or 'sgd' (Nesterov momentum 0.9)",
        ),
        "weight_decay": Param(
            d["weight_decay"],
            type="number",
            minimum=0,
            description="weight decay (AdamW) or L2 penalty (SGD); never on biases or normalisation layers",
        ),
        "warmup_epochs": Param(
            d["warmup_epochs"],
            type="number",
            minimum=0,
            description="epochs of linear learning-rate warm-up before the cosine decay (fractions allowed)",
        ),
        "layer_decay": Param(
            d["layer_decay"],
            type=["null", "number"],
            exclusiveMinimum=0,
            maximum=1,
            description="layer-wise learning-rate decay: each block gets this factor of the next one's rate, "
            "the head the full rate; null: one rate for all",
        ),
        "label_smoothing": Param(
            d["label_smoothing"],
            type="number",
            minimum=0,
            exclusiveMaximum=1,
            description="cross-entropy label smoothing",
        ),
    }


def device_param(default: str) -> Param:
    """The ``device`` Param of every DAG that runs the network."""
    return Param(
        default,
        type="string",
        pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
        description="where the network runs: 'auto' (CUDA when the worker has it, else the CPU), 'cpu', "
        "'cuda' or 'cuda:N'; 'cuda' on a worker without a GPU fails at once",
    )


def known_params(params: dict[str, Param], defaults: dict[str, Any] | None, dag: str) -> dict[str, Param]:
    """``params``, or an error naming every default in ``defaults`` that is not one of them."""
    unknown = sorted(set(defaults or {}) - set(params))
    if unknown:
        raise InvalidArgumentError(
            f"Argument param_defaults has unknown Params for {dag}: {', '.join(unknown)}. Known: {', '.join(params)}."
        )
    return params
