"""A person makes a version the champion: a promotion, or a rollback to an earlier champion.

Through the same conditional write the gate uses: ``champion.json`` is read with its ETag and replaced only
if it is still at that ETag, so a gate deciding at the same moment is never overwritten unseen. And the
person acted on what they saw: ``expected`` is the champion their page showed, and if it has changed since,
nothing is written. Every action is appended to the history with the user's name and reason.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from airflow_tl.exceptions import InvalidArgumentError, PermanentError
from airflow_tl.registry.store import Registry, RegistryError

log = logging.getLogger(__name__)

ACTIONS = ("promote", "rollback")
MAX_REASON = 1000


class ActionRefusedError(RegistryError, PermanentError):
    """The action cannot be done as asked (the version is incomplete, already the champion, never was one, or the
    champion changed since the person looked); nothing was written."""


def set_champion(
    registry: Registry, *, version: str, action: str, user: str, reason: str, expected: str | None
) -> dict[str, Any]:
    """Make ``version`` the champion by hand; returns the history entry. ``expected``: the champion the person
    saw (None: there was none)."""
    if action not in ACTIONS:
        raise InvalidArgumentError(
            f"Argument action accepts only 'promote' and 'rollback'. Provided value: {action!r}."
        )
    reason = (reason or "").strip()
    if not reason or len(reason) > MAX_REASON:
        raise InvalidArgumentError(f"A reason is required, at most {MAX_REASON} characters: it goes into the history.")
    if not registry.is_complete(version):
        raise ActionRefusedError(
            f"{registry.version_uri(version)} is not a complete version (it has no metrics.json): it cannot be "
            "the champion. Nothing was changed."
        )
    state = registry.champion()
    current = state.champion.version if state.champion else None
    if current != expected:
        raise ActionRefusedError(
            f"The champion of {registry.uri} is now {current or 'none'}, not {expected or 'none'} as when you "
            "looked: it changed meanwhile. Nothing was changed; look again and decide."
        )
    if current == version:
        raise ActionRefusedError(f"{version} is already the champion of {registry.uri}. Nothing was changed.")
    if action == "rollback" and not _was_champion(registry, version):
        raise ActionRefusedError(
            f"{version} was never the champion of {registry.uri}, so there is nothing to roll back to; promote it "
            "instead. Nothing was changed."
        )
    metric = (state.champion.pointer.get("metric") if state.champion else None) or "accuracy"
    score = (registry.read_metrics(version).get("summary") or {}).get(metric)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    by_hand = {"action": action, "user": user, "reason": reason}
    pointer = {
        "format_version": 1,
        "model_name": registry.model_name,
        "version": version,
        "model_uri": registry.version_uri(version),
        "metric": metric,
        "score": score,
        "previous": current,
        "promoted_at": now,
        **by_hand,
    }
    if not registry.replace_champion(pointer, etag=state.etag):
        raise ActionRefusedError(
            f"The champion of {registry.uri} was replaced while this {action} was being written (a gate or "
            "another person). Nothing was changed; look again and decide."
        )
    event = {"version": version, "promoted": True, "metric": metric, "score": score, "champion_before": current}
    event |= by_hand
    event["history_uri"] = registry.record(event)
    log.info("%s made %s the champion of %s (%s, was %s): %s", user, version, registry.uri, action, current, reason)
    return event


def _was_champion(registry: Registry, version: str) -> bool:
    return any(e.get("version") == version and e.get("promoted") for e in registry.history())
