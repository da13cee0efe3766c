"""WaitForImagesOperator: wait, deferred, until images arrive under an incoming prefix.

For data that arrives without anybody emitting the dataset's Asset. The wait holds no worker slot: it
defers to the amazon provider's ``S3KeyTrigger``, which lists the prefix every ``poke_interval`` seconds in
Airflow's triggerer. The trigger fires on any object, so a README or a ``_SUCCESS`` marker left under the
prefix wakes the task; the task then looks for images itself and, finding none, defers again. The trigger
sleeps a ``poke_interval`` before it fires, so such a wake costs one listing per interval, not a busy loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow_tl.operators.base import TransferLearningBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


def wildcard_under(folder_key: str) -> str:
    """An fnmatch pattern for every key under ``folder_key``, its own ``[``, ``*`` and ``?`` taken literally."""
    escaped = "".join(f"[{c}]" if c in "[*?" else c for c in folder_key)
    return f"{escaped}*"


class WaitForImagesOperator(TransferLearningBaseOperator):
    """Succeed once images wait under ``incoming_uri``; until then wait deferred, without a worker slot.

    Returns ``{"incoming_uri", "images", "not_images"}``: how many images and other objects wait there.

    :param incoming_uri: ``s3://`` prefix new images are written to. (templated)
    :param poke_interval: seconds between two listings of the prefix by the triggerer.
    :param wait_timeout: how long to wait in all; when no image arrived by then the task is skipped, and so
        is what follows it. None waits for ever.
    """

    template_fields: Sequence[str] = (*TransferLearningBaseOperator.template_fields, "incoming_uri")
    uri_fields = ("work_uri", "incoming_uri")
    ui_color = "#e4f0e8"

    def __init__(
        self,
        *,
        incoming_uri: str,
        poke_interval: float = 60.0,
        wait_timeout: timedelta | None = timedelta(days=1),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.incoming_uri = incoming_uri
        self.poke_interval = poke_interval
        self.wait_timeout = wait_timeout

    def lineage_inputs(self) -> list[str | None]:
        return [self.incoming_uri]

    def execute(self, context: Context) -> dict[str, Any]:
        found = self._look()
        if found is not None:
            return found
        self.log.info("No images under %s yet; waiting for them in the triggerer", self.incoming_uri)
        self._defer(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """The trigger saw an object under the prefix: succeed if images are among what waits, else wait on."""
        if event.get("status") == "error":
            from airflow_tl.exceptions import AirflowTLError

            # The trigger's own listing failed (the endpoint, the network): a retry may fix it.
            raise AirflowTLError(f"Waiting for images under {self.incoming_uri} failed: {event.get('message')}")
        found = self._look()
        if found is not None:
            return found
        self._defer(context)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """A wait that timed out in the triggerer skips the task instead of failing it."""
        from airflow.sdk.exceptions import TaskDeferralTimeout

        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except TaskDeferralTimeout:
            self._timed_out()

    def _look(self) -> dict[str, Any] | None:
        """What waits under the prefix when it holds images; None when it holds none."""
        from airflow_tl.data.landing import waiting_images

        found = waiting_images(self.store, self.incoming_uri)
        if not found.keys:
            if found.left:
                self.log.info(
                    "%d objects under %s but no images (e.g. %s); waiting on",
                    len(found.left), self.incoming_uri, found.left[0],
                )  # fmt: skip
            return None
        self.log.info("%d images wait under %s", len(found.keys), self.incoming_uri)
        return {"incoming_uri": self.incoming_uri, "images": len(found.keys), "not_images": len(found.left)}

    def _defer(self, context: Context) -> None:
        from airflow.providers.amazon.aws.triggers.s3 import S3KeyTrigger

        from airflow_tl.uris import parse_s3_uri

        timeout = None
        if self.wait_timeout is not None:
            # A task resumed from deferral keeps its start date: the wait is measured from the first try's start.
            started = context["ti"].start_date or datetime.now(timezone.utc)
            timeout = started + self.wait_timeout - datetime.now(timezone.utc)
            if timeout <= timedelta(0):
                self._timed_out()
        incoming = parse_s3_uri(self.incoming_uri, what="incoming_uri")
        trigger = S3KeyTrigger(
            bucket_name=incoming.bucket,
            bucket_key=wildcard_under(incoming.folder_key),
            wildcard_match=True,
            aws_conn_id=self.aws_conn_id,
            poke_interval=self.poke_interval,
            # With a check function the trigger sleeps a poke_interval before it fires; a prefix that holds
            # only non-images then wakes this task once per interval instead of at once, again and again.
            should_check_fn=True,
            metadata_keys=["Key"],
        )
        self.defer(trigger=trigger, method_name="execute_complete", timeout=timeout)

    def _timed_out(self) -> None:
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(f"No images arrived under {self.incoming_uri} within {self.wait_timeout}.")
