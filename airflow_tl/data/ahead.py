"""Work submitted ahead of its consumer, in order, with a bound on what is submitted and not yet taken.

Image streams, the shard writer and the shard reader all fetch in threads while their consumer works: this keeps
up to ``window`` results in flight or waiting, so memory holds a window, not a dataset.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def submitted_ahead(
    pool: Executor, function: Callable[[T], R], items: Iterable[T], window: int
) -> Iterator[tuple[T, Future[R]]]:
    """``(item, future of function(item))`` in the order of ``items``, at most ``window`` submitted ahead.

    The next item is submitted as one is handed out, so a consumer that waits on each future keeps the pool busy.
    The generator drops its references to what it handed out when it is resumed: a consumer that drops its own
    before asking for the next holds at most ``window`` results plus the one it works on.
    """
    queue = iter(items)
    pending: deque[tuple[T, Future[R]]] = deque()

    def refill() -> None:
        while len(pending) < window and (item := next(queue, None)) is not None:
            pending.append((item, pool.submit(function, item)))

    refill()
    while pending:
        item, future = pending.popleft()
        refill()
        yield item, future
        del item, future
