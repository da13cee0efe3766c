"""submitted_ahead: results in order, never more than the window submitted and not yet taken."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from airflow_tl.data.ahead import submitted_ahead


@pytest.mark.parametrize("window", [1, 3, 8])
def test_results_come_in_order_and_the_window_bounds_what_runs_ahead(window: int) -> None:
    lock = threading.Lock()
    started: list[int] = []
    taken: list[int] = []

    def work(n: int) -> int:
        with lock:
            started.append(n)
            # The one being handed out, and at most window more behind it.
            assert len(started) - len(taken) <= window + 1
        time.sleep(0.001 * (n % 3))  # finishing out of order
        return n * n

    with ThreadPoolExecutor(4) as pool:
        results = []
        for n, future in submitted_ahead(pool, work, range(20), window):
            with lock:
                taken.append(n)
            results.append(future.result())
    assert results == [n * n for n in range(20)]


def test_an_error_reaches_the_consumer_at_its_item() -> None:
    def work(n: int) -> int:
        if n == 2:
            raise ValueError("two")
        return n

    with ThreadPoolExecutor(2) as pool:
        got = []
        with pytest.raises(ValueError, match="two"):
            for _, future in submitted_ahead(pool, work, range(5), 2):
                got.append(future.result())
    assert got == [0, 1]
