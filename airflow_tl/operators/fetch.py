"""FetchPretrainedOperator: bring pretrained weights (or just an architecture) into a model folder in S3."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_tl.operators.base import TransferLearningBaseOperator
from airflow_tl.runtime import prepare_torch_runtime

if TYPE_CHECKING:
    from airflow.sdk import Context


class FetchPretrainedOperator(TransferLearningBaseOperator):
    """Fetch a pretrained model, verify it, and write it as a canonical model folder.

    Sources: an ``s3://`` model folder, ``torchvision://<arch>/<WEIGHTS>`` (or ``torchvision://<arch>``
    for the architecture alone), or an ``https://`` URL of a file named ``<name>-<sha256 prefix>.pth`` or
    ending in ``#sha256=<64 hex>``. Hashes are checked and nothing is unpickled; ``http://`` only with
    ``[airflow_tl] allow_http``. Credentials in a URL are used for the download and appear nowhere else,
    redacted in logs, the card and XCom (docs/security.md). XCom: the model URI and a short summary.

    :param pretrained_uri: where the weights come from. (templated)
    :param architecture: torchvision architecture name; needed for URLs whose name is not one,
        and for ``init="random"`` without a pretrained_uri. (templated)
    :param init: ``"pretrained"`` to keep the weights, ``"random"`` for the architecture alone,
        seeded (the from-scratch strategy). (templated)
    :param class_names: classes of a new head; default: the source's own classes. (templated)
    :param num_classes: size of a new head when class names are not known. (templated)
    :param image_size: input crop size to record in the card; default: the source's. (templated)
    :param seed: seed for random initialisation. (templated)
    :param weights_mirror: base URL that serves torchvision's weight files by their file name,
        for workers without internet access. (templated)
    :param freeze_layers: the ``freeze_layers`` training will use (a block count, a block name or ``"all"``),
        checked against the architecture's blocks before anything is downloaded, so that a count or name the
        model lacks fails at once, listing its blocks; None: not checked. (templated)
    :param output_uri: model folder to write; default: this task's folder under ``work_uri``. (templated)
    """

    template_fields: Sequence[str] = (
        *TransferLearningBaseOperator.template_fields,
        "pretrained_uri",
        "architecture",
        "init",
        "class_names",
        "num_classes",
        "image_size",
        "seed",
        "weights_mirror",
        "freeze_layers",
        "output_uri",
    )
    uri_fields = (*TransferLearningBaseOperator.uri_fields, "pretrained_uri", "weights_mirror", "output_uri")
    ui_color = "#e8f1fa"

    def __init__(
        self,
        *,
        pretrained_uri: str | None = None,
        architecture: str | None = None,
        init: str = "pretrained",
        class_names: list[str] | None = None,
        num_classes: int | None = None,
        image_size: int | None = None,
        seed: int = 0,
        weights_mirror: str | None = None,
        freeze_layers: int | str | None = None,
        output_uri: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pretrained_uri = pretrained_uri
        self.architecture = architecture
        self.init = init
        self.class_names = class_names
        self.num_classes = num_classes
        self.image_size = image_size
        self.seed = seed
        self.weights_mirror = weights_mirror
        self.freeze_layers = freeze_layers
        self.output_uri = output_uri

    def lineage_inputs(self) -> list[str | None]:
        # Without a source the architecture is torchvision's, as the card's lineage records it.
        return [self.pretrained_uri or (self.architecture and f"torchvision://{self.architecture}")]

    def execute(self, context: Context) -> dict[str, Any]:
        prepare_torch_runtime()
        from airflow_tl.pretrained.fetch import FetchSpec, fetch_pretrained
        from airflow_tl.redaction import redact

        spec = FetchSpec(
            pretrained_uri=self.pretrained_uri,
            architecture=self.architecture,
            init=self.init,
            class_names=self.class_names,
            num_classes=self.num_classes,
            image_size=self.image_size,
            seed=self.seed,
            weights_mirror=self.weights_mirror,
            freeze_layers=self.freeze_layers,
        )
        output_uri = self.run_prefix(context, self.output_uri)
        source = redact(spec.pretrained_uri) or spec.architecture
        self.log.info("Fetching %s (init=%s) into %s", source, spec.init, output_uri)
        result = fetch_pretrained(spec, store=self.store, output_uri=output_uri)
        self._lineage_outputs = [result.uri]
        summary = result.summary()
        self.log.info(
            "Model folder %s: %s, %d classes, %d blocks (%s), sha256 %s%s",
            result.uri,
            summary["architecture"],
            summary["num_classes"],
            len(summary["blocks"]),
            ", ".join(summary["blocks"]),
            summary["sha256"][:12],
            " (reused from an earlier try)" if result.reused else "",
        )
        return summary
