"""FreezeAndTrainOperator: one operator for every strategy, from head-only to training from scratch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from airflow_tl.operators.base import TransferLearningBaseOperator
from airflow_tl.operators.links import CHECKPOINTS_KEY, CheckpointsLink, s3_console_url
from airflow_tl.runtime import prepare_torch_runtime

if TYPE_CHECKING:
    from airflow.sdk import Context


class FreezeAndTrainOperator(TransferLearningBaseOperator):
    """Train a model with its first ``freeze_layers`` blocks frozen, checkpointing to S3 after every epoch.

    - ``freeze_layers="all"`` with ``features_uri``: a new linear head fitted to convergence on cached features
      (feature extraction: L-BFGS, L2 penalty chosen on the validation split; no epochs, no checkpoints); the
      backbone is never loaded. The epoch loop's arguments (``epochs`` … ``label_smoothing``) do not apply.
    - ``freeze_layers=k`` or a block name: the first k blocks, or the blocks up to and including the named one,
      frozen (no gradients, no optimizer state, BatchNorm statistics kept), the rest and the head trained on images
      streamed from S3 (partial freeze; 0 = full fine-tune).
    - ``init="random"``: the same architecture from random weights (from scratch).

    A retried task resumes from its last complete checkpoint and says so in the log. The result is a model
    folder whose card holds the training config and per-epoch history (for a head on features, the penalties
    tried). XCom: the model URI and a summary.

    :param model_uri: model folder to start from (its architecture, preprocessing and weights). (templated)
    :param dataset_uri: ``s3://`` image dataset; needed unless training on ``features_uri``. (templated)
    :param features_uri: features from ExtractFeaturesOperator, for head-only training. (templated)
    :param freeze_layers: number of leading blocks to freeze, the name of the last block to freeze (``"layer3"``
        freezes ResNet's stem to layer3; the names per family are in docs/architectures.md), or ``"all"``. A count
        or name the model does not have fails the task at once, listing the model's blocks. (templated)
    :param init: ``"pretrained"`` or ``"random"``. (templated)
    :param epochs: maximum epochs. (templated)
    :param batch_size: images (or feature rows) per step. (templated)
    :param learning_rate: peak learning rate of the head; blocks get less with ``layer_decay``. (templated)
    :param optimizer: ``"adamw"`` or ``"sgd"``. (templated)
    :param weight_decay: decoupled weight decay (AdamW) or L2 (SGD); never on biases or norms. (templated)
    :param warmup_epochs: linear warm-up before cosine decay. (templated)
    :param layer_decay: optional layer-wise learning-rate decay in (0, 1]. (templated)
    :param patience: stop after this many epochs without a better validation loss; None never stops early. (templated)
    :param label_smoothing: cross-entropy label smoothing in [0, 1). (templated)
    :param lp_ft: LP-FT: fit a new head as a linear probe on the frozen features first, then train as configured
        (Kumar et al. 2022; docs/strategies/full_finetune.md). (templated)
    :param augment: light, seeded augmentation of training images (crop, rotation, brightness). (templated)
    :param seed: seed of initialisation, shuffling, augmentation and the split. (templated)
    :param reset_head: ``"auto"`` trains a new head when the dataset's classes differ from the model's;
        True always; False requires the same classes. (templated)
    :param skip_corrupt: leave out images that cannot be decoded instead of failing. (templated)
    :param output_uri: model folder to write; default ``<run prefix>/model``. (templated)
    :param checkpoint_uri: checkpoint folder; default ``<run prefix>/checkpoints``. (templated)
    :param threads: parallel S3 GETs and decodes. (templated)
    :param device: ``"auto"`` (CUDA when present, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; the
        network runs there, under autocast on CUDA. ``"cuda"`` without a GPU fails at once. (templated)
    :param layout: ``"auto"``, ``"splits"`` or ``"classes"``: how to read the dataset's folders. (templated)
    :param num_processes: training processes on this worker, data-parallel under ``torch.distributed`` (gloo on
        the CPU, NCCL with one GPU each on CUDA); each reads its slice of every batch, and rank 0 alone writes
        checkpoints and the model. 1 trains in the task's own process. (templated)
    :param nnodes: task instances (machines) training together, e.g. this operator mapped over
        ``node_rank=[0, 1]``; they meet at ``rdzv_endpoint``. (templated)
    :param node_rank: this task instance's place among ``nnodes``, for the log (the rendezvous assigns the
        ranks). (templated)
    :param rdzv_endpoint: ``host:port`` where the nodes meet: a machine every node reaches, which hosts the
        rendezvous when its node runs there. (templated)
    :param rdzv_timeout: seconds to wait for every node; past it, every node fails and nothing is published.
        (templated)
    """

    template_fields: Sequence[str] = (
        *TransferLearningBaseOperator.template_fields,
        "model_uri",
        "dataset_uri",
        "features_uri",
        "freeze_layers",
        "init",
        "epochs",
        "batch_size",
        "learning_rate",
        "optimizer",
        "weight_decay",
        "warmup_epochs",
        "layer_decay",
        "patience",
        "label_smoothing",
        "lp_ft",
        "augment",
        "seed",
        "reset_head",
        "skip_corrupt",
        "output_uri",
        "checkpoint_uri",
        "threads",
        "device",
        "layout",
        "num_processes",
        "nnodes",
        "node_rank",
        "rdzv_endpoint",
        "rdzv_timeout",
    )
    uri_fields = (
        *TransferLearningBaseOperator.uri_fields,
        "model_uri",
        "dataset_uri",
        "features_uri",
        "output_uri",
        "checkpoint_uri",
    )
    ui_color = "#fdf1e0"
    operator_extra_links = (CheckpointsLink(),)

    def __init__(
        self,
        *,
        model_uri: str,
        dataset_uri: str | None = None,
        features_uri: str | None = None,
        freeze_layers: int | str = 0,
        init: str = "pretrained",
        epochs: int = 10,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        optimizer: str = "adamw",
        weight_decay: float = 1e-4,
        warmup_epochs: float = 1.0,
        layer_decay: float | None = None,
        patience: int | None = 3,
        label_smoothing: float = 0.1,
        lp_ft: bool = False,
        augment: bool = False,
        seed: int = 0,
        reset_head: bool | Literal["auto"] = "auto",
        skip_corrupt: bool = False,
        output_uri: str | None = None,
        checkpoint_uri: str | None = None,
        threads: int = 8,
        device: str = "auto",
        layout: str = "auto",
        num_processes: int = 1,
        nnodes: int = 1,
        node_rank: int = 0,
        rdzv_endpoint: str | None = None,
        rdzv_timeout: float = 300.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_uri = model_uri
        self.dataset_uri = dataset_uri
        self.features_uri = features_uri
        self.freeze_layers = freeze_layers
        self.init = init
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.layer_decay = layer_decay
        self.patience = patience
        self.label_smoothing = label_smoothing
        self.lp_ft = lp_ft
        self.augment = augment
        self.seed = seed
        self.reset_head = reset_head
        self.skip_corrupt = skip_corrupt
        self.output_uri = output_uri
        self.checkpoint_uri = checkpoint_uri
        self.threads = threads
        self.device = device
        self.layout = layout
        self.num_processes = num_processes
        self.nnodes = nnodes
        self.node_rank = node_rank
        self.rdzv_endpoint = rdzv_endpoint
        self.rdzv_timeout = rdzv_timeout

    def lineage_inputs(self) -> list[str | None]:
        # A head fitted on features never opens an image: the features are what it read.
        return [self.model_uri, self.features_uri or self.dataset_uri]

    def execute(self, context: Context) -> dict[str, Any]:
        prepare_torch_runtime()
        from airflow_tl.hooks.s3 import worker_store_factory
        from airflow_tl.training.config import TrainConfig
        from airflow_tl.training.launch import Nodes
        from airflow_tl.training.task import train
        from airflow_tl.uris import slug

        config = TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            warmup_epochs=self.warmup_epochs,
            layer_decay=self.layer_decay,
            patience=self.patience,
            label_smoothing=self.label_smoothing,
            augment=self.augment,
            seed=self.seed,
            freeze_layers=self.freeze_layers,
            init=self.init,
            lp_ft=self.lp_ft,
        )
        prefix = None if (self.output_uri and self.checkpoint_uri) else self.run_prefix(context)
        output_uri = self.output_uri or f"{prefix}/model"
        checkpoint_uri = self.checkpoint_uri or f"{prefix}/checkpoints"
        self.log.info("Training from %s into %s (checkpoints in %s)", self.model_uri, output_uri, checkpoint_uri)
        console = None if self.features_uri else s3_console_url(self.store.client, checkpoint_uri)
        if console:  # a head fitted on cached features keeps no checkpoints
            context["ti"].xcom_push(key=CHECKPOINTS_KEY, value=console)
        ti = context["ti"]
        # One name for the training across its nodes (every mapped instance renders the same).
        nodes = Nodes(self.nnodes, self.rdzv_endpoint, self.rdzv_timeout, f"{ti.dag_id}-{slug(ti.run_id)}-{ti.task_id}")
        if nodes.count > 1:
            self.log.info("Node %d of %d, meeting the others at %s", self.node_rank, nodes.count, nodes.endpoint)
        parallel = self.num_processes * nodes.count > 1
        result = train(
            self.store,
            model_uri=self.model_uri,
            config=config,
            output_uri=output_uri,
            checkpoint_uri=checkpoint_uri,
            dataset_uri=self.dataset_uri,
            features_uri=self.features_uri,
            reset_head=self.reset_head,
            skip_corrupt=self.skip_corrupt,
            threads=self.threads,
            device=self.device,
            layout=self.layout,
            num_processes=self.num_processes,
            nodes=nodes,
            worker_store=worker_store_factory(self.aws_conn_id) if parallel else None,
        )
        self._lineage_outputs = [output_uri]  # checkpoints are the run's scratch, not a product
        summary = result.summary()
        self.log.info(
            "Trained %s: best epoch %d of %d, val loss %.4f, val accuracy %.3f, %s trainable parameters",
            output_uri,
            summary["best_epoch"],
            summary["epochs_run"],
            summary["val_loss"],
            summary["val_accuracy"],
            f"{summary['trainable_params']:,}",
        )
        return summary
