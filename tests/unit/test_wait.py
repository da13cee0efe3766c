"""WaitForImagesOperator's pure parts: the trigger's key pattern, and a timed-out wait that skips."""

from __future__ import annotations

from datetime import timedelta
from fnmatch import fnmatch

import pytest

from airflow_tl.data.landing import is_image_key
from airflow_tl.operators.wait import WaitForImagesOperator, wildcard_under


@pytest.mark.parametrize("folder", ["incoming/flowers/", "in/[odd] name*?/", ""])
def test_the_pattern_matches_everything_under_the_folder_and_nothing_beside_it(folder):
    pattern = wildcard_under(folder)
    assert fnmatch(f"{folder}a.png", pattern)
    assert fnmatch(f"{folder}train/5/deep/b.JPG", pattern)
    if folder:
        assert not fnmatch(f"{folder.rstrip('/')}-other/a.png", pattern)
        assert not fnmatch(f"x{folder}a.png", pattern)


def test_only_image_extensions_count_as_images():
    assert is_image_key("a/b/photo.JPeG") and is_image_key("x.tiff")
    assert not is_image_key("README.txt") and not is_image_key("_SUCCESS") and not is_image_key("png")


def test_a_wait_the_triggerer_timed_out_is_skipped_not_failed():
    from airflow.sdk.bases.operator import TRIGGER_FAIL_REPR, TriggerFailureReason
    from airflow.sdk.exceptions import AirflowSkipException, TaskDeferralError

    wait = WaitForImagesOperator(task_id="wait", incoming_uri="s3://b/in", wait_timeout=timedelta(hours=2))
    timed_out = {"error": TriggerFailureReason.TRIGGER_TIMEOUT}
    with pytest.raises(AirflowSkipException, match=r"No images arrived under s3://b/in within 2:00:00"):
        wait.resume_execution(TRIGGER_FAIL_REPR, timed_out, context={})
    with pytest.raises(TaskDeferralError):  # any other trigger failure still fails the task
        wait.resume_execution(TRIGGER_FAIL_REPR, {"error": TriggerFailureReason.TRIGGER_FAILURE}, context={})


def test_an_error_from_the_trigger_fails_with_the_prefix_and_the_message():
    from airflow_tl.exceptions import AirflowTLError, PermanentError

    wait = WaitForImagesOperator(task_id="wait", incoming_uri="s3://b/in")
    with pytest.raises(AirflowTLError, match=r"under s3://b/in failed: endpoint unreachable") as raised:
        wait.execute_complete({}, {"status": "error", "message": "endpoint unreachable"})
    assert not isinstance(raised.value, PermanentError)  # a retry may fix it
